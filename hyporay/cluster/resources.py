"""Connecting to Ray and sizing trials from what the connected cluster really has."""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterInfo:
    address: str            # "local" or the cluster address
    cpus: float
    gpus: float
    max_node_cpus: float
    max_node_gpus: float
    nodes: int


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def joins_cluster(address: str | None) -> bool:
    """Whether Ray will join a running cluster (``address`` or RAY_ADDRESS) rather than start a local one."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return bool(address) and address != "local"


def bind_loopback_if_local(address: str | None = None) -> bool:
    """Make the local Ray this process will start listen on 127.0.0.1 only. Call before the first ``import ray``.

    Ray on Linux binds every interface even for a local instance; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it on
    loopback, but Ray reads it when it is imported (reference §8). Never set for a cluster: a driver that takes
    127.0.0.1 as its address cannot join one. Returns whether loopback binding is in effect for this process.
    """
    import sys

    if joins_cluster(address):
        return False
    if "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    return os.environ.get(LOOPBACK_ENV) == "0"


def worker_runtime_env() -> dict:
    """The job's runtime_env: PYTHONPATH led by the checkout the driver's hyporay comes from. Ray passes a driver
    script's sys.path on to its workers, but not a notebook's or ``python -c``'s: without this their workers would
    import an installed hyporay (another checkout, another version) and every trial would run that code."""
    import hyporay

    source = str(Path(hyporay.__file__).resolve().parent.parent)
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)}}


def init_ray(address: str | None = None, *, num_cpus: int | None = None):
    """Connect to a running cluster when RAY_ADDRESS (or ``address``) says so, else start a fresh local Ray.

    A local Ray binds 127.0.0.1 only (see ``bind_loopback_if_local``) and is always a new instance
    (``address="local"``): a dead cluster's address left in Ray's temp dir would otherwise hang init.
    """
    loopback = bind_loopback_if_local(address)
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if joins_cluster(address):
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, runtime_env=worker_runtime_env())
    else:
        if not loopback:
            print(f"note: ray was imported before hyporay could set {LOOPBACK_ENV}=0: this local Ray listens on "
                  f"every interface; export {LOOPBACK_ENV}=0 before importing ray", flush=True)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR",
                 runtime_env=worker_runtime_env(),
                 log_to_driver=False)
    return ray


def shutdown_ray() -> None:
    """``ray.shutdown()`` if this process started or joined Ray (never imports ray just to ask)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def cluster_info() -> ClusterInfo:
    import ray

    res = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        address=os.environ.get("RAY_ADDRESS") or "local",
        cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)),
        max_node_cpus=max((float(n["Resources"].get("CPU", 0)) for n in alive), default=0.0),
        max_node_gpus=max((float(n["Resources"].get("GPU", 0)) for n in alive), default=0.0),
        nodes=len(alive))


def trial_resources(info: ClusterInfo, *, cpus_per_trial: float = 1, gpu_fraction: float = 1.0,
                    gpus_per_trial: float | None = None) -> dict[str, float]:
    """Resources for one trial that the cluster can place.

    With GPUs in the cluster a trial asks for ``gpu_fraction`` of one (several trials share a GPU; the
    fraction is logical, so size it to the model's memory) plus CPUs; without GPUs it asks for CPUs only
    (a GPU request on a GPU-less cluster would stay PENDING forever). ``gpus_per_trial`` forces a GPU
    request, for autoscaling clusters whose GPU workers are not up yet. CPUs are capped at the largest
    node's, so every trial fits on some node.
    """
    cpu = float(cpus_per_trial)
    if info.max_node_cpus:
        cpu = min(cpu, info.max_node_cpus)
    if gpus_per_trial is not None:
        return {"cpu": cpu, "gpu": float(gpus_per_trial)}
    if info.gpus > 0:
        return {"cpu": cpu, "gpu": min(float(gpu_fraction), info.max_node_gpus or float(gpu_fraction))}
    return {"cpu": cpu}
