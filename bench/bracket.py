"""Every R_hyp(D-) as a bracket: attacks (lower bounds) beside certificates (upper bounds), and their cost.

Trains on digits (CPU, one thread) a naturally trained MLP, TRADES and THRM MLPs (the ``local`` profile) and the
l_inf-distance net (the ``local_linfdist`` profile), then measures for each, at the default eps 0.1 l_inf:

    R_hyp(D-) found by PGD-20, APGD-20 (CE), APGD-20 (margin)   <=   R_hyp(D-)   <=   IBP, CROWN-IBP, CROWN bounds

with the clean accuracy and the seconds each number costs. The attack columns are the share of
misclassified test points the hypocritical attack (toward the true label, one start, seeded) conceals; the
certified columns are 1 - (certified unconcealable mistakes) / |D-| (``hyporay.certify``).

    python bench/bracket.py                       # all four models (about 4 minutes on one idle core)
    python bench/bracket.py --models nt,linf_dist --markdown bracket.md
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyporay.attacks import apgd, pgd  # noqa: E402
from hyporay.certify import certify  # noqa: E402
from hyporay.config import load_config  # noqa: E402
from hyporay.experiment import load_checkpoint, load_trial_data, model_from_checkpoint, run_trial  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "sweeps" / "configs"
MODELS = {  # name -> (profile, overrides)
    "nt": ("local", {"train": {"trainer": "natural", "lam": 0.0}}),
    "trades": ("local", {"train": {"trainer": "trades", "lam": 6.0}}),
    "thrm": ("local", {"train": {"trainer": "thrm", "lam": 6.0}}),
    "linf_dist": ("local_linfdist", {}),
}
ATTACKS = ("PGD-20", "APGD-20 ce", "APGD-20 margin")
BOUNDS = ("ibp", "crown-ibp", "crown")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _concealed(model, x, y, x_adv) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def train(name: str, seed: int):
    """Train model ``name`` with its profile; returns (model in eval mode, config, data set, seconds)."""
    profile, over = MODELS[name]
    cfg = load_config(PROFILES / f"{profile}.yaml", {**over, "seed": seed, "threads": 1, "device": "cpu",
                                                     "name": f"bracket-{name}",
                                                     "eval": {"every": 10_000, "attack": {"steps": 1}}})
    ds = load_trial_data(cfg)
    with tempfile.TemporaryDirectory(prefix="hyporay-bracket-") as d:
        _, train_s = _timed(lambda: run_trial(cfg, data=ds, checkpoint_dir=d))
        model, _ = model_from_checkpoint(load_checkpoint(d))
    return model, cfg, ds, train_s


def measure(name: str, model, cfg, ds, train_s: float, eps: float, seed: int) -> dict:
    """The bracket of one trained model at one eps (l_inf, pixel units)."""
    x, y = ds.x_test, ds.y_test
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    xw, yw = x[wrong], y[wrong]
    n_wrong = int(wrong.sum())
    row = {"model": name, "eps": eps, "trainer": cfg.train.trainer, "lam": cfg.train.lam, "arch": cfg.model.name,
           "acc_clean": 1 - n_wrong / len(y), "n_test": len(y), "n_wrong": n_wrong, "train_s": train_s}
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    runs = {
        "PGD-20": lambda: pgd(model, xw, yw, eps=eps, step_size=eps / 4, steps=20, objective="hypocritical",
                              generator=gen()),
        "APGD-20 ce": lambda: apgd(model, xw, yw, eps=eps, steps=20, objective="hypocritical", generator=gen()),
        "APGD-20 margin": lambda: apgd(model, xw, yw, eps=eps, steps=20, objective="hypocritical",
                                       score="margin", generator=gen()),
    }
    hit_any = torch.zeros(n_wrong, dtype=torch.bool)
    for key, run in runs.items():
        x_hyp, sec = _timed(run)
        hit = _concealed(model, xw, yw, x_hyp)
        hit_any |= hit
        row[key], row[key + " s"] = float(hit.float().mean()), sec
    row["attacks"] = float(hit_any.float().mean())
    for method in BOUNDS:
        cert, sec = _timed(lambda: certify(model, xw, yw, eps=eps, method=method))
        row[method], row[method + " s"] = 1.0 - float(cert.unconcealable.float().mean()), sec
        if (cert.unconcealable & hit_any).any():  # never expected: the audit's certified_bound check
            raise AssertionError(f"{name}: a certified mistake was concealed by an attack ({method})")
    return row


def table(rows: list[dict], eps: float) -> str:
    head = ["model", "clean acc", "|D-|"] + [f"{a}" for a in ATTACKS] + ["IBP", "CROWN-IBP", "CROWN", "train s"]
    lines = [f"R_hyp(D-) on digits (test split {rows[0]['n_test']} points), l_inf eps={eps:g}: attacks (lower "
             "bounds) | certified upper bounds; seconds for the D- points in brackets", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = {"nt": "MLP NT", "trades": f"MLP TRADES (lam {r['lam']:g})", "thrm": f"MLP THRM (lam {r['lam']:g})",
                 "linf_dist": f"l_inf-dist net, {r['trainer'].upper()} (lam {r['lam']:g})"}[r["model"]]
        cells = [label, f"{r['acc_clean']:.3f}", str(r["n_wrong"])]
        cells += [f"{r[a]:.3f} ({r[a + ' s']:.2f}s)" for a in ATTACKS]
        cells += [f"{r[m]:.3f} ({r[m + ' s']:.2f}s)" for m in BOUNDS]
        cells.append(f"{r['train_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "bracket per model: [best attack, tightest certificate] = " + "; ".join(
        f"{r['model']} [{r['attacks']:.3f}, {min(r[m] for m in BOUNDS):.3f}]" for r in rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--eps", default="0.1", help="l_inf radii in pixel units, comma-separated (one table each; "
                                             "the models are trained once)")
    p.add_argument("--seed", type=int, default=0, help="training seed and attack start seed")
    p.add_argument("--markdown", metavar="OUT", help="also write the table here")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown[0]!r}; known: {', '.join(MODELS)}")
    try:
        radii = [float(e) for e in args.eps.split(",") if e.strip()]
    except ValueError:
        p.error(f"--eps: cannot read {args.eps!r} as comma-separated numbers")
    if not radii or any(e < 0 for e in radii):
        p.error(f"--eps: need numbers >= 0, got {args.eps!r}")
    torch.set_num_threads(1)
    start = time.perf_counter()
    trained = {}
    for n in names:
        trained[n] = train(n, args.seed)
        model, cfg, ds, sec = trained[n]
        print(f"{n}: {cfg.model.name} {cfg.train.trainer} (lam {cfg.train.lam:g}) trained in {sec:.1f}s", file=sys.stderr,
              flush=True)
    text = "\n\n".join(table([measure(n, *trained[n], eps, args.seed) for n in names], eps) for eps in radii)
    text += f"\n\ntotal {time.perf_counter() - start:.0f}s on 1 thread (training included)"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
