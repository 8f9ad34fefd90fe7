"""Reproduce the paper's tables, figures and five claims in one sweep, and write a report beside its numbers.

One Ray Tune run (one MLflow experiment ``reproduce-<profile>``, one parent run) over a combined grid of four parts:

- Tables 1-2: natural training on the Naive / Noise / Mislabeling / Poisoning / Quality sets x the profile's
  architectures (--models, --variants), evaluated with the per-label targeted attacks too (Fig. 3);
- Table 3: NT, PGD-AT and TRADES (λ=6) on Quality and Poisoning with the profile's model (targeted too);
- Fig. 3: hypocritical vs targeted success on misclassified points, from every trial of Tables 1-3;
- Fig. 4: TRADES vs THRM over the λ grid (--lambdas) on Quality with the profile's model.
Every part is repeated over seeds 0..N-1 (--seeds; default 3 on the local profile). Identical trials of two
parts run once. The report (report.md, frontier.png, fig3.png, CSV tables, claims.json) goes to --out
(default docs/results/<profile>) and to the parent run's artefacts; each claim's verdict is computed from the
runs by the rules stated in the report.

    python sweeps/reproduce.py --profile local                  # the full local reproduction (< 30 min, 2 cores)
    python sweeps/reproduce.py --profile local --seeds 1 --lambdas 0,10 --set train.epochs=1 --out /tmp/r
    python sweeps/reproduce.py --profile paper --dry-run        # the GPU cluster's trials
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.engine import main  # noqa: E402
from hyporay.sweeps import REPRODUCE as SWEEP  # noqa: E402  (the definition: hyporay/sweeps.py)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
