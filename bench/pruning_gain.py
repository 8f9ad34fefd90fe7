"""What Optuna pruning buys the defender-budget search: the same study with pruning and without.

Every study runs the same search (profile, space, trial seed, sampler seed, number of trials, parallelism) on one
local Ray; only ``--pruner`` differs. Printed side by side: trial-epochs spent, best objective reached, trials
pruned, wall time, and the ratio of epochs. Goal: the same best objective within noise for at most half the
epochs. "Noise" is measured, not assumed: the unpruned study's best configuration is retrained with
``--noise-seeds`` other trial seeds, and the spread of its final objective is the yardstick.

    .venv/bin/python bench/pruning_gain.py                       # median and halving vs none, local (~3-4 min)
    .venv/bin/python bench/pruning_gain.py --pruners hyperband,percentile --n-trials 24 --epochs 20

Never fails on a figure (exit 0 unless a study itself fails); the verdict line says whether the goal was met.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _study(workdir: Path, name: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(workdir / "optuna.journal"))))


def _figures(study, epochs: int) -> dict:
    trials = study.trials
    spent = sum(int(t.user_attrs.get("epochs_trained", 0)) for t in trials)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    best = min(done, key=lambda t: t.value) if done else None
    return {"trials": len(trials), "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "failed": sum(t.state.name == "FAIL" for t in trials), "epochs": spent, "full": len(trials) * epochs,
            "best": best.value if best else math.nan, "best_trial": best.number if best else None,
            "best_params": best.params if best else {},
            "nat": best.user_attrs.get("natural_risk", math.nan) if best else math.nan,
            "hyp": best.user_attrs.get("hypocritical_risk", math.nan) if best else math.nan}


def _warm() -> None:
    """A Ray worker's first import of torch, hyporay, Optuna and MLflow (seconds), outside the timed studies."""
    import mlflow  # noqa: F401
    import optuna  # noqa: F401

    import hyporay.experiment  # noqa: F401


