"""Defender-budget search: the training eps (optionally lambda and attack steps) with the smallest hypocritical
risk under a natural-risk ceiling. An Optuna study (TPE, seeded) whose trials run on Ray workers and are pruned
by a real Optuna pruner (median by default); one MLflow parent run per study, one child run per trial.

    python sweeps/defender_budget.py                                  # profile auto: paper on a GPU cluster
    python sweeps/defender_budget.py --profile local --n-trials 24 --eps-range 0.005,0.4 --lam-range 1,40
    python sweeps/defender_budget.py --study-name budget1 --n-trials 8    # again: continues study budget1
    python sweeps/defender_budget.py --storage postgresql://user:pw@db:5432/optuna    # on a cluster
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import BUDGET  # noqa: E402  (the definition: hyporay/engine/optuna/definition.py)

if __name__ == "__main__":
    sys.exit(main(BUDGET, configs_dir=Path(__file__).resolve().parent / "configs"))
