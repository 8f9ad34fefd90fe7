"""Two sweeps started at once on a fresh store, on a machine where nobody exported anything: both finish with
their own runs, a diverging trial ends as a result (FAILED, tagged, not retried, left out), and the local Rays
listen on loopback only."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import listening_sockets, patience, process_tree, sweep_env

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "sweeps" / "thrm_lambda.py"
TINY = ["--profile", "local", "--trainers", "thrm", "--lambdas", "5", "--seeds", "1", "--set", "train.epochs=1",
        "--set", "eval.every=1", "--set", "eval.attack.steps=2", "--max-failures", "2"]

pytestmark = pytest.mark.slow


def _loopback(addr: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def test_two_sweeps_at_once_loopback_only_and_a_diverged_trial(tmp_path):
    env = sweep_env()
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in env  # the sweep must bind loopback by itself
    procs = [subprocess.Popen([sys.executable, str(SWEEP), *TINY, *extra], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for extra in ([], ["--set", "train.lr=100"])]
    seen: set[tuple[str, int]] = set()
    try:
        deadline = time.time() + patience(400)
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            pids = set().union(*(process_tree(p.pid) for p in procs if p.poll() is None))
            seen |= {(addr, port) for addr, port, _ in listening_sockets(pids)}
            time.sleep(0.3)
        outs = [p.communicate(timeout=patience(60))[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert seen, "no listening socket of the sweeps' Ray was ever seen: the check saw nothing"
    public = sorted(s for s in seen if not _loopback(s[0]))
    assert not public, f"listening outside loopback: {public}"

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("thrm_lambda-local")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hyporay.role") == "sweep"]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in parents)
    children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
                for p in parents}
    assert sorted(len(v) for v in children.values()) == [1, 1]
    kids = [v[0] for v in children.values()]
    ok = [k for k in kids if k.info.status == "FINISHED"]
    bad = [k for k in kids if k.info.status == "FAILED"]
    assert len(ok) == 1 and len(bad) == 1
    assert bad[0].data.tags["diverged"] == "true" and bad[0].data.tags["diverged_epoch"] == "1"
    assert "natural_risk" not in bad[0].data.metrics and "hypocritical_risk" not in bad[0].data.metrics
    assert [m.step for m in c.get_metric_history(bad[0].info.run_id, "diverged")] == [1]  # stopped once: no retry
    diverging = next(o for o in outs if "1 diverged" in o)
    assert "left out of every frontier and table: 1 diverged" in diverging
    assert "no finished trial" in diverging or "trainer" not in diverging.split("trials:")[0][-400:]
    assert len([d for d in (tmp_path / "hyporay_runs").iterdir() if d.is_dir()]) == 2


_WORKER_CODE = """
import sys
sys.path.insert(0, sys.argv[1])
from hyporay.cluster.resources import init_ray, shutdown_ray
ray = init_ray(num_cpus=1)

@ray.remote
def where():
    import hyporay
    return hyporay.__file__

try:
    print(__import__("hyporay").__file__)
    print(ray.get(where.remote()))
finally:
    shutdown_ray()
"""


def test_workers_run_the_drivers_checkout_not_an_installed_hyporay(tmp_path):
    """A worker imports the hyporay the driver runs (a second checkout), never the one installed in the environment,
    also from ``python -c`` (Ray passes only a script's sys.path on to workers)."""
    import shutil

    other = tmp_path / "checkout"
    shutil.copytree(ROOT / "hyporay", other / "hyporay", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-c", _WORKER_CODE, str(other)], cwd=tmp_path, env=sweep_env(),
                       capture_output=True, text=True, timeout=patience(300))
    assert r.returncode == 0, r.stderr[-3000:]
    driver, worker = r.stdout.split()[-2:]
    assert Path(driver).parent == other / "hyporay"
    assert Path(worker) == Path(driver)