def _noise(workdir: Path, base_args: list[str], params: dict, seeds: list[int], profile: str) -> list[float]:
    """The final objective of one configuration retrained with other trial seeds (Ray tasks, in parallel)."""
    import ray

    from hyporay.config import load_config
    from hyporay.engine.launch import plan
    from hyporay.engine.optuna import definition as O
    from hyporay.engine.optuna.space import trial_config
    from hyporay.experiment import load_trial_data

    study = plan(O.BUDGET, base_args, ROOT / "sweeps" / "configs")  # the study's own base trial and objective
    cfg = trial_config(study.base, study.space, params)
    cfg = load_config(cfg, {"device": "cpu", "threads": 1}).model_dump()
    obj = study.objective
    data = ray.put(load_trial_data(load_config(cfg)))

    def one(seed: int, data_):
        from hyporay.experiment import run_trial

        return run_trial({**cfg, "seed": seed}, data=data_)

    task = ray.remote(num_cpus=1)(one)
    return [obj.value(m) for m in ray.get([task.remote(s, data) for s in seeds])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", default="local")
    p.add_argument("--n-trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--milestones", default="auto",
                   help="lr decay epochs (x0.1), comma-separated; auto = 2/3 and 5/6 of the epochs; none = constant "
                        "lr (the local profile's: its final objective then swings by more than the effect searched)")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="sampler seed (every study)")
    p.add_argument("--pruners", default="median,halving", help="pruners each compared with none")
    p.add_argument("--pruner-warmup", type=int, default=2, help="median/percentile: first epoch that may prune")
    p.add_argument("--noise-seeds", type=int, default=2, help="retrain the unpruned best with this many other seeds")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further sweeps/defender_budget.py flags for every study, e.g. --extra --lam-range 1,40")
    a = p.parse_args(argv)

    import ray

    from hyporay.cluster.resources import init_ray
    from hyporay import tracking
    from hyporay.engine.launch import run_command as run
    from hyporay.engine.optuna import definition as O

    if a.milestones == "auto":
        milestones = sorted({round(a.epochs * 2 / 3), round(a.epochs * 5 / 6)} - {0, a.epochs})
    else:
        milestones = [] if a.milestones == "none" else [int(m) for m in a.milestones.split(",")]
    common = ["--profile", a.profile, "--n-trials", str(a.n_trials), "--parallel", str(a.parallel),
              "--seed", str(a.seed), "--set", f"train.epochs={a.epochs}", "--set", f"eval.every={a.eval_every}",
              "--set", f"train.milestones={milestones}", "--pruner-warmup", str(a.pruner_warmup), *a.extra]
    pruners = [x.strip() for x in a.pruners.split(",") if x.strip() and x.strip() != "none"] + ["none"]
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="hyporay-pruning-") as tmp:
        work = Path(tmp)
        old = Path.cwd()
        os.chdir(work)
        log = (work / "studies.log").open("w")
        try:
            init_ray()  # once, and workers warmed up, before any clock starts: every study's wall time is its own
            ray.get([ray.remote(num_cpus=1)(_warm).remote() for _ in range(a.parallel)])
            tracking.open_store(tracking.default_tracking_uri(work), "bench-warm-up")  # the MLflow schema
            for pruner in pruners:
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(log):
                    rc = run(O.BUDGET, [*common, "--pruner", pruner, "--study-name", f"bench-{pruner}"],
                             ROOT / "sweeps" / "configs")
                seconds[pruner] = time.perf_counter() - t0
                if rc != 0:
                    log.flush()
                    print((work / "studies.log").read_text()[-3000:])
                    return rc
                results[pruner] = _figures(_study(work, f"bench-{pruner}"), a.epochs)
            ref = results["none"]
            noise = _noise(work, common, ref["best_params"], [a.seed + 1000 + i for i in range(a.noise_seeds)],
                           a.profile) if a.noise_seeds and ref["best_params"] else []
        finally:
            log.close()
            os.chdir(old)
            if ray.is_initialized():
                ray.shutdown()

    nope = results["none"]
    print(f"defender-budget search, profile {a.profile}: {a.n_trials} trials x {a.epochs} epochs (eval every "
          f"{a.eval_every}, lr x0.1 at {milestones}), {a.parallel} in parallel, TPE seed {a.seed}, same trial seed; "
          f"median/percentile warm-up {a.pruner_warmup}" + (f"; {' '.join(a.extra)}" if a.extra else ""))
    print(f"{'pruner':<10s} {'trial-epochs':>12s} {'of':>5s} {'ratio':>6s} {'pruned':>7s} {'best objective':>15s} "
          f"{'R_hyp(D-)':>10s} {'R_nat':>7s}  {'best params':<16s} {'wall s':>7s}")
    for pruner in pruners:
        r = results[pruner]
        params = " ".join(f"{k}={v:.4g}" for k, v in r["best_params"].items())
        ratio = r["epochs"] / nope["epochs"] if nope["epochs"] else math.nan
        print(f"{pruner:<10s} {r['epochs']:>12d} {r['full']:>5d} {ratio:>6.2f} {r['pruned']:>7d} {r['best']:>15.4f} "
              f"{r['hyp']:>10.3f} {r['nat']:>7.3f}  {params:<16s} {seconds[pruner]:>7.0f}")
    sd = spread = math.nan
    if noise:
        vals = [nope["best"], *noise]
        sd = statistics.stdev(vals)
        spread = max(vals) - min(vals)
        print(f"noise: the unpruned best configuration retrained with {len(noise)} other seed(s): objective "
              f"{', '.join(f'{v:.4f}' for v in vals)} (std {sd:.4f}, range {spread:.4f})")
    for pruner in pruners[:-1]:
        r = results[pruner]
        ratio = r["epochs"] / nope["epochs"] if nope["epochs"] else math.nan
        gap = r["best"] - nope["best"]
        same = gap <= max(2 * sd, spread) if noise else None
        verdict = "n/a" if same is None else "met" if same and ratio <= 0.5 else "not met"
        print(f"{pruner}: epochs ratio {ratio:.2f} ({'<=' if ratio <= 0.5 else '>'} 0.5), best objective {gap:+.4f} "
              f"vs none ({'within' if same else 'outside' if same is not None else 'no'} noise) -> goal {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
