"""The `hyporay` command as a user runs it: train, eval, and one-line errors without tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyporay import metrics as M

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_thrm.yaml"


def hyporay(*args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hyporay.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    r = hyporay("train", CONFIG, "--out", d / "run", "--set", "train.epochs=2", "--set", "eval.every=1",
                "--set", f"data.root={d / 'data'}", "--set", "threads=1", cwd=d)
    assert r.returncode == 0, r.stderr
    return d, r


def test_train_prints_epochs_and_table_and_writes_metrics(trained):
    d, r = trained
    assert "epoch   1/2" in r.stdout and "epoch   2/2" in r.stdout
    assert "R_hyp(D-)" in r.stdout and "linf eps=0.1" in r.stdout
    metrics = json.loads((d / "run" / "metrics.json").read_text())
    for name in M.CORE_METRICS:
        assert name in metrics
    assert (d / "run" / "checkpoint.pt").is_file() and (d / "run" / "config.yaml").is_file()


def test_eval_any_attack_spec_and_eps_zero_is_clean(trained):
    d, _ = trained
    r = hyporay("eval", d / "run", "--eps", "0", "--json", d / "e0.json", cwd=d)
    assert r.returncode == 0, r.stderr
    out = json.loads((d / "e0.json").read_text())
    m = out["metrics"]
    assert m[M.ACC_ADV] == m[M.ACC_CLEAN] == m[M.ACC_HYP]
    assert out["attack"]["eps"] == 0
    train_metrics = json.loads((d / "run" / "metrics.json").read_text())
    assert m[M.ACC_CLEAN] == train_metrics[M.ACC_CLEAN]  # same model, same test split
    r = hyporay("eval", d / "run" / "checkpoint.pt", "--norm", "l2", "--eps", "1.0", "--steps", "5",
                "--restarts", "2", cwd=d)
    assert r.returncode == 0 and "l2 eps=1" in r.stdout and "restarts=2" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["train", CONFIG, "--set", "model.name=resnet19"], "model.name: unknown 'resnet19'"),
    (["train", CONFIG, "--set", "train.attack.eps=-1"], "train.attack.eps:"),
    (["train", CONFIG, "--set", "train.lamda=3"], "train.lamda: unknown key"),
    (["train", "missing.yaml"], "config: file not found"),
    (["train", CONFIG, "--set", "data.name=cifar10", "--set", "data.root=nowhere"], "dataset cifar10"),
    (["eval", "no/such/dir"], "checkpoint: no checkpoint.pt"),
    (["eval", "no/such/dir", "--norm", "l3"], "invalid choice"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, needle):
    r = hyporay(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 2  # argparse adds a usage line


def test_resume_continues_in_place(tmp_path, trained):
    """Guards `hyporay train --resume`: a 1-epoch run extended to 2 epochs with --resume trains only epoch 2, and
    its checkpoint (epoch, weights, optimiser state) equals bit for bit that of the uninterrupted 2-epoch run
    of the module fixture (same config and seed)."""
    import torch

    from hyporay.experiment import load_checkpoint

    args = ["train", CONFIG, "--out", tmp_path / "run", "--set", "train.epochs=1", "--set", "eval.every=1",
            "--set", f"data.root={tmp_path / 'data'}", "--set", "threads=1"]
    assert hyporay(*args, cwd=tmp_path).returncode == 0
    assert load_checkpoint(tmp_path / "run")["trainer"]["epoch"] == 1
    args[5] = "train.epochs=2"
    r = hyporay(*args, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch   1/2" not in r.stdout and "epoch   2/2" in r.stdout
    resumed = load_checkpoint(tmp_path / "run")["trainer"]
    full = load_checkpoint(trained[0] / "run")["trainer"]
    assert resumed["epoch"] == full["epoch"] == 2
    for name, w in full["model"].items():
        assert torch.equal(resumed["model"][name], w), name
    for a, b in zip(full["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())
    want = json.loads((trained[0] / "run" / "metrics.json").read_text())
    assert {k: got[k] for k in M.CORE_METRICS} == {k: want[k] for k in M.CORE_METRICS}  # (timings differ)
