"""Evaluation passes, today's rule vs stopping once an example is decided, on the default sweep's final models.

Trains the default λ sweep's models for one seed (the local profile: digits, MLP, TRADES and THRM over the λ grid,
λ = 0 natural once), then evaluates each final model with the profile's eval attack (PGD-20, l_inf ε=0.1) twice,
with the same generator: today's rule (each attack's final iterate, ``early_stop: null``) and the decided rule
(``early_stop: 0``, ``hyporay.witnesses``). Prints per model the image-passes of each (``hyporay.passes``), their
ratio, the seconds, and the smallest and largest change of any risk (never negative: every risk >= today's).

    python bench/eval_passes.py                 # ~3-6 min on 2 busy cores
    python bench/eval_passes.py --seed 1 --method apgd --steps 100
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
LAMBDAS = [0, 1, 5, 10, 20, 40, 60, 80, 100]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="pgd", choices=("pgd", "apgd"))
    ap.add_argument("--steps", type=int, default=None, help="eval attack steps (default: the profile's, 20)")
    args = ap.parse_args()
    import torch

    from hyporay import metrics as M
    from hyporay import passes
    from hyporay.config import load_config, merge
    from hyporay.experiment import (evaluate_model, load_checkpoint, load_trial_data, model_from_checkpoint,
                                    run_trial)

    torch.set_num_threads(1)
    trial = yaml.safe_load((ROOT / "sweeps" / "configs" / "local.yaml").read_text())["trial"]
    models = [("natural", 0)] + [(t, lam) for t in ("trades", "thrm") for lam in LAMBDAS[1:]]
    print(f"eval passes on the default sweep's final models (local profile, seed {args.seed}); "
          "today = final iterates, decided = stop once decided", flush=True)
    print(f"{'model':14} {'today passes':>13} {'decided':>10} {'ratio':>6} {'today s':>8} {'decided s':>9} "
          f"{'risk change min':>15} {'max':>7}")
    tot_old = tot_new = 0
    worst = math.inf
    for trainer, lam in models:
        cfg = load_config(merge(trial, {"seed": args.seed, "data": {"root": str(ROOT / "data")},
                                        "train": {"trainer": trainer, "lam": float(lam)},
                                        "eval": {"every": trial["train"]["epochs"], "certify": "none"}}))
        spec = cfg.eval.attack
        spec = dataclasses.replace(spec, method=args.method, steps=args.steps or spec.steps,
                                   score="margin" if args.method == "apgd" else spec.score)
        with tempfile.TemporaryDirectory(prefix="hyporay-evalpasses-") as tmp:
            run_trial(cfg, checkpoint_dir=tmp)
            model, _ = model_from_checkpoint(load_checkpoint(tmp))
        ds = load_trial_data(cfg)
        out = {}
        for rule, stop in (("today", None), ("decided", 0)):
            t0 = time.perf_counter()
            with passes.counting() as spent:
                m = evaluate_model(cfg, model, ds, torch.device("cpu"), epoch=cfg.train.epochs,
                                   spec=dataclasses.replace(spec, early_stop=stop), certify="none")
            out[rule] = (m, spent.total, time.perf_counter() - t0)
        (old, p_old, s_old), (new, p_new, s_new) = out["today"], out["decided"]
        diffs = [new[k] - old[k] for k in M.RISK_METRICS if not (math.isnan(new[k]) or math.isnan(old[k]))]
        worst = min(worst, min(diffs))
        tot_old, tot_new = tot_old + p_old, tot_new + p_new
        name = "natural" if lam == 0 else f"{trainer} λ={lam:g}"
        print(f"{name:14} {p_old:13d} {p_new:10d} {p_new / p_old:6.2f} {s_old:8.1f} {s_new:9.1f} "
              f"{min(diffs):+15.4f} {max(diffs):+7.4f}", flush=True)
    print(f"\nall {len(models)} models: {tot_old} -> {tot_new} image-passes, {tot_new / tot_old:.2f} x today's "
          f"(goal <= 0.6); smallest risk change {worst:+.4f} (must be >= 0)")
    print(f"eval attack: {dataclasses.replace(spec, early_stop=0).describe()}")
    return 0 if worst >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
