"""One colour per trainer in every picture: frontier.png, frontier.html, the convergence curves and the MLflow
trade-off chart (matplotlib's tab10 hues). Torch-free."""
from __future__ import annotations

TRAINER_COLOURS = {"natural": "#2ca02c", "pgd_at": "#9467bd", "trades": "#1f77b4", "thrm": "#d62728"}
OTHER = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def colour(trainer: str, index: int = 0) -> str:
    """The trainer's colour; a trainer outside the table gets the ``index``-th of the others."""
    return TRAINER_COLOURS.get(trainer, OTHER[index % len(OTHER)])
