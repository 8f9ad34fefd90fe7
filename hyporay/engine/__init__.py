"""The one orchestration engine: grid sweeps and Optuna searches as Ray Tune runs, logged to MLflow.

From Python (a notebook), ``run`` runs one and returns its runs table::

    from hyporay.engine import run
    df = run("thrm_lambda", profile="local", lambdas=[0, 10], seeds=1)

Sweep scripts (sweeps/*.py) call ``main`` with a definition of ``hyporay.sweeps`` (a ``SweepDefinition``, or a
``SearchDefinition`` of ``hyporay.engine.optuna``); torch, ray, mlflow and optuna are imported only once the
command line has been read, so ``--help`` answers at once.
"""
from hyporay.engine.definition import Axis, SweepDefinition


def main(defn, argv: list[str] | None = None, configs_dir=None) -> int:
    """Run a sweep or search as its script does; returns the exit status."""
    from hyporay.engine.launch import main as launch_main

    return launch_main(defn, argv, configs_dir)


def run(definition, profile: str = "auto", **options):
    """Run a grid sweep or an Optuna search from Python and return its runs table (pandas; what
    ``hyporay.analysis`` takes). ``definition``: a ``SweepDefinition`` / ``SearchDefinition`` or the name of one in
    ``hyporay.sweeps.SWEEPS`` ("thrm_lambda", "defender_budget", ...). ``options``: the script's flags as keywords
    (``lambdas=[0, 10]``, ``seeds=3``, ``set={"train.epochs": 5}``, ``tracking_uri=...``, ``n_trials=8``); the
    numbers are those the script gives for the same flags. ``df.attrs``: status (the script's exit status: 0 done,
    1 some trial failed, 130 interrupted), tracking_uri, experiment_id, parent_run_id."""
    from hyporay.engine.launch import run_python

    if isinstance(definition, str):
        from hyporay.config import ConfigError
        from hyporay.sweeps import SWEEPS

        if definition not in SWEEPS:
            raise ConfigError(f"definition: unknown {definition!r}; known: {', '.join(sorted(SWEEPS))}")
        definition = SWEEPS[definition]
    return run_python(definition, profile=profile, **options)


__all__ = ["Axis", "SweepDefinition", "main", "run"]
