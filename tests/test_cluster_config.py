"""`hyporay validate-cluster`: the shipped cluster files pass Ray's checks and ours; broken ones say why."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from hyporay.cluster.validate import check

ROOT = Path(__file__).resolve().parent.parent
AWS = yaml.safe_load((ROOT / "cluster.yaml").read_text())
LOCAL = yaml.safe_load((ROOT / "cluster.local.yaml").read_text())
V = ray.__version__


def hyporay(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "hyporay.cli", "validate-cluster", *map(str, args)], cwd=cwd,
                          env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"), capture_output=True, text=True,
                          timeout=120)


def test_shipped_files_are_valid():
    r = hyporay("cluster.yaml", "cluster.local.yaml")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    aws = next(line for line in lines if line.startswith("cluster.yaml: valid ("))
    assert "head head-cpu" in aws and "gpu-1x 0-10 x 1 GPU" in aws and "gpu-4x 0-2 x 4 GPU" in aws
    assert f"image rayproject/ray:{V}-py311-gpu" in aws and "storage s3://" in aws
    local = next(line for line in lines if line.startswith("cluster.local.yaml: valid ("))
    assert "storage /mnt/hyporay/runs" in local and "2 worker machine(s)" in local
    assert "cluster.local.yaml: note: provider: 192.0.2.10" in r.stdout  # placeholders are pointed out
    assert r.stderr == ""


def test_default_file_is_cluster_yaml():
    r = hyporay()
    assert r.returncode == 0 and r.stdout.startswith("cluster.yaml: valid ("), r.stdout + r.stderr


def _gpu_types(c):
    for k in ("gpu-1x", "gpu-4x"):
        del c["available_node_types"][k]


def _opts(c, opts):
    c["docker"]["run_options"] = opts


BROKEN = {
    "no GPU worker type": (AWS, _gpu_types, "available_node_types: no worker type declares a GPU"),
    "GPU only on a type capped at 0": (AWS, lambda c: [c["available_node_types"][k].update(max_workers=0)
                                                       for k in ("gpu-1x", "gpu-4x")],
                                       "available_node_types.gpu-1x: max_workers is 0"),
    "fractional GPU": (AWS, lambda c: c["available_node_types"]["gpu-1x"]["resources"].update(GPU=0.5),
                       "available_node_types.gpu-1x.resources.GPU: 0.5 is not an integer"),
    "fractional CPU": (AWS, lambda c: c["available_node_types"]["head-cpu"]["resources"].update(CPU=1.5),
                       "available_node_types.head-cpu.resources.CPU: 1.5 is not an integer"),
    "wrong image version": (AWS, lambda c: c["docker"].update(image="rayproject/ray:2.49.0-py311-gpu"),
                            f"docker.image: rayproject/ray:2.49.0-py311-gpu runs Ray 2.49.0 but the installed Ray "
                            f"is {V}"),
    "ray-ml image": (AWS, lambda c: c["docker"].update(image=f"rayproject/ray-ml:{V}-py311-gpu"),
                     "the rayproject/ray-ml images are no longer published"),
    "untagged image": (AWS, lambda c: c["docker"].update(image="rayproject/ray"), "the tag names no Ray version"),
    "no image": (AWS, lambda c: c.pop("docker"), "docker.image: not set"),
    "missing storage": (AWS, lambda c: _opts(c, ["--ulimit nofile=65536:65536"]),
                        "storage: HYPORAY_STORAGE_PATH is not set"),
    "local storage": (AWS, lambda c: _opts(c, ["--env=HYPORAY_STORAGE_PATH=/home/ray/runs"]),
                      "storage: HYPORAY_STORAGE_PATH=/home/ray/runs is a local path on each node"),
    "relative storage": (AWS, lambda c: _opts(c, ["-e HYPORAY_STORAGE_PATH=runs"]), "is a relative local path"),
    "storage set twice": (AWS, lambda c: c["setup_commands"].append("export HYPORAY_STORAGE_PATH=s3://b/x"),
                          "storage: HYPORAY_STORAGE_PATH is set in 2 places"),
    "unknown top-level key": (AWS, lambda c: c.update(storage_path="s3://b/x"),
                              "top level: unknown key 'storage_path'; Ray knows: auth,"),
    "wrong type": (AWS, lambda c: c.update(max_workers="ten"),
                   "max_workers: \"ten\" is not of type 'integer' (Ray's schema)"),
    "wrong type that breaks prepare_config": (AWS, lambda c: c.update(setup_commands="pip install -e ."),
                                              "setup_commands: \"pip install -e .\" is not of type 'array'"),
    "unknown node-type key": (AWS, lambda c: c["available_node_types"]["gpu-1x"].update(gpus=1),
                              "available_node_types.gpu-1x: unknown key 'gpus'"),
    "head type not a node type": (AWS, lambda c: c.update(head_node_type="head"),
                                  "Ray's validate_config: ValueError: `head_node_type` must be one of"),
    "unknown provider": (AWS, lambda c: c["provider"].update(type="awz"),
                         "Ray's prepare_config failed: NotImplementedError: Unsupported node provider: awz"),
    "public MLflow port": (AWS, lambda c: c["provider"].update(security_group={"IpPermissions": [
        {"FromPort": 5000, "ToPort": 5000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        "provider.security_group.IpPermissions: port 5000 is open to public addresses (0.0.0.0/0)"),
    "MLflow port open to the internet in two halves": (AWS, lambda c: c["provider"].update(security_group={
        "IpPermissions": [{"FromPort": 5000, "ToPort": 5000, "IpProtocol": "tcp",
                           "IpRanges": [{"CidrIp": "0.0.0.0/1"}, {"CidrIp": "128.0.0.0/1"}]}]}),
        "port 5000 is open to public addresses (0.0.0.0/1, 128.0.0.0/1)"),
    "every TCP port open to a public block": (AWS, lambda c: c["provider"].update(security_group={
        "IpPermissions": [{"FromPort": 0, "ToPort": 65535, "IpProtocol": "tcp",
                           "IpRanges": [{"CidrIp": "8.0.0.0/5"}]}]}),
        "port 0-65535 is open to public addresses (8.0.0.0/5)"),
    "every protocol open to a public IPv6 block": (AWS, lambda c: c["provider"].update(security_group={
        "IpPermissions": [{"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "2000::/3"}]}]}),
        "port 0-65535 is open to public addresses (2000::/3)"),
    "a block reaching past the private range": (AWS, lambda c: c["provider"].update(security_group={
        "IpPermissions": [{"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp",
                           "IpRanges": [{"CidrIp": "172.0.0.0/8"}]}]}),
        "port 8265 is open to public addresses (172.0.0.0/8)"),
    "dashboard on every interface": (AWS, lambda c: c.update(head_start_ray_commands=[
        x.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0") for x in c["head_start_ray_commands"]]),
        "head_start_ray_commands: --dashboard-host=0.0.0.0 binds the Ray dashboard"),
    "MLflow on every interface": (LOCAL, lambda c: c.update(head_start_ray_commands=[
        x.replace("--host $IP", "--host 0.0.0.0") for x in c["head_start_ray_commands"]]),
        "mlflow: the server binds 0.0.0.0 (every interface)"),
    "MLflow's extra bind on every interface": (AWS, lambda c: c.update(head_start_ray_commands=[
        x.replace("--bind 127.0.0.1:5000", "--bind 0.0.0.0:5000") for x in c["head_start_ray_commands"]]),
        "mlflow: --bind 0.0.0.0:5000 binds every interface"),
    "workers without S3 access": (AWS, lambda c: c["available_node_types"]["gpu-4x"]["node_config"].pop(
        "IamInstanceProfile"), "available_node_types.gpu-4x.node_config: no IamInstanceProfile"),
    "Ray's default AMI": (AWS, lambda c: c["available_node_types"]["gpu-1x"]["node_config"].pop("ImageId"),
                          "available_node_types.gpu-1x.node_config: no ImageId; Ray's default AMI"),
    "no MLflow server": (AWS, lambda c: c.update(head_start_ray_commands=c["head_start_ray_commands"][:2]),
                         "mlflow: no `mlflow server` is started"),
    "MLflow on loopback": (AWS, lambda c: c.update(head_start_ray_commands=[
        x.replace("--host $IP", "--host 127.0.0.1") for x in c["head_start_ray_commands"]]),
        "mlflow: the server binds 127.0.0.1"),
    "head does not join the cluster": (AWS, lambda c: c.update(head_setup_commands=c["head_setup_commands"][:1]),
                                       "head_setup_commands: RAY_ADDRESS is not exported on the head"),
    "local: no tracking URI on the head": (LOCAL, lambda c: c.update(head_setup_commands=[]),
                                           "head_setup_commands: MLFLOW_TRACKING_URI is not exported on the head"),
    "local: node types": (LOCAL, lambda c: c.update(available_node_types={"gpu": {"resources": {"GPU": 1},
                                                                                   "node_config": {}}}),
                          "The field available_node_types is not supported for on-premise clusters"),
    "local: no workers": (LOCAL, lambda c: c["provider"].update(worker_ips=[]), "provider.worker_ips: no worker"),
    "local: storage not on the NFS volume": (LOCAL, lambda c: _opts(c, ["--env=HYPORAY_STORAGE_PATH=/mnt/other"]),
                                             "HYPORAY_STORAGE_PATH=/mnt/other is a local path on each node"),
    "local: fractional --num-gpus": (LOCAL, lambda c: c["worker_start_ray_commands"].append(
        "ray start --address=$RAY_HEAD_IP:6379 --num-gpus=0.5"), "--num-gpus=0.5 must be a whole number"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_variant_gives_its_line(name):
    base, mutate, needle = BROKEN[name]
    cfg = copy.deepcopy(base)
    mutate(cfg)
    r = check(cfg, "broken.yaml")
    assert not r.valid
    assert any(needle in p for p in r.problems), r.problems
    assert all("\n" not in p for p in r.problems)


def test_cli_exit_status_and_lines(tmp_path):
    cfg = copy.deepcopy(AWS)
    _gpu_types(cfg)
    cfg["docker"]["image"] = "rayproject/ray:2.49.0-py311-gpu"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = hyporay(bad, cwd=tmp_path)
    assert r.returncode == 1
    err = r.stderr.splitlines()
    assert err[-1] == f"{bad}: invalid (2 problems)"
    assert any(line.startswith(f"{bad}: available_node_types: no worker type declares a GPU") for line in err)
    assert any(line.startswith(f"{bad}: docker.image: rayproject/ray:2.49.0") for line in err)
    assert "Traceback" not in r.stderr and r.stdout == ""

    (tmp_path / "syntax.yaml").write_text("cluster_name: [unclosed\n")
    r = hyporay(tmp_path / "missing.yaml", tmp_path / "syntax.yaml", bad, cwd=tmp_path)
    assert r.returncode == 2  # unreadable beats invalid
    assert f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory" in r.stderr
    assert f"{tmp_path / 'syntax.yaml'}: not valid YAML (line 2, column 1)" in r.stderr

    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    r = hyporay(tmp_path / "list.yaml", cwd=tmp_path)
    assert r.returncode == 1 and "holds a list, not a cluster config mapping" in r.stderr


@pytest.mark.parametrize("cidr,public", [
    ("0.0.0.0/0", True), ("0.0.0.0/1", True), ("128.0.0.0/1", True), ("8.0.0.0/5", True), ("1.2.3.4/32", True),
    ("172.0.0.0/8", True), ("::/0", True), ("not-a-cidr", True),
    ("10.0.0.0/8", False), ("10.1.2.0/24", False), ("172.16.0.0/12", False), ("192.168.0.0/16", False),
    ("100.64.0.0/10", False), ("fd00::/8", False), ("127.0.0.1/32", False)])
def test_cidrs_are_reasoned_about_not_matched(cidr, public):
    from hyporay.cluster.rules import admits_public

    assert admits_public(cidr) is public


def test_ports_open_to_the_cluster_subnet_only_are_fine():
    cfg = copy.deepcopy(AWS)
    cfg["provider"]["security_group"] = {"IpPermissions": [
        {"FromPort": 0, "ToPort": 65535, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/16"}]},
        {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    r = check(cfg, "ok.yaml")
    assert not any("security_group" in p for p in r.problems), r.problems
