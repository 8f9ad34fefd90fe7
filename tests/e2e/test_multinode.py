"""A sweep across a multi-node Ray cluster on this machine: a head and two worker nodes (ray.cluster_utils.Cluster,
all bound to 127.0.0.1), a real `mlflow server` and a shared local storage_path, as on a cluster made by
`ray up cluster.yaml` (where the storage is S3 and the server runs on the head).

1. Trials are spread over both workers and each lands exactly once in MLflow.
2. A worker node is removed mid-sweep: its trial is retried on the other worker from its last checkpoint and
   the sweep completes.

The sweep runs as users run it, a subprocess of sweeps/thrm_lambda.py joining the cluster through RAY_ADDRESS.
"""
from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before anything imports ray: every node on 127.0.0.1

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import patience  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "sweeps" / "thrm_lambda.py"
EXPERIMENT = "thrm_lambda-local"

pytestmark = pytest.mark.slow


USER_DATA = """
import torch
from hyporay.data import register_dataset

@register_dataset("test_stripes")
def stripes(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (240,), generator=g)
    x = torch.rand(240, 1, 4, 4, generator=g) * 0.5
    x[torch.arange(240), 0, y] += 0.5   # the class is the bright row
    return x[:180], y[:180], x[180:], y[180:], 3
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite backend; stopped by its process group id at the end."""
    d = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = open(d / "server.log", "w")  # noqa: SIM115 - closed in the teardown
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
         "--artifacts-destination", str(d / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2"],
        cwd=d, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # own group: uvicorn's workers too
        # no GenAI job runner (its consumers triple the start-up on 2 cores), no telemetry
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
             "DO_NOT_TRACK": "true"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + patience(120)
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not come up: {(d / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture
def cluster():
    """Head (0 CPUs: it only coordinates, like cluster.yaml's head for GPU trials) + two 1-CPU workers that
    differ by a custom resource; all at 127.0.0.1, Ray's files in a short private temp dir."""
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="hr-mn-", dir="/tmp")  # short: Unix socket paths are limited to 107 chars
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                      "temp_dir": temp_dir})
    try:
        workers = [c.add_node(num_cpus=1, resources={name: 1}) for name in ("worker_a", "worker_b")]
        c.wait_for_nodes()
        yield c, workers
    finally:
        c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _start_sweep(cwd: Path, address: str, tracking_uri: str, args: list[str], env_extra: dict | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("HYPORAY_STORAGE_PATH", "MLFLOW_TRACKING_URI")}
    env.update(RAY_ADDRESS=address, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", **(env_extra or {}))
    # output to a file, not a pipe: nobody reads a pipe while the test polls MLflow, and a full one blocks the sweep
    with open(cwd / "sweep.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(SWEEP), "--profile", "local", "--seeds", "1",
                                 "--set", "eval.every=1", "--tracking-uri", tracking_uri, *args],
                                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = cwd / "sweep.log"
    return proc


def _finish(proc, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.log.read_text()


def _sweep_runs(client, parent_name: str):
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`hyporay.sweep` = 'thrm_lambda'")
    parents = [r for r in runs if r.data.tags.get("hyporay.role") == "sweep" and r.info.run_name == parent_name]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def _steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "natural_risk"))


def _reported(cluster, name: str, run_id: str) -> bool:
    """Whether Tune's driver has a result of the trial that logs to MLflow run ``run_id`` (its result.json, staged
    in the Ray session's directory and synced to the storage only now and then)."""
    session = Path(cluster.head_node.get_session_dir_path())
    for f in session.glob(f"artifacts/*/{name}/driver_artifacts/*/result.json"):
        try:
            lines = f.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                if json.loads(line).get("mlflow_run_id") == run_id:
                    return True
            except ValueError:  # a line being written
                continue
    return False


def _tune_trial_dir(exp_dir: Path, run_id: str) -> Path:
    """Tune's directory (in the shared storage) of the trial that logged to MLflow run ``run_id``."""
    for f in exp_dir.glob("*/result.json"):
        first = f.read_text().splitlines()[:1]
        if first and json.loads(first[0]).get("mlflow_run_id") == run_id:
            return f.parent
    raise AssertionError(f"no Tune trial of MLflow run {run_id} under {exp_dir}")


