"""An Optuna study driving Ray Tune: a Tune ``Searcher`` that asks the study for each trial (ask/tell on the study
in its storage) and a Tune scheduler that asks the study's pruner after every evaluated epoch and stops the trial
when it says prune. Both run in the driver, through public Optuna and Tune API only (Tune's own ``OptunaSearch``
never calls a pruner: it hard-codes ``NopPruner``). The study records COMPLETE, PRUNED or FAIL; a trial whose
numbers are not results (diverged, degenerate) is FAIL with the reason, so the study's objective never sees it.
"""
from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from hyporay.engine.optuna.definition import DRIVER_ATTR, EPOCHS_TRAINED, Objective, objective_values


@dataclass
class Asked:
    """One Optuna trial handed to Tune: its ``optuna.trial.Trial``, its config, and what happened to it."""

    trial: object
    plan: dict
    state: str = "RUNNING"          # RUNNING / COMPLETE / PRUNED / FAIL
    reason: str = ""
    epochs: int = 0
    values: list[float] | None = None
    metrics: dict = field(default_factory=dict)
    run_id: str = ""


LIVE = ("study", "make_plan", "asked", "searcher", "scheduler")  # attributes holding live Optuna objects


class OptunaSearcher(Searcher):
    """Tune trials from ``study.ask``; their outcomes told back with ``study.tell``.

    ``make_plan(optuna_trial) -> dict`` turns an asked trial's parameters into the engine's plan entry (trial
    config, key, name, tags). ``n_trials``: how many to ask in this run.
    """

    def __init__(self, study, distributions: dict, make_plan, n_trials: int, objective: Objective | None):
        super().__init__()
        self.study, self.distributions, self.make_plan = study, distributions, make_plan
        self.n_trials, self.objective = n_trials, objective
        self.asked: dict[str, Asked] = {}
        self.driver = {"host": socket.gethostname(), "pid": os.getpid()}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def __getstate__(self) -> dict:
        """Without the live study: Tune pickles its search algorithm with the run (for ``Tuner.restore``, which a
        study never uses: it continues from its Optuna storage), and Optuna 5.1's NSGA-II sampler holds a lock."""
        return {k: v for k, v in self.__dict__.items() if k not in LIVE}

    def suggest(self, trial_id: str):
        if len(self.asked) >= self.n_trials:
            return Searcher.FINISHED
        t = self.study.ask(self.distributions)
        t.set_user_attr(DRIVER_ATTR, self.driver)
        try:
            plan = self.make_plan(t)
        except Exception:  # both ends of every range were validated; anything else must not leave it RUNNING
            from optuna.trial import TrialState

            self.study.tell(t, state=TrialState.FAIL)
            raise
        self.asked[trial_id] = Asked(t, plan)
        return {"plan": plan}

    def result(self, trial_id: str, result: dict) -> list[float] | None:
        """Record an evaluation of a trial; its Optuna value(s), or None when it is not a result."""
        a = self.asked.get(trial_id)
        if a is None:
            return None
        if result.get("mlflow_run_id") and not a.run_id:  # the trial's MLflow run, on the study's trial
            a.run_id = str(result["mlflow_run_id"])
            a.trial.set_user_attr("mlflow_run_id", a.run_id)
        if "epoch" not in result or "natural_risk" not in result:
            return None
        a.epochs, a.metrics = int(result["epoch"]), dict(result)
        a.values = objective_values(result, self.objective)
        return a.values

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        a = self.asked.get(trial_id)
        if a is None or a.state in ("COMPLETE", "PRUNED", "FAIL"):
            return
        if result:
            self.result(trial_id, result)
        a.trial.set_user_attr(EPOCHS_TRAINED, a.epochs)
        if a.metrics:
            a.trial.set_user_attr("natural_risk", float(a.metrics.get("natural_risk", math.nan)))
            a.trial.set_user_attr("hypocritical_risk", float(a.metrics.get("hypocritical_risk", math.nan)))
            if self.objective is not None and a.values is not None:
                a.trial.set_user_attr("feasible", self.objective.feasible(a.metrics))
        if a.state == "PRUNING":
            a.state = "PRUNED"
            self.study.tell(a.trial, state=TrialState.PRUNED)
            return
        if error or (result or {}).get("diverged") or a.values is None:
            a.state = "FAIL"
            a.reason = a.reason or ("its worker failed (retries exhausted)" if error
                                    else "diverged" if (result or {}).get("diverged")
                                    else "degenerate model: no result" if a.metrics.get("degenerate")
                                    else "no evaluation reported")
            a.trial.set_user_attr("fail_reason", a.reason)
            self.study.tell(a.trial, state=TrialState.FAIL)
            return
        a.state = "COMPLETE"
        self.study.tell(a.trial, a.values if len(a.values) > 1 else a.values[0])

    def fail_unfinished(self, reason: str) -> list[Asked]:
        """End every asked trial still RUNNING (an interrupted run) as FAIL; returns them."""
        from optuna.trial import TrialState

        left = [a for a in self.asked.values() if a.state in ("RUNNING", "PRUNING")]
        for a in left:
            a.state, a.reason = "FAIL", reason
            a.trial.set_user_attr("fail_reason", reason)
            self.study.tell(a.trial, state=TrialState.FAIL)
        return left


class OptunaPruningScheduler(FIFOScheduler):
    """After every evaluated epoch: report the trial's objective to its Optuna trial and stop it when the study's
    pruner says prune (not at its last epoch: pruning then saves nothing). FIFO otherwise."""

    def __init__(self, searcher: OptunaSearcher, last_epoch: int):
        super().__init__()
        self.searcher, self.last_epoch = searcher, last_epoch

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        values = self.searcher.result(trial.trial_id, result)
        a = self.searcher.asked.get(trial.trial_id)
        if a is None or values is None or len(values) != 1:
            return TrialScheduler.CONTINUE
        epoch = int(result["epoch"])
        a.trial.report(values[0], epoch)
        if epoch < self.last_epoch and a.trial.should_prune():
            a.state = "PRUNING"
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE
