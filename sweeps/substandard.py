"""Substandard models (the paper's Tables 1-2): natural training on Naive/Noise/Mislabeling/Poisoning/Quality sets.

Every training-set variant x architecture (the profile's models, or --models) is trained naturally and evaluated
under the profile's eval attack. Writes substandard_table.md in the paper's layout (rows = training set, columns
= architecture, cells "D / A / F" = clean / adversarial / hypocritical accuracy in %, mean over seeds) and
substandard_table.csv, both logged to the parent run. Claim 1 of the paper: F far above D for substandard models.

    python sweeps/substandard.py --profile local
    python sweeps/substandard.py --profile local --models mlp --variants naive,quality --seeds 1
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import SUBSTANDARD as SWEEP  # noqa: E402  (the definition: hyporay/sweeps.py)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
