"""TRADES vs THRM over lambda: the natural-vs-hypocritical trade-off frontier (the paper's Fig. 4).

    python sweeps/thrm_lambda.py                      # profile auto: paper on a GPU cluster, else local
    python sweeps/thrm_lambda.py --lambdas 0,10,40 --seeds 3 --profile local
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import THRM_LAMBDA as SWEEP  # noqa: E402  (the definition: hyporay/sweeps.py)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
