"""Wall-clock of a Ray Tune sweep of N trials vs the same trials run serially in one process without Ray.

Prints both wall-clocks, their ratio, and the fixed cost per trial that Ray Tune + MLflow add:
    overhead per trial = (sweep wall-clock x concurrent trials - serial total) / N
(Ray's start-up included, amortised). On a 2-core machine two trials run at once, so a ratio below 1
means the parallelism pays for the overhead. Usage:
    python bench/sweep_overhead.py [--lambdas 0,1,5] [--epochs 3] [--seeds 1]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lambdas", default="0,1,5")
    ap.add_argument("--trainers", default="trades,thrm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    import torch
    import yaml

    from hyporay.config import merge
    from hyporay.experiment import run_trial

    torch.set_num_threads(1)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    trainers = args.trainers.split(",")
    base = yaml.safe_load((ROOT / "sweeps/configs/local.yaml").read_text())["trial"]
    over = {"train": {"epochs": args.epochs}, "eval": {"every": 1}, "threads": 1}
    with tempfile.TemporaryDirectory() as tmp:
        base = merge(merge(base, over), {"data": {"root": str(Path(tmp) / "data")}})
        n = len(lambdas) * len(trainers) * args.seeds
        t0 = time.perf_counter()
        for trainer in trainers:
            for lam in lambdas:
                for seed in range(args.seeds):
                    run_trial(merge(base, {"seed": seed, "train": {"trainer": trainer, "lam": lam}}))
        serial = time.perf_counter() - t0

        cmd = [sys.executable, str(ROOT / "sweeps/thrm_lambda.py"), "--profile", "local", "--lambdas", args.lambdas,
               "--trainers", args.trainers, "--seeds", str(args.seeds), "--set", f"train.epochs={args.epochs}",
               "--set", "eval.every=1", "--cpus-per-trial", "1"]
        env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        sweep = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"sweep failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    conc = max(1, min(os.cpu_count() or 1, n))
    print(f"{n} trials ({len(trainers)} trainers x {len(lambdas)} lambdas x {args.seeds} seeds, "
          f"{args.epochs} epochs each, digits MLP)")
    print(f"serial, one process, no Ray/MLflow: {serial:7.1f} s  ({serial / n:.2f} s per trial)")
    print(f"Ray Tune sweep + MLflow (whole cmd): {sweep:7.1f} s  ({conc} trials at a time)")
    print(f"ratio sweep / serial:                {sweep / serial:7.2f}")
    print(f"fixed overhead per trial:            {(sweep * conc - serial) / n:7.2f} s "
          "(Ray start-up, worker processes, imports, MLflow runs; amortised)")


if __name__ == "__main__":
    main()
