"""An Optuna search on the engine (the plan ``hyporay.engine.launch`` hands the driver for a ``SearchDefinition``): the study opened (or continued) in its storage, a seeded sampler proposing the
trials (``OptunaSearcher``), the study's pruner stopping them (``OptunaPruningScheduler``), the same Tune trials,
console, resources, retries and MLflow child runs as a grid sweep, and the study's publication at the end."""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import asdict
from pathlib import Path

from ray.tune import Callback

from hyporay import tracking
from hyporay.engine import publish
from hyporay.engine.optuna import report
from hyporay.engine.optuna.definition import (
    DRIVER_ATTR,
    EPOCHS_TRAINED,
    LABEL_KEY,
    ROLE_STUDY,
    SEARCH_DEFAULTS,
    STATE_TAG,
    STORAGE_TAG,
    STUDY_NAME,
    STUDY_TAG,
    TRIAL_NUMBER_TAG,
    Objective,
    describe_pruner,
    make_pruner,
    make_sampler,
    pruner_spec,
)
from hyporay.engine.optuna.space import base_overrides, build_space, search_defaults, trial_config
from hyporay.engine.optuna.storage import StorageError, open_storage, resolve_storage, storage_kind
from hyporay.engine.output import say
from hyporay.engine.trials import load_and_check, with_plugins


class RunCloser(Callback):
    """When Tune ends a trial, its MLflow run gets the study's verdict: tag ``optuna_state`` (COMPLETE / PRUNED /
    FAIL, with ``fail_reason``), metric ``epochs_trained``, and an end for a run the pruner stopped mid-way."""

    def __init__(self, searcher, tracking_uri: str):
        self.searcher, self.tracking_uri = searcher, tracking_uri

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial)

    def _close(self, trial) -> None:
        a = self.searcher.asked.get(trial.trial_id)
        run_id = (a.run_id if a else "") or (trial.last_result or {}).get("mlflow_run_id")
        if a is None or not run_id:
            return
        close(tracking.client(self.tracking_uri), run_id, a.state, a.reason, a.epochs)


