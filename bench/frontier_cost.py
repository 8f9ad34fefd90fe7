"""The price of a frontier: today's training attack vs cheaper ones, every model judged by one strong evaluation.

For TRADES and THRM over the default λ grid and several seeds (the local profile: digits, MLP, l_inf ε=0.1,
20 epochs), each training setting trains every (λ, seed); every final model is then evaluated the same strong
way: APGD with the margin score, 100 steps, stopping once an example is decided (``hyporay.witnesses``), on the
profile's test split. λ = 0 is natural training, the same for every trainer and setting: trained once per seed.
Per trainer and setting it prints the training passes (image-passes, forward + backward, attacks included;
counted by ``hyporay.passes``), training wall time, and the hypervolume of the mean front (natural risk,
R_hyp(D-), both minimised, reference (1, 1)) with a percentile bootstrap interval over seeds; the verdict per
setting: does its hypervolume lie inside today's interval (or above it: a larger hypervolume is a better front; below
it the setting misses), at what share of today's passes.

    python bench/frontier_cost.py                       # 3 seeds, 2 processes; ~25-40 min on 2 busy cores
    python bench/frontier_cost.py --seeds 5 --jobs 4 --out /tmp/frontier_cost.json

Results are cached in --out (one entry per trained model): a rerun only trains what is missing.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
LAMBDAS = [0, 1, 5, 10, 20, 40, 60, 80, 100]  # the default grid (sweeps/configs/local.yaml, the paper's Fig. 4)
TRAINERS = ("trades", "thrm")
# train.attack overrides of each setting ("today": the profile's 10 steps of ε/4)
SETTINGS = {
    "today": {},
    "fat2": {"early_stop": 2},                      # FAT's rule: stop 2 steps after the first success
    "steps3": {"steps": 3, "step_size": 0.05},      # 3 steps of ε/2 instead of 10 of ε/4
}
STRONG = {"method": "apgd", "score": "margin", "steps": 100, "early_stop": 0}


def _trial(args: tuple) -> dict:
    trainer, setting, lam, seed = args
    import torch

    from hyporay.config import load_config, merge
    from hyporay.experiment import run_trial

    torch.set_num_threads(1)
    trial = yaml.safe_load((ROOT / "sweeps" / "configs" / "local.yaml").read_text())["trial"]
    epochs = trial["train"]["epochs"]
    cfg = load_config(merge(trial, {
        "seed": seed, "data": {"root": str(ROOT / "data")},
        "train": {"trainer": trainer, "lam": float(lam), "attack": SETTINGS[setting]},
        "eval": {"every": epochs, "certify": "none", "attack": STRONG}}))
    t0 = time.perf_counter()
    m = run_trial(cfg)
    return {"key": f"{trainer}/{setting}/{lam}/{seed}", "train_passes": m["train_passes"],
            "eval_passes": m["eval_passes"], "train_seconds": m["train_seconds"],
            "wall_seconds": time.perf_counter() - t0,
            "natural_risk": m["natural_risk"], "hypocritical_risk": m["hypocritical_risk"],
            "degenerate": m.get("degenerate", 0.0)}


def _plan(seeds: int) -> list[tuple]:
    todo = [("natural", "today", 0, s) for s in range(seeds)]
    todo += [(t, name, lam, s) for t in TRAINERS for name in SETTINGS for lam in LAMBDAS[1:] for s in range(seeds)]
    return todo


def _row(res: dict, trainer: str, setting: str, lam, seed: int) -> dict:
    return res[f"natural/today/0/{seed}"] if lam == 0 else res[f"{trainer}/{setting}/{lam}/{seed}"]


def _front(res, trainer, setting, seeds) -> np.ndarray:
    """seeds x λ x (natural risk, R_hyp(D-))."""
    return np.array([[[_row(res, trainer, setting, lam, s)[k] for k in ("natural_risk", "hypocritical_risk")]
                      for lam in LAMBDAS] for s in range(seeds)], dtype=float)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "data" / "bench" / "frontier_cost.json"))
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    args = ap.parse_args()
    if args.seeds < 3:
        print("--seeds: need at least 3 (the verdict rests on a bootstrap interval over seeds)")
        return 2
    from hyporay.analysis.stats import bootstrap_ci, hypervolume_2d

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(out.read_text()) if out.is_file() else {}
    todo = [t for t in _plan(args.seeds) if "/".join(map(str, t)) not in res]
    print(f"frontier_cost: {len(_plan(args.seeds))} models ({len(todo)} to train), {args.jobs} processes; "
          f"strong evaluation: {STRONG}", flush=True)
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(args.jobs) as pool:
        for i, r in enumerate(pool.map(_trial, todo), 1):
            res[r["key"]] = r
            out.write_text(json.dumps(res, indent=1))
            if i % 10 == 0 or i == len(todo):
                print(f"  {i}/{len(todo)} trained ({time.perf_counter() - t0:.0f}s)", flush=True)
    bad = [k for k, r in res.items() if r["degenerate"]]
    if bad:
        print(f"degenerate models (their points are NaN, never results): {', '.join(bad)}")

    def hv_ci(front):
        return bootstrap_ci(lambda idx: hypervolume_2d(np.nanmean(front[idx], axis=0)), len(front),
                            n_boot=args.boot)

    print(f"\n{'trainer':8} {'setting':8} {'train passes':>14} {'x today':>8} {'train s':>8} "
          f"{'HV mean front':>14} {'95% interval over seeds':>26}  verdict")
    totals: dict[str, float] = {}
    adopt: dict[str, list[str]] = {}
    for trainer in TRAINERS:
        base = None
        for setting in SETTINGS:
            rows = [_row(res, trainer, setting, lam, s) for lam in LAMBDAS for s in range(args.seeds)]
            passes = sum(r["train_passes"] for r in rows)
            secs = sum(r["train_seconds"] for r in rows)
            totals[setting] = totals.get(setting, 0.0) + passes
            est, lo, hi = hv_ci(_front(res, trainer, setting, args.seeds))
            if setting == "today":
                base = (passes, est, lo, hi)
                verdict = "(reference)"
            else:
                where = "below" if est < base[2] else "above" if est > base[3] else "inside"
                inside = where != "below"  # a larger hypervolume is a better front: above the interval holds too
                verdict = f"{'HOLDS' if inside else 'MISSES'}: HV {where} today's [{base[2]:.4f}, {base[3]:.4f}]"
                if inside:
                    adopt.setdefault(setting, []).append(trainer)
            print(f"{trainer:8} {setting:8} {passes:14.4g} {passes / base[0]:8.2f} {secs:8.0f} {est:14.4f} "
                  f"{'[' + f'{lo:.4f}, {hi:.4f}' + ']':>26}  {verdict}")
    print("\nwhole default sweep (both trainers, λ grid, every seed; λ = 0 counted once per trainer):")
    for setting, total in totals.items():
        print(f"  {setting:8} {total:14.4g} training passes  {total / totals['today']:.2f} x today")
    print("\nverdict:")
    for setting in SETTINGS:
        if setting == "today":
            continue
        held = adopt.get(setting, [])
        what = ("holds for both trainers: a profile default candidate" if len(held) == len(TRAINERS)
                else f"holds for {', '.join(held)} only: a documented option there" if held
                else "misses for both trainers: not adopted")
        print(f"  {setting:8} {totals[setting] / totals['today']:.2f} x today's passes; {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
