"""What the sweep engine (Ray Tune + MLflow) costs on top of the training it runs, measured side by side.

Three runs of the same plan (the trials ``sweeps/thrm_lambda.py`` plans for these flags, λ=0 once):
  serial  every planned trial run one after another with ``run_trial`` in this process (no Ray, no MLflow;
          imports already paid);
  sweep   the whole command ``python sweeps/thrm_lambda.py ...`` in a fresh directory (interpreter start,
          imports, Ray start, a fresh SQLite MLflow store, the trials, the frontier, shutdown);
  one     the same command with only its first trial: its wall-clock minus one serial trial is the fixed
          start-up + finish cost of a sweep, and (sweep - one) is what the other trials add.

Prints the ratio sweep / serial (ideal with C trials at a time: 1/C plus start-up) and splits the overhead
into the fixed part (paid once per sweep) and the part per trial (worker hand-off, MLflow run, reports):
    per-trial overhead = ((sweep - one) x C - serial x (N-1)/N) / (N-1)
Usage:
    python bench/sweep_overhead.py [--lambdas 0,1,5] [--epochs 3] [--seeds 1] [--eval-every 1] [--repeat 1]
    # the default sweep (make run) as it runs: 51 trials of 20 epochs
    python bench/sweep_overhead.py --lambdas 0,1,5,10,20,40,60,80,100 --seeds 3 --epochs 20 --eval-every 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sweep_argv(args, lambdas: str, trainers: str) -> list[str]:
    return ["--profile", "local", "--lambdas", lambdas, "--trainers", trainers, "--seeds", str(args.seeds),
            "--set", f"train.epochs={args.epochs}", "--set", f"eval.every={args.eval_every}",
            "--set", "eval.certify=none", "--cpus-per-trial", "1"]


def timed_sweep(argv: list[str]) -> float:
    """Wall-clock of the whole sweep command in a fresh directory (its own Ray, MLflow store and data cache)."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "sweeps/thrm_lambda.py"), *argv], cwd=tmp, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(argv)}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lambdas", default="0,1,5")
    ap.add_argument("--trainers", default="trades,thrm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=1, help="epochs between evaluations (the local profile: 5)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side (median reported)")
    args = ap.parse_args()
    import runpy

    import torch

    from hyporay.engine.launch import plan
    from hyporay.experiment import run_trial

    SWEEP = runpy.run_path(str(ROOT / "sweeps/thrm_lambda.py"))["SWEEP"]

    torch.set_num_threads(1)
    argv = sweep_argv(args, args.lambdas, args.trainers)
    planned = plan(SWEEP, argv, ROOT / "sweeps/configs").planned
    n = len(planned)
    if n < 2:
        sys.exit("plan at least two trials (more --lambdas or --trainers)")
    first = planned[0].config["train"]
    one_argv = sweep_argv(args, f"{first['lam']:g}", first["trainer"])

    serial, sweep, one = [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            for p in planned:
                run_trial(dict(p.config, data=dict(p.config["data"], root=str(Path(tmp) / "data"))))
            serial.append(time.perf_counter() - t0)
        sweep.append(timed_sweep(argv))
        one.append(timed_sweep(one_argv))
    serial_s, sweep_s, one_s = (statistics.median(v) for v in (serial, sweep, one))
    conc = max(1, min(os.cpu_count() or 1, n))
    per_trial = serial_s / n
    fixed = one_s - per_trial
    marginal = ((sweep_s - one_s) * conc - per_trial * (n - 1)) / (n - 1)
    trainers = sorted({p.config["train"]["trainer"] for p in planned})
    print(f"{n} planned trials ({', '.join(trainers)}; λ in {args.lambdas}, λ=0 once; {args.seeds} seed(s); "
          f"{args.epochs} epochs each, digits MLP; median of {args.repeat})")
    print(f"serial, one process, no Ray/MLflow:   {serial_s:7.1f} s  ({per_trial:.2f} s per trial)")
    print(f"sweep, whole command, {conc} at a time:  {sweep_s:7.1f} s")
    print(f"ratio sweep / serial:                 {sweep_s / serial_s:7.2f}  (ideal {1 / conc:.2f} with no overhead)")
    print(f"sweep of its first trial alone:       {one_s:7.1f} s")
    print(f"  fixed cost per sweep:               {fixed:7.1f} s  (interpreter, imports, Ray and MLflow start, "
          "frontier, shutdown)")
    print(f"  overhead per further trial:         {marginal:7.2f} s  (worker hand-off, MLflow run, reports)")
    print(f"trials needed to amortise the fixed cost to 0.65: "
          f"{_break_even(per_trial, fixed, marginal, conc)}")


def _break_even(per_trial: float, fixed: float, marginal: float, conc: int) -> str:
    """Smallest N with (fixed + N (per_trial + marginal) / conc) / (N per_trial) <= 0.65, if any."""
    slope = (per_trial + marginal) / conc - 0.65 * per_trial
    if slope >= 0:
        return "never (the per-trial overhead alone exceeds the goal)"
    return f"{int(fixed / -slope) + 1} trials of this length"


if __name__ == "__main__":
    main()
