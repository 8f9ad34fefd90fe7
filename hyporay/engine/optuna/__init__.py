"""Optuna searches on the engine, one folder as Ray Tune's ``tune/search/optuna/``: what a search is
(``definition``), its space and flags (``space``), its storage (``storage``), the Tune searcher and pruning
scheduler over a study (``tune``), the plan the driver runs (``plan``) and the study's publication (``report``)."""
from hyporay.engine.optuna.definition import BUDGET, PARETO, SearchDefinition

__all__ = ["BUDGET", "PARETO", "SearchDefinition"]
