"""PGD-AT, TRADES and THRM over the training eps: how the defender's budget moves the natural-vs-hypocritical frontier.

Every model is evaluated under the profile's fixed eval attack (local: l_inf 0.1; paper: l_inf 8/255); only the
training attack's eps varies (its step size is eps/4, eps = 0 is natural training for PGD-AT). TRADES and THRM
use lambda 6 (official TRADES). Frontier points are labelled by the training eps.

    python sweeps/defender_eps.py                                   # profile auto; eps grid from the profile
    python sweeps/defender_eps.py --profile local --eps 0,0.05,0.1 --seeds 3
    python sweeps/defender_eps.py --profile local --trainers trades,thrm --set train.lam=1 --set train.epochs=10
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import DEFENDER_EPS as SWEEP  # noqa: E402  (the definition: hyporay/sweeps.py)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
