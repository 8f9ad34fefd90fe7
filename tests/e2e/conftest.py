"""One small real sweep shared by the end-to-end tests (Ray start-up and trials cost most of their time)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import patience, sweep_env

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "sweeps" / "thrm_lambda.py"


@pytest.fixture(scope="session")
def small_sweep():
    """2 trainers x 2 lambdas (λ = 0 is natural training, planned once: 3 trials), 2 epochs; every trial's worker
    dies hard once after epoch 1 (and is retried from its checkpoint). Returns the working directory, the completed
    process and the chaos marker dir."""
    work = Path(tempfile.mkdtemp(prefix="hyporay-e2e-"))
    chaos = work / "chaos"
    chaos.mkdir()
    try:
        proc = subprocess.run(
            [sys.executable, str(SWEEP), "--profile", "local", "--trainers", "trades,thrm", "--lambdas", "0,5",
             "--seeds", "1", "--set", "train.epochs=2", "--set", "eval.every=1",
             "--chaos-exit-after-epoch", "1", "--chaos-dir", str(chaos)],
            cwd=work, env=sweep_env(), capture_output=True, text=True, timeout=patience(600))
        yield {"dir": work, "proc": proc, "chaos": chaos}
    finally:
        shutil.rmtree(work, ignore_errors=True)
