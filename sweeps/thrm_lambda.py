"""TRADES vs THRM over lambda: the natural-vs-hypocritical trade-off frontier (the paper's Fig. 4).

    python sweeps/thrm_lambda.py                      # profile auto: paper on a GPU cluster, else local
    python sweeps/thrm_lambda.py --lambdas 0,10,40 --seeds 3 --profile local
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import Axis, SweepDefinition, main  # noqa: E402

SWEEP = SweepDefinition(
    name="thrm_lambda",
    description=__doc__.splitlines()[0],
    axes=[
        Axis("train.trainer", None, "--trainers", str, "trainers to compare"),
        Axis("train.lam", None, "--lambdas", float, "lambda grid"),
    ],
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