def test_trials_spread_over_nodes_and_land_once_in_mlflow(cluster, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    c, workers = cluster
    shared = tmp_path / "shared"        # every node's storage_path (S3 on a real cluster)
    driver = tmp_path / "driver"        # the driver's working directory (the head's, on a real cluster)
    shared.mkdir()
    driver.mkdir()
    # the user's own data set, defined only here: every worker process (on every node) must import it
    (shared / "user_data.py").write_text(USER_DATA)
    t0 = time.time()
    # storage through the environment variable, as cluster.yaml sets it on every node
    proc = _start_sweep(driver, c.address, mlflow_server,
                        ["--lambdas", "0,5", "--set", "train.epochs=2", "--name", "spread",
                         "--set", f"imports=[{shared / 'user_data.py'}]", "--set", "data.name=test_stripes"],
                        env_extra={"HYPORAY_STORAGE_PATH": str(shared)})
    out = _finish(proc, timeout=patience(400))
    print(f"sweep took {time.time() - t0:.0f}s")
    assert proc.returncode == 0, out[-4000:]
    assert "3 trials on 3 node(s) (2 CPU, 0 GPU)" in out, out[-4000:]
    assert f"Tune storage {shared}/spread" in out
    assert "trials: 3 finished, 0 diverged, 0 failed, 0 not finished" in out

    client = MlflowClient(mlflow_server)
    parent, children = _sweep_runs(client, "spread")
    assert parent.info.status == "FINISHED"
    assert len(children) == 3
    assert len({ch.data.tags["hyporay.trial_key"] for ch in children}) == 3      # each trial once
    assert sorted(ch.info.run_name for ch in children) == sorted(
        ["natural-lam0-mlp-seed0", "thrm-lam5-mlp-seed0", "trades-lam5-mlp-seed0"])
    for ch in children:
        assert ch.info.status == "FINISHED"
        assert _steps(client, ch.info.run_id) == [1, 2]
        assert ch.data.params["data.name"] == "test_stripes" and ch.data.tags["dataset"] == "test_stripes"
        assert ch.data.metrics["n_examples"] == 60  # the user's test split, not digits'
    nodes = {ch.data.tags["ray_node_id"] for ch in children}
    assert nodes <= {w.node_id for w in workers}, "a trial ran on the head (0 CPUs)"
    assert len(nodes) == 2, f"all trials ran on one node: {nodes}"
    assert (shared / "spread" / "artefacts" / "frontier.csv").is_file()
    assert not (driver / "hyporay_runs").exists()  # nothing of the sweep's storage on the driver's disk


def test_worker_node_lost_mid_sweep_trial_resumes_elsewhere(cluster, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    c, workers = cluster
    shared, driver = tmp_path / "shared", tmp_path / "driver"
    shared.mkdir()
    driver.mkdir()
    epochs = 10
    client = MlflowClient(mlflow_server)
    t0 = time.time()
    proc = _start_sweep(driver, c.address, mlflow_server,
                        ["--trainers", "thrm", "--lambdas", "0,5", "--set", f"train.epochs={epochs}",
                         "--storage-path", str(shared), "--name", "lose-a-node", "--max-failures", "2"])
    try:
        # wait until a trial has reported its first epoch (and so has a checkpoint), then remove its node
        victim = victim_node = None
        deadline = time.time() + patience(300)
        while victim is None:
            assert proc.poll() is None, proc.log.read_text()[-4000:]
            assert time.time() < deadline, "no trial reported an epoch in time"
            time.sleep(0.5)
            exp = client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                continue
            for r in client.search_runs([exp.experiment_id], filter_string="tags.`hyporay.role` = 'trial'"):
                node = next((w for w in workers if w.node_id == r.data.tags.get("ray_node_id")), None)
                parent = client.get_run(r.data.tags["mlflow.parentRunId"])
                if parent.info.run_name == "lose-a-node" and node and _steps(client, r.info.run_id):
                    victim, victim_node = r.info.run_id, node
                    break
        # Tune restores a lost trial from the checkpoint of the last result its driver has received (the worker
        # persists it before it sends the result): wait for one, else the retry would start from scratch
        deadline = time.time() + patience(60)
        while not _reported(c, "lose-a-node", victim):
            assert proc.poll() is None, proc.log.read_text()[-4000:]
            assert time.time() < deadline, "Tune's driver never received the trial's first result"
            time.sleep(0.2)
        steps_before = _steps(client, victim)
        c.remove_node(victim_node)
        removed_at = time.time()
        survivor = next(w for w in workers if w is not victim_node)
        assert steps_before and steps_before[-1] < epochs, f"the trial had already finished: {steps_before}"
        out = _finish(proc, timeout=patience(400))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"node removed after {removed_at - t0:.0f}s at epoch {steps_before[-1]}; sweep took {time.time() - t0:.0f}s")
    assert proc.returncode == 0, out[-4000:]
    assert "trials: 2 finished, 0 diverged, 0 failed, 0 not finished" in out, out[-4000:]

    parent, children = _sweep_runs(client, "lose-a-node")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and len({ch.data.tags["hyporay.trial_key"] for ch in children}) == 2
    for ch in children:
        assert ch.info.status == "FINISHED"
        assert _steps(client, ch.info.run_id) == list(range(1, epochs + 1))  # every epoch once, none repeated
        assert ch.data.tags["ray_node_id"] == survivor.node_id  # both finished on the surviving worker
    # Tune saw the lost trial fail once because its node died, and the retry continued from the checkpoint:
    # each epoch reported once over both attempts (a restart from scratch would report epoch 1 again)
    trial_dir = _tune_trial_dir(shared / "lose-a-node", victim)
    error = (trial_dir / "error.txt").read_text()
    assert error.count("Failure #") == 1 and "its node has died" in error and victim_node.node_id in error, error
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1)), [r["epoch"] for r in rows]
