"""Orchestration: Ray Tune sweeps, MLflow logging, frontiers (imports ray/mlflow lazily)."""
from hyporay.sweep.engine import Axis, SweepDefinition, main

__all__ = ["Axis", "SweepDefinition", "main"]
