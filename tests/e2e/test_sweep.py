"""Whole sweeps on a real local Ray with a real MLflow SQLite store (the main job, small)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import sweep_env

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "sweeps" / "thrm_lambda.py"
SMALL = ["--profile", "local", "--seeds", "1", "--set", "eval.every=1"]  # + lambdas, epochs

pytestmark = pytest.mark.slow


def _env():
    return sweep_env()


def _runs(cwd: Path):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = c.get_experiment_by_name("thrm_lambda-local")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hyporay.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("hyporay.role") == "trial"]
    return c, parents, children


def _steps(c, run) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run.info.run_id, "natural_risk"))


def test_sweep_with_dying_workers_logs_each_trial_once(small_sweep):
    """2 lambdas x 2 trainers; every trial's worker dies hard after epoch 1 and is retried from its checkpoint."""
    r, tmp_path, chaos = small_sweep["proc"], small_sweep["dir"], small_sweep["chaos"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.splitlines()[0].startswith("profile: local")
    assert len(list(chaos.glob("*.died"))) == 4  # each trial really lost its worker once
    c, parents, children = _runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert {ch.data.tags["mlflow.parentRunId"] for ch in children} == {parent.info.run_id}
    for ch in children:
        assert ch.info.status == "FINISHED"
        assert _steps(c, ch) == [1, 2]  # resumed at epoch 2 from the checkpoint: epoch 1 not re-logged
        assert {"trainer", "dataset", "architecture", "profile"} <= set(ch.data.tags)
        assert ch.data.params["train.lam"] in {"0.0", "5.0"} and "eval.attack.eps" in ch.data.params
        for m in ("natural_risk", "hypocritical_risk", "acc_clean", "acc_adv", "acc_hyp", "stability_risk"):
            assert m in ch.data.metrics
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"frontier.png", "frontier.html", "frontier.csv"} <= arts
    assert parent.info.status == "FINISHED"
    exp = c.get_experiment(parent.info.experiment_id)
    assert "mlflow.sharedViewState.hyporay-frontier" in exp.tags
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in r.stdout
    assert "mlflow server --backend-store-uri sqlite:///" in r.stdout


def test_interrupted_sweep_resumes_without_repeating_trials(tmp_path):
    # 6 trials, 2 at a time: when the first one finishes, several are still to run
    args = [sys.executable, str(SWEEP), *SMALL, "--lambdas", "0,5,10", "--set", "train.epochs=5",
            "--name", "interrupted"]
    # restore SIGINT's default in the child: a shell running in the background hands on an ignored SIGINT
    proc = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    finished_before = 0
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # interrupt once the first trial has finished
            time.sleep(2)
            if (tmp_path / "mlflow.db").exists():
                try:
                    _, _, children = _runs(tmp_path)
                except Exception:  # noqa: BLE001 - the store may be mid-migration
                    continue
                finished_before = sum(ch.info.status == "FINISHED" for ch in children)
                if finished_before:
                    break
        # without a finished trial the interrupt would test nothing: "< 6 finished" holds trivially
        assert proc.poll() is None, "the sweep ended before it could be interrupted:\n" + proc.stdout.read()[-3000:]
        assert finished_before >= 1, "no trial finished within 300 s: the interrupt would test nothing"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "resume with:" in out
    c, parents, children = _runs(tmp_path)
    assert parents[0].info.status == "RUNNING"  # not finished until resumed
    done = sum(ch.info.status == "FINISHED" for ch in children)
    assert finished_before <= done < 6  # some trials finished before the interrupt, some are left to resume

    r = subprocess.run([sys.executable, str(SWEEP), "--resume"], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "interrupted" in r.stdout.splitlines()[0]  # the resumed sweep's profile, and why
    c, parents, children = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6
    names = sorted(ch.info.run_name for ch in children)
    assert names == sorted(set(names))
    for ch in children:
        assert ch.info.status == "FINISHED"
        assert _steps(c, ch) == list(range(1, 6))


@pytest.mark.parametrize("args,needle", [
    (["--tracking-uri", "http://127.0.0.1:9"], "tracking-uri: cannot reach http://127.0.0.1:9"),
    (["--set", "model.name=resnet19"], "model.name: unknown 'resnet19'"),
    (["--set", "data.name=cifar10"], "dataset cifar10: not found"),
    (["--resume"], "--resume: no interrupted thrm_lambda sweep"),
])
def test_bad_input_fails_before_anything_starts(tmp_path, args, needle):
    """One line, exit 2, and nothing written: no MLflow store, no Tune directory, no Ray session."""
    r = subprocess.run([sys.executable, str(SWEEP), "--profile", "local", "--lambdas", "0", "--seeds", "1", *args],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
