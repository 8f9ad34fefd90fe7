"""Is the eval attack converged? Accuracy under attack vs PGD steps and restarts, for each trainer.

Trains natural, PGD-AT, TRADES and THRM (lambda 6) once per seed and, after the last epoch, re-evaluates each
model with K steps (K in eval.steps_grid, 1 restart) and R restarts (R in eval.restarts_grid, the eval attack's
steps). Writes convergence.csv and convergence.png (logged to the parent run) and prints, per curve, whether
accuracy still moves between the two strongest settings. More steps or restarts must never raise accuracy
under attack beyond noise (reference §7). The 1000-step evaluation costs about 50 times a 20-step one (minutes per
model on digits, hours for ResNet-18 on CIFAR-10): --set eval.steps_grid=[1,10,100] skips it.

    python sweeps/attack_steps.py --profile local
    python sweeps/attack_steps.py --profile local --seeds 1 --set eval.steps_grid=[1,10,100]
    python sweeps/attack_steps.py --profile local --trainers natural,thrm --set eval.restarts_grid=[1,5]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import ATTACK_STEPS as SWEEP  # noqa: E402  (the definition: hyporay/sweeps.py)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
