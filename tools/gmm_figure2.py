"""001's Figure 2 from the closed form: natural accuracy on D of the five Gaussian-mixture models against the
number d of non-robust features (σ = 1, η = 0.01 as in the paper). Prints the table and writes the picture.

    .venv/bin/python tools/gmm_figure2.py                              # docs/img/gmm_figure2.png
    .venv/bin/python tools/gmm_figure2.py --eta 0.02 --sigma 1 --out /tmp/fig2.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay.theory import gmm  # noqa: E402


def _positive(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name}: must be a number > 0, got {text!r}") from None
        if not (np.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"--{name}: must be a number > 0, got {text!r}")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eta", type=_positive("eta"), default=0.01, help="centre of the non-robust features")
    p.add_argument("--sigma", type=_positive("sigma"), default=1.0, help="noise standard deviation")
    p.add_argument("--d-max", type=int, default=60_000, help="largest d drawn (log grid from 1)")
    p.add_argument("--out", default="docs/img/gmm_figure2.png", help="where the picture goes")
    a = p.parse_args(argv)
    if a.d_max < 10:
        p.error(f"--d-max: must be >= 10, got {a.d_max}")
    ds = sorted({int(v) for v in np.geomspace(1, a.d_max, 200)})
    curves = gmm.figure2_curves(ds, a.eta, a.sigma)
    print(f"natural accuracy on D, sigma={a.sigma:g}, eta={a.eta:g}")
    print(f"{'d':>8s} " + " ".join(f"{k:>9s}" for k, *_ in gmm.MODELS))
    for d in (1, 100, 1_000, 10_000, 50_000):
        acc = gmm.model_accuracies(d, a.eta, a.sigma)
        print(f"{d:>8,d} " + " ".join(f"{acc[k]:9.3f}" for k, *_ in gmm.MODELS))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles = {"f_D": ("k", "-"), "f_D1": ("tab:red", "-"), "f_D2": ("tab:blue", "-"),
              "f_D1_rob": ("tab:red", "--"), "f_D2_rob": ("tab:blue", "--")}
    for key, label, _dist, _robust in gmm.MODELS:
        color, ls = styles[key]
        ax.plot(ds, curves[key], color=color, ls=ls, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("d (number of non-robust features)")
    ax.set_ylabel("natural accuracy on D")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"001 Figure 2 (closed form), σ={a.sigma:g}, η={a.eta:g}")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
