"""What an Optuna search is (``SearchDefinition``; the two of hyporay: ``BUDGET`` and ``PARETO``), its per-profile
defaults, the names it records, its objective, and the pruner and sampler factories. Light: optuna is imported when
a factory is called.

- ``defender_budget``: minimise ``hypocritical_risk + penalty * max(0, natural_risk - max_natural_risk)`` over the
  training eps (optionally λ and the attack steps), one trainer, pruned after every evaluated epoch. A penalty, not
  a sampler constraint: the pruner compares per-epoch values and must see the accuracy too.
- ``pareto``: minimise (natural_risk, hypocritical_risk) with NSGA-II over trainer, λ and eps; Optuna cannot prune
  multi-objective studies.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from hyporay.tracking.tags import OPTUNA_STATE_TAG as STATE_TAG
from hyporay.tracking.tags import OPTUNA_TRIAL_TAG as TRIAL_NUMBER_TAG

OBJECTIVE = "objective"                 # metric and Optuna value of the budget search
EPOCHS_TRAINED = "epochs_trained"       # per trial: epochs it really trained (pruned trials: fewer)
STUDY_TAG = "optuna.study_name"
STORAGE_TAG = "optuna.storage"
LABEL_KEY = "train.attack.eps"          # labels a study's points (trade-off view, `hyporay frontier`)
ROLE_STUDY = "study"                    # hyporay.role of a study's parent run (a grid sweep's is "sweep")
DRIVER_ATTR = "hyporay.driver"          # trial user attr: {"host", "pid"} of the driver that asked it
PRUNERS = ("median", "percentile", "halving", "hyperband", "none")
SAMPLERS = ("tpe", "random")
STATES = ("COMPLETE", "PRUNED", "FAIL")
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")

# Search-space defaults per profile (the profile YAMLs hold the trial settings; these are the search's own).
# Unknown profiles take "local"'s, with the eps range derived from the profile's training eps.
SEARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "local": {  # digits: eval eps 0.1; 20 epochs, evaluated every 5
        "eps": (0.005, 0.4), "lam": 6.0, "lam_range": (0.5, 80.0), "steps_range": (2, 20),
        "trainers": ("trades", "thrm"), "max_natural_risk": 0.15, "n_trials": 16, "sampler_startup": 5,
        "pruner_startup": 3, "pruner_warmup": 4, "population": 8,
    },
    "paper": {  # CIFAR-10: eval eps 8/255; 110 epochs, evaluated every 10
        "eps": (1 / 255, 16 / 255), "lam": 6.0, "lam_range": (1.0, 100.0), "steps_range": (3, 10),
        "trainers": ("trades", "thrm"), "max_natural_risk": 0.20, "n_trials": 32, "sampler_startup": 8,
        "pruner_startup": 4, "pruner_warmup": 20, "population": 16,
    },
}


@dataclass(frozen=True)
class SearchDefinition:
    name: str                  # script name; default experiment "<name>-<profile>"
    description: str
    multi_objective: bool      # False: penalised objective, pruned; True: (R_nat, R_hyp), NSGA-II, no pruning
    # trial fields every trial of this search gets (dotted key -> value), over the profile's trial section
    defaults: dict[str, Any] = field(default_factory=dict)


BUDGET = SearchDefinition(
    "defender_budget",
    "Optuna search of the defender's training budget (eps; optionally lambda and attack steps) for the smallest "
    "hypocritical risk under a natural-risk ceiling, with real Optuna pruning, trials on Ray Tune",
    multi_objective=False, defaults={"train.trainer": "thrm", "train.attack.step_size": None})
PARETO = SearchDefinition(
    "pareto",
    "NSGA-II search of the natural-vs-hypocritical trade-off over trainer, lambda and eps; logs the Pareto set",
    multi_objective=True, defaults={"train.attack.step_size": None})


# --- objective ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Objective:
    """``hypocritical_risk + penalty * max(0, natural_risk - max_natural_risk)`` (budget search)."""

    max_natural_risk: float
    penalty: float = 10.0

    def value(self, metrics: dict) -> float:
        from hyporay import metrics as M

        nat = float(metrics[M.NATURAL_RISK])
        return hypocritical(metrics) + self.penalty * max(0.0, nat - self.max_natural_risk)

    def feasible(self, metrics: dict) -> bool:
        from hyporay import metrics as M

        return float(metrics[M.NATURAL_RISK]) <= self.max_natural_risk


def hypocritical(metrics: dict) -> float:
    """R_hyp(D-); a model without mistakes (empty D-, NaN with no mistake) counts as 0: nothing to pass off."""
    from hyporay import metrics as M

    v = float(metrics.get(M.HYPOCRITICAL_RISK, math.nan))
    return 0.0 if math.isnan(v) and float(metrics.get(M.N_MISCLASSIFIED, 1)) == 0 else v


def objective_values(metrics: dict, objective: Objective | None) -> list[float] | None:
    """The Optuna value(s) of an evaluation: [objective] or [R_nat, R_hyp(D-)]; None when the numbers are not
    results (a degenerate model, missing risks): such a trial is left out of the study (FAIL, with the reason)."""
    from hyporay import metrics as M

    if metrics.get(M.DEGENERATE) or M.NATURAL_RISK not in metrics:
        return None
    nat, hyp = float(metrics[M.NATURAL_RISK]), hypocritical(metrics)
    if math.isnan(nat) or math.isnan(hyp):
        return None
    return [nat, hyp] if objective is None else [objective.value(metrics)]


# --- pruners and samplers -------------------------------------------------------------------------------

def make_pruner(spec: dict):
    """An Optuna pruner from a plain dict (recorded with the study's MLflow parent)."""
    import optuna

    from hyporay.config import ConfigError

    name = spec.get("name", "median")
    startup, warmup = int(spec.get("startup", 5)), int(spec.get("warmup", 0))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(float(spec.get("percentile", 25.0)), n_startup_trials=startup,
                                               n_warmup_steps=warmup)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.get("min_resource", "auto"),
                                                      reduction_factor=int(spec.get("reduction_factor", 3)))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=int(spec.get("min_resource") or 1),
                                              max_resource=spec.get("max_resource", "auto"),
                                              reduction_factor=int(spec.get("reduction_factor", 3)))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: unknown {name!r}; known: {', '.join(PRUNERS)}")


