"""Your own data in a sweep: a data set registered only in the user's own driver script (never in a file named on
the command line) reaches every Ray worker, with a split per trial seed and a profile given by path."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import patience, sweep_env

ROOT = Path(__file__).resolve().parents[2]

DRIVER = '''
import runpy
import sys

import torch

from hyporay.data import register_dataset
from hyporay.engine import main


@register_dataset("only_in_this_test")
def stripes(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = 200 + seed                      # the split follows the seed: seed 1 has one more test point
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 12, generator=g) * 0.5   # feature vectors (N x D), no reshaping
    x[torch.arange(n), 4 * y] += 0.5
    return x[:150], y[:150], x[150:], y[150:], 3


SWEEP = runpy.run_path("{root}/sweeps/thrm_lambda.py", run_name="user_driver")["SWEEP"]

if __name__ == "__main__":
    sys.exit(main(SWEEP))
'''

PROFILE = """
description: a profile given by path
seeds: 2
resources: {cpus_per_trial: 1}
sweep:
  train.lam: [0]
  train.trainer: [thrm]
trial:
  name: mine
  data: {name: only_in_this_test, split_seed: trial}
  model: {name: mlp, kwargs: {hidden: [32]}}
  train: {epochs: 1, lr: 0.05, attack: {eps: 0.1, steps: 2}}
  eval: {every: 1, attack: {eps: 0.1, steps: 2}}
"""

pytestmark = pytest.mark.slow


def test_a_data_set_registered_in_the_driver_script_reaches_the_workers(tmp_path):
    (tmp_path / "my_sweep.py").write_text(DRIVER.replace("{root}", str(ROOT)))
    (tmp_path / "my_profile.yaml").write_text(PROFILE)
    r = subprocess.run([sys.executable, "my_sweep.py", "--profile", "my_profile.yaml"], cwd=tmp_path,
                       env=sweep_env(), capture_output=True, text=True, timeout=patience(400))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.splitlines()[0] == "profile: my_profile (requested with --profile)"

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("thrm_lambda-my_profile")
    children = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("hyporay.role") == "trial"]
    assert len(children) == 2 and all(ch.info.status == "FINISHED" for ch in children)
    by_seed = {ch.data.params["seed"]: ch for ch in children}
    # each seed trained and tested on its own split of the user's data (seed 0: 50 test points, seed 1: 51)
    assert by_seed["0"].data.metrics["n_examples"] == 50 and by_seed["1"].data.metrics["n_examples"] == 51
    assert by_seed["0"].data.params["data.split_seed"] == "trial"
    assert str(tmp_path / "my_sweep.py") in by_seed["0"].data.params["imports"]  # recorded by the engine
