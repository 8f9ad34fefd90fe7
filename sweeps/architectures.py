"""Natural training vs THRM across architectures: where each model sits on the natural-vs-hypocritical plane.

The models come from the profile (local: mlp, cnn; paper: mlp, cnn, vgg16, resnet18, wrn28_10); --models asks
for any (the large ones are slow on CPU). THRM uses lambda 6. Frontier points are labelled by the model.

    python sweeps/architectures.py --profile local
    python sweeps/architectures.py --profile local --models mlp,cnn,resnet18 --seeds 1 --set train.epochs=5
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import ARCHITECTURES as SWEEP  # noqa: E402  (the definition: hyporay/sweeps.py)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
