"""Pareto search of the trade-off: NSGA-II over trainer (TRADES, THRM), lambda and the training eps, minimising
(natural_risk, hypocritical_risk); no pruning (Optuna cannot prune multi-objective studies). Logs the Pareto set
(pareto_set.csv / .md) and the Pareto-front plot (pareto_front.png / .html) to the study's MLflow parent run.

    python sweeps/pareto.py --profile local --n-trials 24
    python sweeps/pareto.py --profile local --trainers thrm --lam-range 1,80 --eps-range 0.01,0.3
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import PARETO  # noqa: E402  (the definition: hyporay/engine/optuna/definition.py)

if __name__ == "__main__":
    sys.exit(main(PARETO, configs_dir=Path(__file__).resolve().parent / "configs"))
