"""The fashion profile (sweeps/configs/fashion.yaml): its default lambda sweep plans the 51 trials the README's timing
is about, on Fashion-MNIST with the small CNN; one of its trials, shrunk, runs on the real files and records where
its numbers came from (commit, torch, CPU, threads)."""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import runpy
from pathlib import Path

import pytest
import torch

from hyporay import provenance as P
from hyporay.config import load_config
from hyporay.engine import main

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "sweeps" / "configs" / "fashion.yaml"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _dry_run(*args: str) -> tuple[int, str, str]:
    defn = runpy.run_path(str(ROOT / "sweeps" / "thrm_lambda.py"), run_name="dry_run_test")["SWEEP"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(defn, ["--dry-run", "--profile", "fashion", *args], configs_dir=ROOT / "sweeps" / "configs")
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_default_lambda_sweep_is_the_51_timed_trials_on_fashion_mnist_with_the_small_cnn():
    code, out, err = _dry_run()
    assert code == 0, err
    assert re.search(r"^thrm_lambda: 51 trials \(", out, re.M), out[:400]
    listed = [ln for ln in out.splitlines() if ln.startswith("  ") and " data=" in ln]
    assert len(listed) == 51 and all("data=fashion_mnist" in ln and "epochs=6" in ln for ln in listed)
    assert sum("natural-lam0" in ln for ln in listed) == 3        # λ = 0 once per seed, shared by both curves
    cfg = load_config(PROFILE)
    assert (cfg.data.name, cfg.data.subset_train, cfg.data.subset_test) == ("fashion_mnist", 3000, 1000)
    assert cfg.model.name == "cnn" and cfg.model.kwargs == {"channels": [8, 16]}
    assert (cfg.train.attack.norm, cfg.train.attack.eps, cfg.eval.attack.eps) == ("linf", 0.1, 0.1)
    assert cfg.eval.every == cfg.train.epochs                        # evaluated once, after the last epoch


def _real_files() -> None:
    if not (DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        why = f"Debian's dataset-fashion-mnist is not installed ({DEBIAN})"
        if os.environ.get("CI"):
            pytest.fail(why + "; .ci/run installs it")
        pytest.skip(why)


def test_a_fashion_trial_runs_on_the_real_files_and_records_its_machine(tmp_path, monkeypatch):
    from hyporay.experiment import load_checkpoint, run_trial

    _real_files()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = load_config(PROFILE, ["train.epochs=2", "eval.every=2", "data.subset_train=300", "data.subset_test=100",
                                "train.trainer=thrm", "train.lam=5", "threads=1", f"data.root={tmp_path / 'data'}"])
    metrics = run_trial(cfg, checkpoint_dir=tmp_path / "out")
    assert metrics["n_examples"] == 100 and math.isfinite(metrics["natural_risk"])
    saved = load_checkpoint(tmp_path / "out")
    prov = saved["provenance"]
    assert prov[P.TORCH] == torch.__version__ and prov[P.THREADS] == "1" and prov[P.CPU] == P.cpu_model()
    assert prov[P.COMMIT] == P.code()[P.COMMIT]
    # the same trial again: the same numbers, bit for bit, on one machine and build (times aside)
    again = run_trial(cfg, checkpoint_dir=tmp_path / "again")
    timing = ("elapsed_seconds", "epoch_seconds", "train_seconds")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in metrics.items() if k not in timing}
