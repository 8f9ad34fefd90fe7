"""004's smuggling experiment over seeds: the victim's accuracy on the declared and a fresh split, honest vs smuggled
training set, the smuggling gap and the effect (hyporay.variants.smuggle), and how often the audit's smuggling check flags each.

    .venv/bin/python tools/smuggling_gap.py                                  # digits, 20 seeds, eps 5/256
    .venv/bin/python tools/smuggling_gap.py --data digits --seeds 40 --eps 0.0195,0.1 --features pixels
    .venv/bin/python tools/smuggling_gap.py --out docs/results/smuggling_digits.md
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

ROWS = (("honest_declared", "honest, declared"), ("honest_fresh", "honest, fresh"),
        ("smuggled_declared", "smuggled, declared"), ("smuggled_fresh", "smuggled, fresh"),
        ("honest_gap", "honest gap (declared - fresh)"), ("smuggled_gap", "smuggling gap (declared - fresh)"),
        ("effect", "effect (smuggling gap - honest gap)"))


def _floats(flag: str):
    def parse(text: str) -> list[float]:
        try:
            vals = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: comma-separated numbers >= 0, got {text!r}") from None
        if not vals or any(not math.isfinite(v) or v < 0 for v in vals):
            raise argparse.ArgumentTypeError(f"{flag}: comma-separated numbers >= 0, got {text!r}")
        return vals
    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="a registered data set (its test split is cut in two)")
    p.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (each its own cut, features and target)")
    p.add_argument("--eps", type=_floats("--eps"), default=[5 / 256], help="l_inf budgets (pixel units), e.g. 0.0195,0.1")
    p.add_argument("--steps", type=int, default=10, help="the smuggler's PGD steps (step eps/4)")
    p.add_argument("--features", choices=["random", "pixels"], default="random", help="the frozen feature map")
    p.add_argument("--out", help="also write the table as Markdown here (and the raw trials as .json beside it)")
    a = p.parse_args(argv)
    if a.seeds < 2:
        p.error(f"--seeds: need at least 2 for a standard error, got {a.seeds}")
    if a.steps < 1:
        p.error(f"--steps: must be >= 1, got {a.steps}")
    import torch

    from hyporay.data import load_dataset
    from hyporay.variants.smuggle import SmuggleSpec, smuggling_gap

    try:
        ds = load_dataset(a.data, seed=0)
    except (KeyError, ValueError, OSError) as err:
        p.error(f"--data: {str(err).splitlines()[0]}")
    torch.set_num_threads(1)
    lines = [f"# 004's smuggling gap on {ds.name}", "",
             f"{a.seeds} seeds (0..{a.seeds - 1}); each seed cuts the {len(ds.y_test)} test examples into a declared "
             f"and a fresh half, draws the feature map ({a.features}) and fits the target on the declared half; "
             f"the smuggler takes {a.steps} l_inf PGD steps (step eps/4). Accuracy of the victim's linear classifier, "
             "mean ± standard error over seeds; t = mean effect / its standard error.", ""]
    raw = []
    for eps in a.eps:
        t0 = time.perf_counter()
        r = smuggling_gap(ds, SmuggleSpec(eps=eps, steps=a.steps, features=a.features), range(a.seeds))
        s = r["summary"]
        lines += [f"## eps = {eps:.4g} ({eps * 256:.3g}/256), {time.perf_counter() - t0:.0f} s", "",
                  "| quantity | mean | s.e. |", "|---|---|---|"]
        lines += [f"| {label} | {s[k]['mean']:+.4f} | {s[k]['se']:.4f} |" for k, label in ROWS]
        positive = sum(t["smuggled_gap"] > 0 for t in r["trials"])
        flags = {k: round(s[f"{k}_flagged"]["mean"] * a.seeds) for k in ("smuggled", "honest")}
        lines += ["", f"effect t = {r['effect_t']:.2f} over {a.seeds} seeds; smuggling gap > 0 in {positive} of "
                      f"{a.seeds} seeds. The audit's smuggling check (one split pair, alpha 0.01) flags the smuggled "
                      f"victim in {flags['smuggled']} and the honest one in {flags['honest']} of {a.seeds} seeds. "
                      f"The target classifier scores {s['target_declared']['mean']:.4f} on the declared half.", ""]
        raw.append(r)
        print("\n".join(lines[-(len(ROWS) + 6):]), flush=True)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "tools/smuggling_gap.py " + " ".join(argv if argv is not None else sys.argv[1:])
        out.write_text("\n".join(lines + [f"Command: `.venv/bin/python {cmd.strip()}`", ""]))
        out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