def pruner_spec(args, defaults: dict, trial: dict) -> dict:
    """The pruner's settings; resources (halving, hyperband) in epochs: the first evaluation to the last."""
    from hyporay.config import ConfigError

    every, epochs = int(trial["eval"]["every"]), int(trial["train"]["epochs"])
    spec: dict[str, Any] = {"name": args.pruner}
    if args.pruner in ("median", "percentile"):
        spec["startup"] = defaults["pruner_startup"] if args.pruner_startup is None else args.pruner_startup
        spec["warmup"] = defaults["pruner_warmup"] if args.pruner_warmup is None else args.pruner_warmup
    if args.pruner == "percentile":
        if not 0 < args.percentile < 100:
            raise ConfigError(f"--percentile: must be in (0, 100), got {args.percentile:g}")
        spec["percentile"] = args.percentile
    if args.pruner in ("halving", "hyperband"):
        spec.update(min_resource=min(every, epochs) or 1, reduction_factor=args.reduction_factor)
        if args.pruner == "hyperband":
            spec["max_resource"] = max(epochs, 1)
    return spec


def describe_pruner(spec: dict) -> str:
    extra = {k: v for k, v in spec.items() if k != "name"}
    return spec["name"] + ("(" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")" if extra else "")


def make_sampler(defn: SearchDefinition, name: str, seed: int, startup: int, population: int):
    import optuna

    if defn.multi_objective:  # Optuna 5's default multi-objective sampler is TPE: NSGA-II explicitly
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


__all__ = ["STATE_TAG", "TRIAL_NUMBER_TAG"]