def close(c, run_id: str, state: str, reason: str, epochs: int) -> None:
    tracking.set_tags(c, run_id, {STATE_TAG: state, **({"fail_reason": reason[:500]} if reason else {})})
    tracking.log_metrics(c, run_id, {EPOCHS_TRAINED: epochs}, step=epochs)
    if tracking.retry(c.get_run, run_id).info.status == "RUNNING":  # pruned mid-way, or interrupted
        tracking.retry(c.set_terminated, run_id, "FINISHED" if state in ("COMPLETE", "PRUNED") else "FAILED")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StudyPlan:
    """The plan of a ``SearchDefinition`` (see the module doc); ``driver``: the ``Driver`` that runs it."""

    def __init__(self, driver):
        self.d, self.defn, self.args = driver, driver.defn, driver.args
        self.study = None

    def __getstate__(self) -> dict:
        """Without the live study (see ``OptunaSearcher.__getstate__``): Tune pickles the console that holds it."""
        from hyporay.engine.optuna.tune import LIVE

        return {k: v for k, v in self.__dict__.items() if k not in LIVE}

    # --- before anything starts -----------------------------------------------------------------------------
    def check_inputs(self) -> None:
        from hyporay.config import ConfigError, parse_overrides

        args = self.args
        name = args.study_name or (args.resume if args.resume not in (None, "latest") else None)
        if name is not None and not STUDY_NAME.match(name):
            raise ConfigError(f"--study-name: {name!r}: use letters, digits and _ . : - (at most 200)")
        build_space(self.defn, args, SEARCH_DEFAULTS["local"])  # flag errors now; the profile's defaults later
        parse_overrides(args.set)
        self.storage = resolve_storage(args.storage, self.d.workdir)
        if storage_kind(self.storage) != "journal" and not args.dry_run:
            open_storage(self.storage)  # connects: a wrong URL fails here, in one line
        elif storage_kind(self.storage) == "journal" and not Path(self.storage).parent.is_dir():
            raise StorageError(f"--study-storage: directory {Path(self.storage).parent} does not exist")

    def tracking_uri(self) -> str:
        return self.d.tracking_uri

    def profile_choice(self) -> tuple[str, str]:
        return self.d.choose(self.args.profile)

    def build(self) -> None:
        from hyporay.config import load_config
        from hyporay.dotted import flatten

        d, defn, args = self.d, self.defn, self.args
        self.defaults = search_defaults(d.profile, d.prof)
        self.space = build_space(defn, args, self.defaults)
        over = base_overrides(defn, args, self.space, self.defaults)
        self.base = load_config(d.base_trial(flatten(over))).model_dump()
        self.ends = [trial_config(self.base, self.space, {p.name: v}) for p in self.space for v in p.ends()]
        self.n_trials = args.n_trials or int(self.defaults["n_trials"])
        self.objective = None if defn.multi_objective else Objective(
            self.defaults["max_natural_risk"] if args.max_natural_risk is None else args.max_natural_risk,
            args.penalty)
        self.pruner = {"name": "none"} if defn.multi_objective else pruner_spec(args, self.defaults, self.base)
        make_pruner(self.pruner)
        epochs, every = self.base["train"]["epochs"], self.base["eval"]["every"]
        evals = [e for e in range(1, epochs) if e % every == 0]
        if self.pruner["name"] != "none" and not [e for e in evals if e >= self.pruner.get("warmup", 0)]:
            say(f"note: no evaluation before the last epoch is at or after the warm-up ({self.pruner.get('warmup', 0)}"
                f"): nothing can be pruned (epochs {epochs}, eval every {every})")
        self.study_name = args.study_name or (args.resume if args.resume not in (None, "latest") else None)

    def objective_text(self) -> str:
        if self.objective is None:
            return "minimise (natural_risk, hypocritical_risk), NSGA-II"
        return (f"minimise hypocritical_risk + {self.objective.penalty:g} * max(0, natural_risk - "
                f"{self.objective.max_natural_risk:g})")

    def dry_run(self) -> None:
        from hyporay.config import load_config

        b = load_config(self.base)
        lam = "searched" if any(p.key == "train.lam" for p in self.space) else f"{b.train.lam:g}"
        trainer = "searched" if any(p.key == "train.trainer" for p in self.space) else b.train.trainer
        say(f"{self.defn.name}: study {self.study_name or '(new)'} on {self.storage}: {self.n_trials} trials, "
            f"{self.objective_text()}")
        say(f"space: {'; '.join(p.describe() for p in self.space)}")
        if self.objective is not None:
            say(f"sampler: {self.args.sampler} (seed {self.args.seed}); pruner: {describe_pruner(self.pruner)}")
        say(f"trial: trainer {trainer}, lam {lam}, data {b.data.name}, model {b.model.name}, {b.train.epochs} "
            f"epochs, eval every {b.eval.every}")
        say(f"eval attack: {b.eval.attack.describe()}")

    def load_data(self) -> dict:
        self.base = with_plugins(self.base)
        return load_and_check([self.base, *self.ends])

    def place(self, resources: dict) -> None:
        from hyporay.config import load_config

        info = self.d.info
        self.base = load_config(self.base, {"device": "cuda" if resources.get("gpu") else "cpu",
                                            "threads": self.base.get("threads") or max(1, int(resources["cpu"]))}
                                ).model_dump()
        fits = int(info.cpus // max(resources["cpu"], 1e-9)) if resources["cpu"] else self.n_trials
        if resources.get("gpu"):
            fits = min(fits, int(info.gpus // resources["gpu"]))
        self.parallel = max(1, min(self.args.parallel or fits or 1, self.n_trials))

    # --- the study, MLflow, Tune --------------------------------------------------------------------------------
    def experiment_ref(self) -> tuple[str, None]:
        return self.d.experiment_name(), None

    def open_tracking(self) -> None:
        import optuna

        from hyporay import provenance
        from hyporay.config import ConfigError
        from hyporay.engine.optuna.tune import OptunaPruningScheduler, OptunaSearcher

        d, defn, args = self.d, self.defn, self.args
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ostorage = open_storage(self.storage)
        studies = {s.study_name: s for s in optuna.get_all_study_summaries(ostorage, include_best_trial=False)}
        if args.resume == "latest" and not args.study_name:
            mine = [s for s in studies.values() if (s.user_attrs.get("hyporay.signature") or {}).get("search")
                    == defn.name]
            if not mine:
                raise ConfigError(f"--resume: no {defn.name} study in {self.storage}")
            self.study_name = max(mine, key=lambda s: s.datetime_start or 0).study_name
        self.study_name = self.study_name or f"{defn.name}-{d.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
        prior = studies.get(self.study_name)
        signature = json.loads(json.dumps({"search": defn.name, "profile": d.profile,
                                           "objective": asdict(self.objective) if self.objective else "pareto",
                                           "trainer": None if defn.multi_objective else
                                           self.base["train"]["trainer"]}))
        self.n_prior = 0
        if prior is not None:
            want = len(prior.directions)
            if want != (2 if defn.multi_objective else 1):
                raise ConfigError(f"--study-name: {self.study_name!r} is a {want}-objective study in {self.storage}; "
                                  f"{defn.name} needs a {'2' if defn.multi_objective else '1'}-objective one")
            old = prior.user_attrs.get("hyporay.signature")
            if old and old != signature:
                diff = [k for k in signature if old.get(k) != signature.get(k)]
                raise ConfigError(f"--study-name: study {self.study_name!r} was made with other settings ({diff[0]}: "
                                  f"{old.get(diff[0])}); pass the same or choose another --study-name")
            self.n_prior = prior.n_trials
        self.seed = args.seed + self.n_prior
        if defn.multi_objective:
            sampler = make_sampler(defn, "nsga2", self.seed, 0, args.population_size or int(self.defaults["population"]))
        else:
            startup = int(self.defaults["sampler_startup"]) if args.sampler_startup is None else args.sampler_startup
            sampler = make_sampler(defn, args.sampler, self.seed, startup, 0)
        self.sampler_name = type(sampler).__name__
        kw = {"directions": ["minimize", "minimize"]} if defn.multi_objective else {"direction": "minimize"}
        self.study = optuna.create_study(storage=ostorage, study_name=self.study_name, sampler=sampler,
                                         pruner=make_pruner(self.pruner), load_if_exists=True, **kw)
        if prior is None:
            self.study.set_user_attr("hyporay.signature", signature)
            self.study.set_user_attr("hyporay.space", {p.name: p.key for p in self.space})

        c = tracking.client(d.tracking_uri)
        self.parent_id, created = self._parent(c, {
            tracking.SWEEP_TAG: defn.name, "profile": d.profile, tracking.FRONTIER_LABEL_TAG: LABEL_KEY,
            **tracking.provenance_tags(provenance.code())})
        self.settings = {"search": defn.name, "profile": d.profile, "study_name": self.study_name,
                         "storage": self.storage, "objective": self.objective_text(),
                         "space": [p.describe() for p in self.space],
                         "sampler": "nsga2" if defn.multi_objective else args.sampler, "seed": args.seed,
                         "pruner": describe_pruner(self.pruner), "resources": d.resources}
        if created:
            tracking.log_params(c, self.parent_id, self.settings)
        self._fail_stale(c)
        self.searcher = OptunaSearcher(self.study, {p.name: p.distribution() for p in self.space}, self._plan,
                                       self.n_trials, self.objective)
        self.scheduler = None if defn.multi_objective else OptunaPruningScheduler(
            self.searcher, int(self.base["train"]["epochs"]))
        self.run_dir_name = f"{self.study_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.meta = d.meta(self.exp_id, self.parent_id, {STUDY_TAG: self.study_name},
                           objective=asdict(self.objective) if self.objective else None,
                           chaos={"marker": self.study_name})

    def _parent(self, c, tags: dict) -> tuple[str, bool]:
        """The study's parent run (found by study name and storage), else a new one; (run id, created)."""
        found = tracking.retry(c.search_runs, [self.exp_id], filter_string=(
            f"tags.`{tracking.ROLE_TAG}` = '{ROLE_STUDY}' and tags.`{STUDY_TAG}` = '{self.study_name}'"),
            max_results=100)
        for r in found:
            if r.data.tags.get(STORAGE_TAG) == self.storage:
                tracking.retry(c.update_run, r.info.run_id, "RUNNING")
                return r.info.run_id, False
        once = secrets.token_hex(8)  # finds the run again if the answer to its create is lost in an outage
        run = tracking.create_once(lambda: c.create_run(self.exp_id, run_name=self.study_name, tags={
            tracking.ROLE_TAG: ROLE_STUDY, STUDY_TAG: self.study_name, STORAGE_TAG: self.storage,
            tracking.CREATE_TAG: once, **tags}), lambda: next(iter(c.search_runs(
                [self.exp_id], filter_string=f"tags.`{tracking.CREATE_TAG}` = '{once}'", max_results=1)), None))
        return run.info.run_id, True

    def _fail_stale(self, c) -> None:
        """Trials left RUNNING by a driver of this host that no longer runs (killed): FAIL, their runs FAILED."""
        from optuna.trial import TrialState

        failed = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            drv = t.user_attrs.get(DRIVER_ATTR) or {}
            if drv.get("host") != socket.gethostname() or _pid_alive(int(drv.get("pid", 0))):
                say(f"note: trial {t.number} is RUNNING in another driver ({drv.get('host')}, pid {drv.get('pid')}); "
                    "left alone")
                continue
            self.study.tell(t.number, state=TrialState.FAIL)
            failed += 1
            run = tracking.find_child(c, self.exp_id, self.parent_id, str(t.user_attrs.get("mlflow_key", "")))
            if run is not None:
                close(c, run.info.run_id, "FAIL", "its driver stopped", int(t.user_attrs.get(EPOCHS_TRAINED, 0) or 0))
        if failed:
            say(f"marked {failed} trial(s) FAIL: left RUNNING by an earlier driver that stopped")

    def _plan(self, t) -> dict:
        """The engine's plan entry of an asked Optuna trial."""
        from hyporay.engine.definition import NAMED_KEYS, run_name

        cfg = trial_config(self.base, self.space, t.params)
        key = f"optuna:{self.study_name}:{t.number}"
        name = f"t{t.number:03d}-{run_name(cfg, [p.key for p in self.space if p.key not in NAMED_KEYS])}"
        tags = {STUDY_TAG: self.study_name, TRIAL_NUMBER_TAG: str(t.number), STATE_TAG: "RUNNING"}
        t.set_user_attr("mlflow_key", key)
        return {"trial": cfg, "key": key, "name": name, "tags": tags}

    def announce(self) -> None:
        b, info = self.base, self.d.info
        continued = f"continued, {self.n_prior} trials so far" if self.n_prior else "new"
        lam = "searched" if any(p.name == "lam" for p in self.space) else format(b["train"]["lam"], "g")
        publish.announce(self.d, self, b, LABEL_KEY, [
            f"{self.defn.name}: study {self.study_name} ({continued}) on {self.storage}",
            f"  {self.objective_text()}",
            f"  space: {'; '.join(p.describe() for p in self.space)}; trainer "
            f"{b['train']['trainer'] if not self.defn.multi_objective else 'searched'}, lam {lam}, "
            f"{b['train']['epochs']} epochs, eval every {b['eval']['every']}",
            f"  sampler {self.sampler_name} (seed {self.seed}); pruner {describe_pruner(self.pruner)}",
            f"  {self.n_trials} trials, {self.parallel} at a time, {self.d.resources} each, on {info.nodes} node(s) "
            f"({info.cpus:g} CPU, {info.gpus:g} GPU)"], (f"optuna-dashboard:  optuna-dashboard {self.storage}",))

    def total(self) -> int:
        return self.n_trials

    def axes(self) -> list[tuple[str, str]]:
        return [(p.name, p.key) for p in self.space]

    def outcome_of(self, trial) -> str:
        a = self.searcher.asked.get(trial.trial_id)
        return {"PRUNED": "pruned", "PRUNING": "pruned", "FAIL": "FAIL", "COMPLETE": "complete"}.get(
            a.state if a else "", "")

    def callbacks(self) -> list:
        return [RunCloser(self.searcher, self.d.tracking_uri)]

    def tune_config(self) -> dict:
        from ray.tune.search import ConcurrencyLimiter

        out = {"search_alg": ConcurrencyLimiter(self.searcher, max_concurrent=self.parallel),
               "num_samples": self.n_trials}
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler
        return out

    def tuner(self, trainable, tune_config, run_config):
        from ray import tune

        return tune.Tuner(trainable, param_space={"meta": self.meta}, tune_config=tune_config, run_config=run_config)

    # --- after the trials ---------------------------------------------------------------------------------------
    def finish(self, results) -> int:
        from hyporay.tracking.runs import read

        c = tracking.client(self.d.tracking_uri)
        interrupted = self.searcher.fail_unfinished("interrupted")
        for a in interrupted:
            if a.run_id:
                close(c, a.run_id, "FAIL", "interrupted", a.epochs)
        df = self.table = read(self.d.tracking_uri, self.exp_id, self.parent_id)
        paths, view = report.publish(self, df, c)
        tracking.retry(c.set_terminated, self.parent_id, "KILLED" if interrupted else "FINISHED")
        report.summary(self, df, paths, view, interrupted=bool(interrupted))
        if interrupted:
            return 130
        asked = list(self.searcher.asked.values())
        return 1 if asked and all(a.state == "FAIL" for a in asked) else 0

    def resume_command(self) -> str:
        return publish.resume_command(self.study_name, self.args, profile=self.d.profile)
