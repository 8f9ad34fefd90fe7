"""The one orchestration engine: grid sweeps and Optuna searches as Ray Tune runs, logged to MLflow.

Sweep scripts (sweeps/*.py) declare a ``SweepDefinition`` and call ``main``; imports of ray, mlflow and optuna
happen inside, lazily, so ``--help`` and the core stay light.
"""
from hyporay.engine.driver import Axis, SweepDefinition, main

__all__ = ["Axis", "SweepDefinition", "main"]
