"""001's Table 2: clean test accuracy of seven defences trained on the clean set and on 001's delusive sets P1-P5.

Training sets: clean (quality) and poisoning P1-P5 (001's delusive attacks at the training attack's eps, from a
naturally trained source model). Defences: ST (natural), RandNoise, PGD-AT, GAIRAT, FAT (001's Table 2) plus TRADES
and THRM (λ 6). Every trial is evaluated once, after its last epoch. Writes delusive_table.md (001's layout: our
mean ± std over seeds with 001's CIFAR-10 ResNet-18 number in brackets; 001's L2C column is not run here),
delusive_table.csv, and a verdict on 001's claim that adversarial training recovers most of the accuracy the
poisons take and random noise does not.

    python sweeps/delusive.py --profile local
    python sweeps/delusive.py --profile local --sets clean,p1 --trainers natural,fat --seeds 1 --set train.epochs=2
    python sweeps/delusive.py --profile fashion --dry-run
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import DELUSIVE as SWEEP  # noqa: E402  (the definition: hyporay/sweeps.py)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
