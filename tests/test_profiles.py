"""Profile choice under ``--profile auto`` and trial sizing: pure functions of what the cluster has (README:
"auto: paper when the connected Ray cluster has GPUs, else local"; "a GPU fraction when the cluster has GPUs,
CPUs only without, capped at the largest node")."""
from __future__ import annotations

import pytest

from hyporay.cluster.resources import ClusterInfo, trial_resources
from hyporay.engine.definition import choose_profile


def _info(cpus=8.0, gpus=0.0, max_node_cpus=8.0, max_node_gpus=0.0, nodes=1, address="local"):
    return ClusterInfo(address=address, cpus=cpus, gpus=gpus, max_node_cpus=max_node_cpus,
                       max_node_gpus=max_node_gpus, nodes=nodes)


def test_auto_picks_paper_on_a_gpu_cluster_and_local_without():
    """Guards --profile auto: the connected cluster's GPUs decide (not this machine's), and without a cluster
    this machine's; an explicit profile is never overridden."""
    prof, why = choose_profile("auto", _info(gpus=4, max_node_gpus=1, nodes=4, address="10.0.0.1:6379"), 0)
    assert prof == "paper" and "4 GPU" in why and "10.0.0.1:6379" in why
    prof, why = choose_profile("auto", _info(gpus=0), 2)  # a GPU on the driver does not count for a cluster
    assert prof == "local" and "no GPU" in why
    assert choose_profile("auto", None, 1)[0] == "paper"
    assert choose_profile("auto", None, 0)[0] == "local"
    assert choose_profile("local", _info(gpus=8), 8) == ("local", "requested with --profile")
    assert choose_profile("paper", None, 0) == ("paper", "requested with --profile")


def test_trial_resources_gpu_fraction_on_a_gpu_cluster():
    """Guards GPU sizing: on a GPU cluster a trial asks for the configured fraction of one GPU plus its CPUs."""
    assert trial_resources(_info(gpus=2, max_node_gpus=2), cpus_per_trial=2, gpu_fraction=0.25) == \
        {"cpu": 2.0, "gpu": 0.25}
    # never more GPU than the largest node has (a request no node can place stays PENDING forever)
    assert trial_resources(_info(gpus=1, max_node_gpus=0.5), gpu_fraction=1.0)["gpu"] == 0.5


def test_trial_resources_cpus_only_without_gpus():
    """Guards the PENDING-forever trap: without GPUs in the cluster a trial asks for no GPU at all."""
    assert trial_resources(_info(gpus=0), cpus_per_trial=3, gpu_fraction=0.5) == {"cpu": 3.0}


@pytest.mark.parametrize("gpus", [0.0, 4.0])
def test_trial_resources_cpus_capped_at_the_largest_node(gpus):
    """Guards placement: a trial never asks for more CPUs than the largest node has."""
    info = _info(cpus=32, gpus=gpus, max_node_cpus=4, max_node_gpus=gpus and 1.0, nodes=8)
    assert trial_resources(info, cpus_per_trial=16)["cpu"] == 4.0
    assert trial_resources(info, cpus_per_trial=2)["cpu"] == 2.0


def test_forced_gpu_request_for_autoscaling_clusters():
    """``gpus_per_trial`` asks for GPUs even before the autoscaler has started any GPU worker."""
    assert trial_resources(_info(gpus=0), cpus_per_trial=1, gpus_per_trial=1) == {"cpu": 1.0, "gpu": 1.0}
