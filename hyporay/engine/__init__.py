"""The one orchestration engine: grid sweeps and Optuna searches as Ray Tune runs, logged to MLflow.

Sweep scripts (sweeps/*.py) declare a ``SweepDefinition`` (or use a ``SearchDefinition`` from
``hyporay.engine.optuna``) and call ``main``; torch, ray, mlflow and optuna are imported only once the command
line has been read, so ``--help`` answers at once.
"""
from hyporay.engine.definition import Axis, SweepDefinition


def main(defn, argv: list[str] | None = None, configs_dir=None) -> int:
    """Run a sweep or search as its script does; returns the exit status."""
    from hyporay.engine.launch import main as launch_main

    return launch_main(defn, argv, configs_dir)


__all__ = ["Axis", "SweepDefinition", "main"]
