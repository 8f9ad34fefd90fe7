"""Optuna studies whose trials run as Ray tasks: the defender-budget search (pruned) and the Pareto search.

Ray Tune's ``OptunaSearch`` never runs an Optuna pruner (it hard-codes ``NopPruner``), so these searches drive
Optuna themselves, with ask-and-tell on the driver and the trials on Ray workers:

- **Driver** (one process, one seeded sampler): ``study.ask(distributions)`` samples a trial's parameters,
  creates its MLflow child run and submits one Ray task with the resources of ``trial_resources`` (CPUs
  locally, a GPU fraction on a cluster with GPUs); at most ``--parallel`` tasks are in flight. When a task
  ends, the driver alone ends the trial: ``study.tell`` with COMPLETE (and the objective), PRUNED, or FAIL
  (the task raised, or its worker process died), then tags the child run ``optuna_state`` accordingly.
- **Worker** (Ray task): opens the same study with ``optuna.load_study(storage=..., pruner=...)`` and its
  trial with ``optuna.trial.Trial(study, trial_id)``, calls ``run_trial`` and, after every evaluation,
  logs the epoch's metrics to MLflow, ``trial.report(objective, epoch)`` to the shared storage and asks
  ``trial.should_prune()``; when the pruner says so, the report callback raises, training stops there and
  the task returns PRUNED. The pruner decides from every trial's intermediate values in the shared storage,
  so pruning really cuts the compute of bad trials (the bench measures how much).

Why not ``study.optimize`` inside each worker: every worker would hold its own sampler (either the same seed,
giving duplicate trials, or different seeds, giving no reproducible study), ``n_trials`` would be split per
worker, and a worker that dies would leave its trial RUNNING forever (JournalStorage has no heartbeat) and
lose its share of the trials. With ask-and-tell the study has one seeded sampler, exactly ``--n-trials``
trials per run, and a dead worker's trial ends FAIL while the study goes on.

Objective of the budget search (single-objective, minimised)::

    objective = hypocritical_risk + penalty * max(0, natural_risk - max_natural_risk)

``hypocritical_risk`` is R_hyp(D-) (an empty D-, a model without mistakes, counts as 0). The penalty, not
TPE's ``constraints_func``, carries the accuracy ceiling, because pruning compares *intermediate* values: a
constraint known to the sampler only after a trial completes cannot stop an inaccurate trial early. With the
default penalty 10, exceeding the ceiling by 0.1 costs 1.0 (the whole range of R_hyp), so such a trial ranks
behind every trial under the ceiling; trials just above it are penalised softly. Each trial also carries the
user attributes ``natural_risk``, ``hypocritical_risk`` and ``feasible``.

The Pareto search minimises (natural_risk, hypocritical_risk) with NSGA-II over trainer, lambda and eps;
Optuna cannot prune multi-objective studies, so its trials never report to Optuna (their epochs still go to
MLflow).

Storage: a JournalStorage file (``optuna.journal`` in the working directory) by default, or ``--storage`` with
a journal file path, an RDB URL (``sqlite:///``, ``postgresql://``, ``mysql://``) or a Redis URL
(``redis://``, JournalStorage's Redis backend). On a multi-node cluster the storage must be reachable from
every node: a journal file on shared storage (NFS) or a database/Redis server. Running again with the same
``--study-name`` continues the study (``--n-trials`` more trials; the sampler seed is offset by the number of
trials already in the study so the continued study does not repeat its first samples).

MLflow: one parent run per study (tags ``hyporay.role=study``, ``optuna.study_name``; found again when the
study is continued), one child run per Optuna trial (tag ``mlflow.parentRunId``, the full trial config as
params, metrics per evaluated epoch, ``optuna_state`` = COMPLETE / PRUNED / FAIL). The parent gets the best
trial's parameters and final metrics (metrics ``best.<name>``, tags ``best_param.<name>``; metrics, because
MLflow params cannot change when a continued study finds a better trial) and Optuna's plots as artefacts.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hyporay import metrics as M
from hyporay.cliutil import OneLineParser, run_user_command
from hyporay.config import ConfigError, flatten, load_config, merge, parse_overrides
from hyporay.engine import tracking

OBJECTIVE = "objective"                 # metric and Optuna value of the budget search
EPOCHS_TRAINED = "epochs_trained"       # per trial: epochs it really trained (pruned trials: fewer)
STATE_TAG = "optuna_state"              # child run tag: COMPLETE / PRUNED / FAIL
STUDY_TAG = "optuna.study_name"
STORAGE_TAG = "optuna.storage"
TRIAL_NUMBER_TAG = "optuna.trial_number"
ROLE_STUDY = "study"                    # hyporay.role of a study's parent run (a Tune sweep's is "sweep")
DRIVER_ATTR = "hyporay.driver"          # trial user attr: {"host", "pid"} of the driver that asked it
DEFAULT_JOURNAL = "optuna.journal"
PRUNERS = ("median", "percentile", "halving", "hyperband", "none")
SAMPLERS = ("tpe", "random")
PROFILES = ("auto", "local", "paper")
STATES = ("COMPLETE", "PRUNED", "FAIL")
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")

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


class StorageError(ValueError):
    """The Optuna storage cannot be used (one line: which URL and why)."""


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
    "hypocritical risk under a natural-risk ceiling, with real Optuna pruning, trials on Ray workers",
    multi_objective=False, defaults={"train.trainer": "thrm", "train.attack.step_size": None})
PARETO = SearchDefinition(
    "pareto",
    "NSGA-II search of the natural-vs-hypocritical trade-off over trainer, lambda and eps; logs the Pareto set",
    multi_objective=True, defaults={"train.attack.step_size": None})


# --- search space ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One searched trial field: ``name`` is the Optuna parameter (plots, dashboard), ``key`` the dotted field."""

    name: str
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}] {'log' if self.log else 'linear'}"


def parse_range(raw: str, flag: str, *, log: bool, integer: bool = False, minimum: float = 0.0,
                scale_flag: str | None = None) -> tuple[float, float]:
    """``"LOW,HIGH"`` -> (low, high), checked: numbers, >= minimum, low <= high, low > 0 on a log scale."""
    parts = [p.strip() for p in str(raw).split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{flag}: expected LOW,HIGH (e.g. {'2,20' if integer else '0.01,0.3'}), got {raw!r}")
    vals = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ConfigError(f"{flag}: cannot read {p!r} as a number") from None
        if not math.isfinite(v):
            raise ConfigError(f"{flag}: must be finite, got {p}")
        if integer and not v.is_integer():
            raise ConfigError(f"{flag}: must be whole numbers, got {p}")
        vals.append(int(v) if integer else v)
    low, high = vals
    if low < minimum:
        raise ConfigError(f"{flag}: must be >= {minimum:g}, got {low:g}")
    if low > high:
        raise ConfigError(f"{flag}: low {low:g} > high {high:g}")
    if log and low <= 0:
        hint = f"; use {scale_flag} linear" if scale_flag else ""
        raise ConfigError(f"{flag}: a log scale needs low > 0, got {low:g}{hint}")
    return low, high


def build_space(defn: SearchDefinition, args, defaults: dict) -> list[Param]:
    """The search space from the flags, the profile's defaults filling what the flags leave open."""
    log_eps = args.eps_scale == "log"
    eps = parse_range(args.eps_range, "--eps-range", log=log_eps, scale_flag="--eps-scale") if args.eps_range \
        else _check_default(defaults["eps"], "--eps-range", log_eps, "--eps-scale")
    space = [Param("eps", "train.attack.eps", *eps, log=log_eps)]
    if defn.multi_objective:
        trainers = _trainers(args.trainers) if args.trainers else tuple(defaults["trainers"])
        space.insert(0, Param("trainer", "train.trainer", choices=trainers))
    lam_range = args.lam_range
    if lam_range is None and defn.multi_objective and args.lam is None:
        lam_range = ",".join(str(v) for v in defaults["lam_range"])
    if lam_range is not None:
        if args.lam is not None:
            raise ConfigError("--lam and --lam-range: give one (a fixed lambda, or a range to search)")
        lo, hi = parse_range(lam_range, "--lam-range", log=args.lam_scale == "log", scale_flag="--lam-scale")
        space.append(Param("lam", "train.lam", lo, hi, log=args.lam_scale == "log"))
    if args.steps_range is not None:
        lo, hi = parse_range(args.steps_range, "--steps-range", log=args.steps_scale == "log", integer=True,
                             minimum=1, scale_flag="--steps-scale")
        space.append(Param("steps", "train.attack.steps", lo, hi, log=args.steps_scale == "log", integer=True))
    return space


def _check_default(rng, flag: str, log: bool, scale_flag: str) -> tuple[float, float]:
    return parse_range(f"{rng[0]},{rng[1]}", flag, log=log, scale_flag=scale_flag)


def _trainers(raw: str) -> tuple[str, ...]:
    from hyporay.trainers import LOSSES

    names = tuple(t.strip() for t in raw.split(",") if t.strip())
    bad = [t for t in names if t not in LOSSES]
    if bad or not names:
        raise ConfigError(f"--trainers: unknown {bad[0]!r}; known: {', '.join(sorted(LOSSES))}" if bad
                          else "--trainers: give at least one")
    return names


def search_defaults(profile: str, prof: dict) -> dict[str, Any]:
    if profile in SEARCH_DEFAULTS:
        return dict(SEARCH_DEFAULTS[profile])
    out = dict(SEARCH_DEFAULTS["local"])
    eps = float(prof.get("trial", {}).get("train", {}).get("attack", {}).get("eps", 0.1) or 0.1)
    out["eps"] = (eps / 8, eps * 2)
    return out


def trial_config(base: dict, space: list[Param], params: dict[str, Any]) -> dict:
    """The full trial config (validated) of one set of Optuna parameters."""
    over: dict = {}
    for p in space:
        if p.name in params:
            _set(over, p.key, params[p.name])
    return load_config(merge(base, over)).model_dump()


def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
    d[parts[-1]] = value


# --- objective ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Objective:
    """``hypocritical_risk + penalty * max(0, natural_risk - max_natural_risk)`` (budget search)."""

    max_natural_risk: float
    penalty: float = 10.0

    def value(self, metrics: dict) -> float:
        nat = float(metrics[M.NATURAL_RISK])
        return hypocritical(metrics) + self.penalty * max(0.0, nat - self.max_natural_risk)

    def feasible(self, metrics: dict) -> bool:
        return float(metrics[M.NATURAL_RISK]) <= self.max_natural_risk


def hypocritical(metrics: dict) -> float:
    """R_hyp(D-); a model without mistakes (empty D-, NaN) counts as 0: no mistake to pass off as correct."""
    v = float(metrics[M.HYPOCRITICAL_RISK])
    return 0.0 if math.isnan(v) else v


def pareto_values(metrics: dict) -> list[float]:
    return [float(metrics[M.NATURAL_RISK]), hypocritical(metrics)]


# --- pruners and samplers -------------------------------------------------------------------------------

def make_pruner(spec: dict):
    """An Optuna pruner from a plain dict (sent to every worker, so the driver's and workers' pruners agree)."""
    import optuna

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
    every, epochs = int(trial["eval"]["every"]), int(trial["train"]["epochs"])
    spec: dict[str, Any] = {"name": args.pruner}
    if args.pruner in ("median", "percentile"):
        spec["startup"] = defaults["pruner_startup"] if args.pruner_startup is None else args.pruner_startup
        spec["warmup"] = defaults["pruner_warmup"] if args.pruner_warmup is None else args.pruner_warmup
        if spec["startup"] < 0 or spec["warmup"] < 0:
            raise ConfigError("--pruner-startup/--pruner-warmup: must be >= 0")
    if args.pruner == "percentile":
        if not 0 < args.percentile < 100:
            raise ConfigError(f"--percentile: must be in (0, 100), got {args.percentile:g}")
        spec["percentile"] = args.percentile
    if args.pruner in ("halving", "hyperband"):
        if args.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor: must be >= 2, got {args.reduction_factor}")
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


# --- storage --------------------------------------------------------------------------------------------

_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def resolve_storage(raw: str | None, workdir: Path) -> str:
    """Canonical storage string (absolute journal path or URL); workers in other directories can open it."""
    raw = (raw or DEFAULT_JOURNAL).strip()
    if not raw:
        raise StorageError("--storage: empty")
    if "://" not in raw:
        p = Path(raw).expanduser()
        return str(p if p.is_absolute() else (workdir / p).resolve())
    scheme = raw.split("://", 1)[0].lower()
    base = scheme.split("+", 1)[0]
    if base == "sqlite" and raw.startswith("sqlite:///") and not raw.startswith("sqlite:////") \
            and raw != "sqlite:///:memory:":
        return "sqlite:///" + str((workdir / raw[len("sqlite:///"):]).resolve())
    if base not in _RDB_SCHEMES and base not in _REDIS_SCHEMES:
        raise StorageError(f"--storage: unknown scheme {scheme!r} in {raw!r}; use a journal file path, "
                           "sqlite:///PATH, postgresql://..., mysql://... or redis://HOST:PORT")
    return raw


def storage_kind(spec: str) -> str:
    if "://" not in spec:
        return "journal"
    return "redis" if spec.split("://", 1)[0].lower() in _REDIS_SCHEMES else "rdb"


def open_storage(spec: str, *, create: bool = True):
    """The Optuna storage for ``spec`` (from ``resolve_storage``); StorageError (one line) when unusable."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    kind = storage_kind(spec)
    try:
        if kind == "journal":
            path = Path(spec)
            if not path.parent.is_dir():
                raise StorageError(f"--storage: directory {path.parent} does not exist")
            if path.is_dir():
                raise StorageError(f"--storage: {path} is a directory; give a journal file path")
            if not create and not path.exists():
                raise StorageError(f"--storage: no journal file at {path}")
            return JournalStorage(JournalFileBackend(str(path)))
        if kind == "redis":
            try:
                import redis  # noqa: F401
            except ImportError:
                raise StorageError(f"--storage: {spec} needs the redis package (pip install redis)") from None
            backend = JournalRedisBackend(spec)
            backend._redis.ping()  # fail now, in one line, not in the first worker
            return JournalStorage(backend)
        _check_rdb_url(spec)
        return optuna.storages.RDBStorage(spec, engine_kwargs=_engine_kwargs(spec))
    except StorageError:
        raise
    except ModuleNotFoundError as exc:  # the database driver, imported when the engine is created
        raise StorageError(f"--storage: {_redact(spec)} needs the database driver {exc.name!r} "
                           f"(pip install {_DRIVER_PACKAGES.get(exc.name, exc.name)})") from None
    except Exception as exc:  # noqa: BLE001 - any driver/connection error becomes one line
        raise StorageError(f"--storage: cannot open {_redact(spec)} ({_first_line(exc)})") from None


def _check_rdb_url(spec: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(spec)
        url.get_dialect().import_dbapi()  # the driver package (psycopg2, pymysql, ...) is there
    except ModuleNotFoundError as exc:
        raise StorageError(f"--storage: {_redact(spec)} needs the database driver {exc.name!r} "
                           f"(pip install {_DRIVER_PACKAGES.get(exc.name, exc.name)})") from None
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's ArgumentError / NoSuchModuleError
        raise StorageError(f"--storage: not a database URL: {_redact(spec)} ({_first_line(exc)})") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        parent = Path(url.database).parent
        if not parent.is_dir():
            raise StorageError(f"--storage: directory {parent} does not exist")


_DRIVER_PACKAGES = {"psycopg": "\"psycopg[binary]\"", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
                    "MySQLdb": "mysqlclient"}


def _engine_kwargs(spec: str) -> dict:
    if spec.startswith(("postgresql", "postgres", "mysql", "mariadb")):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return s[0][:300] if s else type(exc).__name__


# --- the worker -----------------------------------------------------------------------------------------

class _Pruned(Exception):
    """Raised by the report callback to stop ``run_trial`` when the pruner says so."""

    def __init__(self, epoch: int):
        super().__init__(f"pruned at epoch {epoch}")
        self.epoch = epoch


def run_optuna_trial(job: dict, data=None) -> dict:
    """One Optuna trial on a Ray worker (or in-process): train, report, prune; returns the outcome.

    ``job``: ``study_name``, ``storage`` (from ``resolve_storage``), ``pruner`` (``make_pruner`` spec),
    ``trial_id``, ``trial`` (full config), ``objective`` (``Objective`` fields, or None for the Pareto search:
    nothing is reported to Optuna), ``tracking_uri``, ``run_id`` and optionally ``chaos``. The driver ends the
    trial (``study.tell``); the worker only reports intermediate values.
    Returns ``{"state": "COMPLETE"|"PRUNED", "epochs": trained epochs, "metrics": last evaluated metrics}``.
    """
    import optuna

    from hyporay.experiment import EPOCH, run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    c = tracking.client(job["tracking_uri"])
    run_id = job["run_id"]
    objective = Objective(**job["objective"]) if job.get("objective") else None
    last_epoch = int(job["trial"]["train"]["epochs"])
    trial = None
    if objective is not None:
        study = optuna.load_study(study_name=job["study_name"], storage=open_storage(job["storage"], create=False),
                                  pruner=make_pruner(job["pruner"]), sampler=optuna.samplers.RandomSampler())
        trial = optuna.trial.Trial(study, job["trial_id"])
    chaos = job.get("chaos")
    seen: dict = {"epochs": 0, "metrics": {}}

    def report(metrics: dict, _checkpoint_dir: str) -> None:
        epoch = int(metrics.get(EPOCH, 0))
        row = dict(metrics)
        if objective is not None:
            row[OBJECTIVE] = objective.value(metrics)
        seen.update(epochs=epoch, metrics=row)
        tracking.log_metrics(c, run_id, row, step=epoch)
        if trial is not None:
            trial.report(row[OBJECTIVE], epoch)
        if chaos is not None and epoch >= int(chaos["epoch"]):
            marker = Path(chaos["marker_dir"]) / f"{job['study_name']}.died"
            try:  # the first trial to get here dies once, hard, like a lost worker (fault injection for tests)
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(job["number"]).encode())
                os.close(fd)
                os._exit(1)
        # a trial that has trained all its epochs completes: pruning it then would save nothing
        if trial is not None and epoch < last_epoch and trial.should_prune():
            raise _Pruned(epoch)

    try:
        final = run_trial(job["trial"], report, data=data)
    except _Pruned as p:
        return {"state": "PRUNED", "epochs": p.epoch, "metrics": seen["metrics"]}
    if objective is not None:
        final = {**final, OBJECTIVE: objective.value(final)}
    return {"state": "COMPLETE", "epochs": int(final.get(EPOCH, seen["epochs"])), "metrics": final}


# --- MLflow ---------------------------------------------------------------------------------------------

def find_or_create_parent(c, experiment_id: str, study_name: str, storage: str, tags: dict[str, str]
                          ) -> tuple[str, bool]:
    """The study's parent run (found by study name and storage), else a new one; (run id, created)."""
    runs = tracking.retry(c.search_runs, [experiment_id],
                          filter_string=f"tags.`{tracking.ROLE_TAG}` = '{ROLE_STUDY}' and "
                                        f"tags.`{STUDY_TAG}` = '{study_name}'", max_results=100)
    for r in runs:
        if r.data.tags.get(STORAGE_TAG) == storage:
            tracking.retry(c.update_run, r.info.run_id, "RUNNING")
            return r.info.run_id, False
    run = tracking.retry(c.create_run, experiment_id, run_name=study_name, tags={
        tracking.ROLE_TAG: ROLE_STUDY, STUDY_TAG: study_name, STORAGE_TAG: storage, **tags})
    return run.info.run_id, True


def trial_key(study_name: str, number: int) -> str:
    return f"optuna:{study_name}:{number}"


def _child_tags(trial: dict, study_name: str, number: int, profile: str, sweep: str) -> dict[str, str]:
    t = trial.get("train", {})
    return {STUDY_TAG: study_name, TRIAL_NUMBER_TAG: str(number), STATE_TAG: "RUNNING", "profile": profile,
            tracking.SWEEP_TAG: sweep, "trainer": str(t.get("trainer")),
            "dataset": str(trial.get("data", {}).get("name")),
            "architecture": str(trial.get("model", {}).get("name"))}


# --- the driver -----------------------------------------------------------------------------------------

@dataclass
class TrialOutcome:
    number: int
    state: str
    params: dict
    epochs: int
    value: float | list[float] | None
    metrics: dict
    run_id: str
    reason: str = ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study, c, experiment_id: str, parent_id: str | None, say) -> int:
    """Trials left RUNNING by a driver of this host that no longer runs (killed): FAIL, and their child runs."""
    from optuna.trial import TrialState

    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        drv = t.user_attrs.get(DRIVER_ATTR) or {}
        if drv.get("host") != socket.gethostname() or _pid_alive(int(drv.get("pid", 0))):
            say(f"note: trial {t.number} is RUNNING in another driver ({drv.get('host')}, pid {drv.get('pid')}); "
                "left alone")
            continue
        # a finished trial's attrs are read-only and there is no public way to open a RUNNING one: storage API
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "its driver stopped")
        study.tell(t.number, state=TrialState.FAIL)
        failed += 1
        if parent_id is not None:
            run = tracking.find_or_create_child(c, experiment_id, parent_id, trial_key(study.study_name, t.number),
                                                f"t{t.number:03d}", {})
            tracking.retry(c.set_tag, run, STATE_TAG, "FAIL")
            tracking.retry(c.set_terminated, run, "FAILED")
    if failed:
        say(f"marked {failed} trial(s) FAIL: left RUNNING by an earlier driver that stopped")
    return failed


@dataclass
class Session:
    """Everything the driver loop needs (built and validated by ``_main``)."""

    defn: SearchDefinition
    study: Any
    space: list[Param]
    base: dict
    storage: str
    pruner: dict
    objective: Objective | None
    n_trials: int
    parallel: int
    resources: dict
    tracking_uri: str
    experiment_id: str
    parent_id: str
    profile: str
    data_ref: Any = None
    chaos: dict | None = None


def run_trials(s: Session, say=print) -> list[TrialOutcome]:
    """Ask ``n_trials`` trials, run at most ``parallel`` at a time as Ray tasks, tell each outcome."""
    import ray
    from optuna.trial import TrialState

    from hyporay.engine.trainable import run_name

    c = tracking.client(s.tracking_uri)
    task = ray.remote(run_optuna_trial).options(
        num_cpus=s.resources.get("cpu", 1), num_gpus=s.resources.get("gpu", 0), max_retries=0)
    dists = {p.name: p.distribution() for p in s.space}
    name_keys = [p.key for p in s.space if p.key not in ("train.trainer", "train.lam")]
    pending: dict = {}
    outcomes: list[TrialOutcome] = []
    asked = 0
    me = {"host": socket.gethostname(), "pid": os.getpid()}

    def submit() -> None:
        nonlocal asked
        trial = s.study.ask(dists)
        trial.set_user_attr(DRIVER_ATTR, me)
        try:  # both ends of every range were validated; anything else must not leave the trial RUNNING
            cfg = trial_config(s.base, s.space, trial.params)
        except Exception:
            s.study.tell(trial, state=TrialState.FAIL)
            raise
        run_id = tracking.find_or_create_child(
            c, s.experiment_id, s.parent_id, trial_key(s.study.study_name, trial.number),
            f"t{trial.number:03d}-{run_name(cfg, name_keys)}",
            _child_tags(cfg, s.study.study_name, trial.number, s.profile, s.defn.name))
        trial.set_user_attr("mlflow_run_id", run_id)
        tracking.log_params(c, run_id, {**flatten(cfg), "optuna.trial_number": trial.number})
        job = {"study_name": s.study.study_name, "storage": s.storage, "pruner": s.pruner,
               # trial._trial_id: no public accessor; the worker opens the trial by it
               "trial_id": trial._trial_id, "number": trial.number, "trial": cfg,
               "objective": asdict(s.objective) if s.objective else None,
               "tracking_uri": s.tracking_uri, "run_id": run_id, "chaos": s.chaos}
        pending[task.remote(job, s.data_ref)] = (trial, run_id)
        asked += 1

    def finish(trial, run_id: str, out: dict | None, reason: str = "") -> None:
        state = out["state"] if out else "FAIL"
        metrics = (out or {}).get("metrics") or {}
        epochs = int(out["epochs"]) if out else _epochs_logged(c, run_id)
        trial.set_user_attr(EPOCHS_TRAINED, epochs)
        if metrics:
            trial.set_user_attr(M.NATURAL_RISK, float(metrics[M.NATURAL_RISK]))
            trial.set_user_attr(M.HYPOCRITICAL_RISK, hypocritical(metrics))
            if s.objective is not None:
                trial.set_user_attr("feasible", s.objective.feasible(metrics))
        value: float | list[float] | None = None
        if state == "COMPLETE":
            value = pareto_values(metrics) if s.defn.multi_objective else float(metrics[OBJECTIVE])
            s.study.tell(trial, value)
        elif state == "PRUNED":
            s.study.tell(trial, state=TrialState.PRUNED)
            value = float(metrics.get(OBJECTIVE, math.nan))
        else:
            trial.set_user_attr("fail_reason", reason[:500])
            s.study.tell(trial, state=TrialState.FAIL)
        tracking.retry(c.set_tag, run_id, STATE_TAG, state)
        if reason:
            tracking.retry(c.set_tag, run_id, "fail_reason", reason[:500])
        tracking.log_metrics(c, run_id, {EPOCHS_TRAINED: epochs}, step=epochs)
        tracking.retry(c.set_terminated, run_id, "FAILED" if state == "FAIL" else "FINISHED")
        o = TrialOutcome(trial.number, state, dict(trial.params), epochs, value, metrics, run_id, reason)
        outcomes.append(o)
        say(_outcome_line(o, int(s.base["train"]["epochs"])))

    try:
        while asked < s.n_trials or pending:
            while asked < s.n_trials and len(pending) < s.parallel:
                submit()
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                trial, run_id = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.WorkerCrashedError:
                    finish(trial, run_id, None, "its Ray worker died")
                except ray.exceptions.RayError as exc:
                    finish(trial, run_id, None, _task_error(exc))
                else:
                    finish(trial, run_id, out)
    except KeyboardInterrupt:
        for ref, (trial, run_id) in pending.items():
            ray.cancel(ref, force=True)
            trial.set_user_attr("fail_reason", "interrupted")
            s.study.tell(trial, state=TrialState.FAIL)
            tracking.retry(c.set_tag, run_id, STATE_TAG, "FAIL")
            tracking.retry(c.set_terminated, run_id, "KILLED")
        raise
    return outcomes


def _epochs_logged(c, run_id: str) -> int:
    try:
        return max((int(m.step) for m in tracking.retry(c.get_metric_history, run_id, "epoch")), default=0)
    except Exception:  # noqa: BLE001 - best effort for a trial whose worker died
        return 0


def _task_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {_first_line(cause)}"
    return _first_line(exc)


def _fmt_params(params: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _outcome_line(o: TrialOutcome, epochs: int) -> str:
    head = f"trial {o.number:3d}  {o.state:<8s} {o.epochs:3d}/{epochs} epochs  {_fmt_params(o.params)}"
    if o.state == "FAIL":
        return f"{head}  ({o.reason})"
    m = o.metrics
    risks = f"natural {m[M.NATURAL_RISK]:.3f}  hypocritical {hypocritical(m):.3f}"
    if OBJECTIVE in m:
        return f"{head}  objective {m[OBJECTIVE]:.4f}  ({risks})"
    return f"{head}  ({risks})"


# --- artefacts ------------------------------------------------------------------------------------------

def _quiet_optuna():
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_plots(study, out_dir: Path, multi_objective: bool) -> tuple[list[Path], dict[str, str]]:
    """Optuna's standard plots as self-contained HTML (plotly); {plot: why skipped} for those that cannot be drawn."""
    import optuna.visualization as vis
    from optuna.trial import TrialState

    _quiet_optuna()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if multi_objective:
        plots = {"pareto_front": lambda st: vis.plot_pareto_front(st, target_names=[M.NATURAL_RISK,
                                                                                      M.HYPOCRITICAL_RISK])}
    else:
        plots = {"optimization_history": vis.plot_optimization_history,
                 "intermediate_values": vis.plot_intermediate_values,
                 "param_importances": vis.plot_param_importances}
    paths, skipped = [], {}
    for name, fn in plots.items():
        if not complete:
            skipped[name] = "no completed trial"
            continue
        if name == "param_importances":
            distinct = {json.dumps(t.params, sort_keys=True, default=str) for t in complete}
            if len(complete) < 2 or len(distinct) < 2:
                skipped[name] = f"needs >= 2 completed trials with different parameters, has {len(distinct)}"
                continue
        try:
            fig = fn(study)
        except Exception as exc:  # noqa: BLE001 - a plot that cannot be drawn is skipped, with the reason
            skipped[name] = _first_line(exc)
            continue
        path = out_dir / f"{name}.html"
        fig.write_html(str(path), include_plotlyjs=True)  # self-contained: opens offline
        paths.append(path)
    return paths, skipped


def trials_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name,
               "value": "" if t.values is None else (t.values[0] if len(t.values) == 1 else json.dumps(t.values)),
               EPOCHS_TRAINED: t.user_attrs.get(EPOCHS_TRAINED, ""),
               M.NATURAL_RISK: t.user_attrs.get(M.NATURAL_RISK, ""),
               M.HYPOCRITICAL_RISK: t.user_attrs.get(M.HYPOCRITICAL_RISK, ""),
               **{f"param.{k}": v for k, v in t.params.items()},
               "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")}
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path


def pareto_rows(study) -> list[dict]:
    """The Pareto set (``study.best_trials``), sorted by natural risk."""
    rows = []
    for t in sorted(study.best_trials, key=lambda t: (t.values[0], t.values[1])):
        rows.append({"trial": t.number, **t.params, M.NATURAL_RISK: t.values[0], M.HYPOCRITICAL_RISK: t.values[1],
                     "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")})
    return rows


def pareto_markdown(rows: list[dict], caption: str) -> str:
    if not rows:
        return f"{caption}\n\n(no completed trial)\n"
    keys = [k for k in rows[0] if k != "mlflow_run_id"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [caption, "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pareto_png(study, path: Path, title: str) -> Path:
    """Every completed trial (grey) and the Pareto set (by trainer, joined as a staircase), labelled λ/ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = sorted(study.best_trials, key=lambda t: t.values[0])
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([t.values[0] for t in done], [t.values[1] for t in done], s=18, c="0.75", label="trials")
    if best:
        ax.step([t.values[0] for t in best], [t.values[1] for t in best], where="post", c="0.4", lw=1)
    for trainer in sorted({str(t.params.get("trainer", "")) for t in best}):
        pts = [t for t in best if str(t.params.get("trainer", "")) == trainer]
        ax.scatter([t.values[0] for t in pts], [t.values[1] for t in pts], s=46, label=f"Pareto: {trainer or 'set'}",
                   zorder=3)
        for t in pts:
            lab = ", ".join(f"{'λ' if k == 'lam' else 'ε' if k == 'eps' else k}={v:.3g}"
                            for k, v in t.params.items() if isinstance(v, float))
            ax.annotate(lab, (t.values[0], t.values[1]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"{M.NATURAL_RISK} (1 - clean accuracy)")
    ax.set_ylabel(f"{M.HYPOCRITICAL_RISK} R_hyp(D-)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def publish(s: Session, out_dir: Path, session_info: dict, say) -> list[Path]:
    """Parent-run artefacts and best-trial summary; returns the artefact paths."""
    from optuna.trial import TrialState

    c = tracking.client(s.tracking_uri)
    study = s.study
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, skipped = study_plots(study, out_dir, s.defn.multi_objective)
    rows = trials_rows(study)
    paths.append(write_csv(rows, out_dir / "trials.csv"))
    if s.defn.multi_objective:
        prow = pareto_rows(study)
        paths.append(write_csv(prow, out_dir / "pareto_set.csv") if prow else _empty(out_dir / "pareto_set.csv"))
        md = out_dir / "pareto_set.md"
        md.write_text(pareto_markdown(prow, f"Pareto set of study {study.study_name} ({s.profile}): "
                                            f"{M.NATURAL_RISK} and {M.HYPOCRITICAL_RISK} minimised"))
        paths.append(md)
        if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            paths.append(pareto_png(study, out_dir / "pareto_front.png",
                                    f"{study.study_name}: Pareto front ({len(prow)} of "
                                    f"{sum(r['state'] == 'COMPLETE' for r in rows)} completed trials)"))
    sess = out_dir / "sessions" / f"session-{session_info['started']}.json"
    sess.parent.mkdir(exist_ok=True)
    sess.write_text(json.dumps({**session_info, "plots_skipped": skipped}, indent=1, default=str))
    for p in paths:
        tracking.retry(c.log_artifact, s.parent_id, str(p))
    tracking.retry(c.log_artifact, s.parent_id, str(sess), "sessions")
    for name, why in skipped.items():
        tracking.retry(c.set_tag, s.parent_id, f"plot_skipped.{name}", why[:250])
        say(f"plot {name} skipped: {why}")

    counts = {st: sum(r["state"] == st for r in rows) for st in STATES}
    n = len(rows)
    summary = {f"n_{st.lower()}": v for st, v in counts.items()}
    summary["trial_epochs"] = sum(int(r[EPOCHS_TRAINED] or 0) for r in rows)
    tracking.log_metrics(c, s.parent_id, summary, step=n)
    if not s.defn.multi_objective and counts["COMPLETE"]:
        best = study.best_trial
        bm = {f"best.{k}": v for k, v in _best_metrics(c, best).items()}
        bm.update({f"best_param.{k}": v for k, v in best.params.items() if isinstance(v, (int, float))})
        tracking.log_metrics(c, s.parent_id, bm, step=n)
        tags = {"best_trial_number": str(best.number), "best_trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
                **{f"best_param.{k}": str(v) for k, v in best.params.items()}}
        for k, v in tags.items():
            tracking.retry(c.set_tag, s.parent_id, k, v)
    if s.defn.multi_objective:
        tracking.retry(c.set_tag, s.parent_id, "pareto_trials",
                       ",".join(str(t.number) for t in sorted(study.best_trials, key=lambda t: t.number)))
    return paths


def _empty(path: Path) -> Path:
    path.write_text("")
    return path


def _best_metrics(c, best) -> dict[str, float]:
    """The best trial's final metrics from its MLflow run (all of them), else its Optuna user attributes."""
    run_id = best.user_attrs.get("mlflow_run_id")
    out: dict[str, float] = {}
    if run_id:
        try:
            out = dict(tracking.retry(c.get_run, run_id).data.metrics)
        except Exception:  # noqa: BLE001 - a run in another tracking store
            out = {}
    out.setdefault(OBJECTIVE, float(best.value))
    for k in (M.NATURAL_RISK, M.HYPOCRITICAL_RISK, EPOCHS_TRAINED):
        if k in best.user_attrs:
            out.setdefault(k, float(best.user_attrs[k]))
    return out


# --- command line ---------------------------------------------------------------------------------------

class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default unless it is None (those flags say in their help what None means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser(defn: SearchDefinition) -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"sweeps/{defn.name}.py", description=defn.description, formatter_class=_Help)
    p.add_argument("--profile", default="auto", help="auto | local | paper | a YAML name under sweeps/configs/; "
                                                     "auto = paper when the Ray cluster has GPUs, else local")
    p.add_argument("--study-name", help="Optuna study; an existing one is continued (default "
                                        f"{defn.name}-<profile>-<timestamp>: a new study)")
    p.add_argument("--storage", help=f"Optuna storage: a JournalStorage file (default ./{DEFAULT_JOURNAL}), "
                                     "sqlite:///PATH, postgresql://..., mysql://..., or redis://HOST:PORT; on a "
                                     "multi-node cluster it must be reachable from every node")
    p.add_argument("--n-trials", type=int, help="trials to run now (added to a continued study); default: the "
                                                "profile's (local 16, paper 32)")
    p.add_argument("--parallel", type=int, help="trials running at once (default: as many as the cluster fits)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (a continued study adds its number of trials)")
    p.add_argument("--trainers" if defn.multi_objective else "--trainer",
                   help="trainers searched, comma-separated (default trades,thrm)" if defn.multi_objective
                   else "the defender's trainer (default thrm)")
    p.add_argument("--eps-range", metavar="LOW,HIGH", help="training eps range, pixel units of [0,1] inputs "
                                                           "(default: local 0.005,0.4; paper 1/255,16/255)")
    p.add_argument("--eps-scale", choices=("log", "linear"), default="log", help="how eps is sampled")
    p.add_argument("--lam", type=float, help="fixed lambda (default 6)" + ("; give this or --lam-range"
                                                                           if defn.multi_objective else ""))
    p.add_argument("--lam-range", metavar="LOW,HIGH", help="search lambda in this range" + (
        " (default: local 0.5,80; paper 1,100)" if defn.multi_objective else " (default: fixed --lam)"))
    p.add_argument("--lam-scale", choices=("log", "linear"), default="log", help="how lambda is sampled")
    p.add_argument("--steps-range", metavar="LOW,HIGH", help="also search the training attack's PGD steps")
    p.add_argument("--steps-scale", choices=("log", "linear"), default="linear", help="how steps are sampled")
    if defn.multi_objective:
        p.add_argument("--population-size", type=int, help="NSGA-II population (default: local 8, paper 16)")
    else:
        p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler (seeded)")
        p.add_argument("--sampler-startup", type=int, help="TPE's random trials before it models (default: local "
                                                           "5, paper 8)")
        p.add_argument("--max-natural-risk", type=float, help="accuracy ceiling of the objective (default: "
                                                              "local 0.15, paper 0.20)")
        p.add_argument("--penalty", type=float, default=10.0,
                       help="objective = hypocritical_risk + PENALTY * max(0, natural_risk - ceiling)")
        p.add_argument("--pruner", choices=PRUNERS, default="median",
                       help="Optuna pruner; halving = successive halving (resources in epochs)")
        p.add_argument("--pruner-startup", type=int, help="median/percentile: completed trials before pruning "
                                                          "(default: local 3, paper 4)")
        p.add_argument("--pruner-warmup", type=int, help="median/percentile: no pruning before this epoch "
                                                         "(default: local 4, paper 20)")
        p.add_argument("--percentile", type=float, default=25.0, help="percentile pruner: keep the best P%%")
        p.add_argument("--reduction-factor", type=int, default=3, help="successive halving / hyperband")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trial field for every trial, e.g. train.epochs=6")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", help=f"MLflow experiment name (default {defn.name}-<profile>)")
    p.add_argument("--cpus-per-trial", type=float, help="default: the profile's")
    p.add_argument("--gpu-fraction", type=float, help="GPU share per trial when the cluster has GPUs")
    p.add_argument("--gpus-per-trial", type=float, help="force a GPU request (autoscaling clusters)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--dry-run", action="store_true", help="print the study it would run and exit")
    p.add_argument("--chaos-exit-after-epoch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--chaos-dir", help=argparse.SUPPRESS)
    return p


def run_search(defn: SearchDefinition, argv: list[str] | None = None, configs_dir: Path | None = None) -> int:
    """Run a search as its script does (exit status; user errors as one line), leaving Ray running."""
    from hyporay.cluster.resources import bind_loopback_if_local

    args = build_parser(defn).parse_args(argv)
    bind_loopback_if_local(args.address)  # before anything imports ray
    configs = configs_dir or Path(__file__).resolve().parents[2] / "sweeps" / "configs"
    return run_user_command(lambda: _main(defn, args, configs), defn.name)


def main(defn: SearchDefinition, argv: list[str] | None = None, configs_dir: Path | None = None) -> int:
    """The scripts' entry point: ``run_search``, then Ray shut down."""
    from hyporay.cluster.resources import shutdown_ray

    try:
        return run_search(defn, argv, configs_dir)
    finally:
        shutdown_ray()


def base_trial(defn: SearchDefinition, args, prof: dict, space: list[Param], defaults: dict, workdir: Path) -> dict:
    """The trial config every trial starts from (validated): the profile's trial section, the search's own
    fields (trainer, a fixed lambda), then ``--set``; data paths absolute (Ray workers run elsewhere)."""
    from hyporay.engine.driver import absolute_paths

    over: dict = {}
    for k, v in defn.defaults.items():
        _set(over, k, v)
    if not defn.multi_objective and args.trainer:
        _set(over, "train.trainer", args.trainer)
    if not any(p.key == "train.lam" for p in space):
        _set(over, "train.lam", args.lam if args.lam is not None else defaults["lam"])
    base = merge(merge(prof.get("trial", {}), over), parse_overrides(args.set))
    return load_config(absolute_paths(base, workdir)).model_dump()


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _positive(name: str, v, minimum: float = 1) -> None:
    if v is not None and v < minimum:
        raise ConfigError(f"{name}: must be >= {minimum:g}, got {v:g}")


def _main(defn: SearchDefinition, args, configs_dir: Path) -> int:  # noqa: C901 - the driver, step by step
    from hyporay.engine.driver import choose_profile, load_profile

    workdir = Path.cwd()
    # 1. everything that needs no profile: flags, search space, storage (before Ray starts, so errors are fast)
    for name, v, least in (("--n-trials", args.n_trials, 1), ("--parallel", args.parallel, 1),
                           ("--population-size", getattr(args, "population_size", None), 2),
                           ("--sampler-startup", getattr(args, "sampler_startup", None), 0),
                           ("--penalty", getattr(args, "penalty", None), 0)):
        _positive(name, v, least)
    if getattr(args, "max_natural_risk", None) is not None and not 0 <= args.max_natural_risk <= 1:
        raise ConfigError(f"--max-natural-risk: must be in [0, 1], got {args.max_natural_risk:g}")
    if args.lam is not None and args.lam < 0:
        raise ConfigError(f"--lam: must be >= 0, got {args.lam:g}")
    if args.study_name is not None and not _STUDY_NAME.match(args.study_name):
        raise ConfigError(f"--study-name: {args.study_name!r}: use letters, digits and _ . : - (at most 200)")
    if args.profile not in PROFILES:
        load_profile(configs_dir, args.profile)  # raises the one-line error listing the known ones
    build_space(defn, args, SEARCH_DEFAULTS["local"])  # flag errors now; the profile's defaults come later
    parse_overrides(args.set)  # a malformed --set fails here, before Ray
    storage = resolve_storage(args.storage, workdir)
    if storage_kind(storage) != "journal" and not args.dry_run:
        open_storage(storage)  # connects: a wrong URL fails here, in one line
    elif storage_kind(storage) == "journal" and not Path(storage).parent.is_dir():
        raise StorageError(f"--storage: directory {Path(storage).parent} does not exist")
    tracking_uri = args.tracking_uri or tracking.default_tracking_uri(workdir)
    if not args.dry_run:
        tracking.check_reachable(tracking_uri)

    # 2. Ray and the profile
    from hyporay.cluster.resources import cluster_info, init_ray, trial_resources

    info = None
    if not args.dry_run or args.profile == "auto" and (args.address or os.environ.get("RAY_ADDRESS")):
        init_ray(args.address)
        info = cluster_info()
    import torch

    profile, why = choose_profile(args.profile, info, torch.cuda.device_count())
    _say(f"profile: {profile} ({why})")
    prof = load_profile(configs_dir, profile)
    d = search_defaults(profile, prof)
    space = build_space(defn, args, d)
    base = base_trial(defn, args, prof, space, d, workdir)
    for p in space:  # both ends of every range make valid trials
        for v in ((p.low, p.high) if p.choices is None else p.choices):
            trial_config(base, space, {p.name: v})
    n_trials = args.n_trials or int(d["n_trials"])
    objective = None if defn.multi_objective else Objective(
        d["max_natural_risk"] if args.max_natural_risk is None else args.max_natural_risk, args.penalty)
    pspec = {"name": "none"} if defn.multi_objective else pruner_spec(args, d, base)
    make_pruner(pspec)
    evals = [e for e in range(1, base["train"]["epochs"]) if e % base["eval"]["every"] == 0]
    if pspec["name"] != "none" and not [e for e in evals if e >= pspec.get("warmup", 0)]:
        _say(f"note: no evaluation before the last epoch is at or after the warm-up ({pspec.get('warmup', 0)}): "
             f"nothing can be pruned (epochs {base['train']['epochs']}, eval every {base['eval']['every']})")
    study_name = args.study_name or f"{defn.name}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    res_prof = prof.get("resources", {})
    cpus = args.cpus_per_trial or res_prof.get("cpus_per_trial", 1)
    gfrac = args.gpu_fraction or res_prof.get("gpu_fraction", 1.0)
    objective_text = (f"minimise ({M.NATURAL_RISK}, {M.HYPOCRITICAL_RISK}), NSGA-II" if objective is None else
                      f"minimise {M.HYPOCRITICAL_RISK} + {objective.penalty:g} * max(0, {M.NATURAL_RISK} - "
                      f"{objective.max_natural_risk:g})")
    if args.dry_run:
        _say(f"{defn.name}: study {study_name} on {storage}: {n_trials} trials, {objective_text}")
        _say(f"space: {'; '.join(p.describe() for p in space)}")
        if objective is not None:
            _say(f"sampler: {args.sampler} (seed {args.seed}); pruner: {describe_pruner(pspec)}")
        b = load_config(base)
        lam = "searched" if any(p.key == "train.lam" for p in space) else f"{b.train.lam:g}"
        trainer = "searched" if any(p.key == "train.trainer" for p in space) else b.train.trainer
        _say(f"trial: trainer {trainer}, lam {lam}, data {b.data.name}, model {b.model.name}, "
             f"{b.train.epochs} epochs, eval every {b.eval.every}")
        _say(f"eval attack: {b.eval.attack.spec().describe()}")
        return 0

    resources = trial_resources(info, cpus_per_trial=cpus, gpu_fraction=gfrac, gpus_per_trial=args.gpus_per_trial)
    device = "cuda" if resources.get("gpu") else "cpu"
    base = load_config(base, {"device": device, "threads": base.get("threads") or max(1, int(resources["cpu"]))}
                       ).model_dump()
    fits = int(info.cpus // max(resources["cpu"], 1e-9)) if resources["cpu"] else n_trials
    if resources.get("gpu"):
        fits = min(fits, int(info.gpus // resources["gpu"]))
    parallel = max(1, min(args.parallel or fits or 1, n_trials))
    if info.nodes > 1 and storage_kind(storage) == "journal":
        _say(f"note: {info.nodes} nodes: the journal file {storage} must be on storage every node shares (NFS), "
             "else pass --storage postgresql://... or redis://...")

    # 3. the study (created or continued)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostorage = open_storage(storage)
    existing = {st.study_name: st for st in ostorage.get_all_studies()}
    prior = existing.get(study_name)
    n_prior = 0
    signature = {"search": defn.name, "profile": profile,
                 "objective": asdict(objective) if objective else "pareto",
                 "trainer": base["train"]["trainer"] if not defn.multi_objective else None}
    if prior is not None:
        want = len(prior.directions)
        if want != (2 if defn.multi_objective else 1):
            raise ConfigError(f"--study-name: {study_name!r} is a {want}-objective study in {storage}; "
                              f"{defn.name} needs a {'2' if defn.multi_objective else '1'}-objective one")
        old = prior.user_attrs.get("hyporay.signature")
        if old and old != json.loads(json.dumps(signature)):
            diff = [k for k in signature if old.get(k) != json.loads(json.dumps(signature)).get(k)]
            raise ConfigError(f"--study-name: study {study_name!r} was made with other settings ({diff[0]}: "
                              f"{old.get(diff[0])}); pass the same or choose another --study-name")
        n_prior = len(ostorage.get_all_trials(prior._study_id, deepcopy=False))
    seed = args.seed + n_prior
    if defn.multi_objective:
        sampler = make_sampler(defn, "nsga2", seed, 0, args.population_size or int(d["population"]))
    else:
        startup = int(d["sampler_startup"]) if args.sampler_startup is None else args.sampler_startup
        sampler = make_sampler(defn, args.sampler, seed, startup, 0)
    kw = {"directions": ["minimize", "minimize"]} if defn.multi_objective else {"direction": "minimize"}
    study = optuna.create_study(storage=ostorage, study_name=study_name, sampler=sampler,
                                pruner=make_pruner(pspec), load_if_exists=True, **kw)
    if prior is None:
        study.set_user_attr("hyporay.signature", signature)
        study.set_user_attr("hyporay.space", {p.name: p.key for p in space})

    # 4. MLflow experiment and the study's parent run (driver only)
    experiment = args.experiment or f"{defn.name}-{profile}"
    exp_id = tracking.ensure_experiment(tracking_uri, experiment)
    c = tracking.client(tracking_uri)
    parent_id, created = find_or_create_parent(c, exp_id, study_name, storage, {
        tracking.SWEEP_TAG: defn.name, "profile": profile})
    settings = {"search": defn.name, "profile": profile, "study_name": study_name, "storage": storage,
                "objective": objective_text, "space": [p.describe() for p in space],
                "sampler": "nsga2" if defn.multi_objective else args.sampler, "seed": args.seed,
                "pruner": describe_pruner(pspec), "resources": resources}
    if created:
        tracking.log_params(c, parent_id, settings)
    fail_stale_trials(study, c, exp_id, parent_id, _say)

    # 5. the data set once into the object store; then the trials
    import ray

    from hyporay.experiment import load_trial_data

    data_ref = ray.put(load_trial_data(load_config(base)))
    chaos = None
    if args.chaos_exit_after_epoch is not None:
        chaos = {"epoch": args.chaos_exit_after_epoch, "marker_dir": str(Path(args.chaos_dir or workdir).resolve())}
    _say(f"{defn.name}: study {study_name} ({'continued, ' + str(n_prior) + ' trials so far' if prior else 'new'}) "
         f"on {storage}")
    _say(f"  {objective_text}")
    _say(f"  space: {'; '.join(p.describe() for p in space)}; trainer "
         f"{base['train']['trainer'] if not defn.multi_objective else 'searched'}, lam "
         f"{'searched' if any(p.name == 'lam' for p in space) else format(base['train']['lam'], 'g')}, "
         f"{base['train']['epochs']} epochs, eval every {base['eval']['every']}")
    _say(f"  sampler {type(sampler).__name__} (seed {seed}); pruner {describe_pruner(pspec)}")
    _say(f"  {n_trials} trials, {parallel} at a time, {resources} each, on {info.nodes} node(s) "
         f"({info.cpus:g} CPU, {info.gpus:g} GPU)")
    _say(f"MLflow: {tracking_uri}  experiment {experiment!r} (id {exp_id})  parent run {parent_id}")
    s = Session(defn, study, space, base, storage, pspec, objective, n_trials, parallel, resources, tracking_uri,
                exp_id, parent_id, profile, data_ref, chaos)
    started = time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    try:
        outcomes = run_trials(s, _say)
    except KeyboardInterrupt:
        tracking.retry(c.set_terminated, parent_id, "KILLED")
        _say(f"interrupted; continue with --study-name {study_name}" + _storage_flag(args))
        raise

    # 6. artefacts on the parent, then where to look
    art_dir = workdir / "optuna_runs" / study_name
    paths = publish(s, art_dir, {"started": started, **settings, "n_trials": n_trials, "parallel": parallel,
                                 "seconds": round(time.perf_counter() - t0, 1),
                                 "trials": [asdict(o) for o in outcomes]}, _say)
    tracking.retry(c.set_terminated, parent_id, "FINISHED")
    _summary(s, outcomes, paths, experiment, args, time.perf_counter() - t0)
    return 1 if outcomes and all(o.state == "FAIL" for o in outcomes) else 0


def _storage_flag(args) -> str:
    return f" --storage {args.storage}" if args.storage else ""


def _summary(s: Session, outcomes: list[TrialOutcome], paths: list[Path], experiment: str, args, seconds: float
             ) -> None:
    study = s.study
    every = study.get_trials(deepcopy=False)
    counts = {st: sum(t.state.name == st for t in every) for st in STATES}
    epochs = int(s.base["train"]["epochs"])
    spent = sum(o.epochs for o in outcomes)
    _say()
    _say(f"study {study.study_name}: {len(every)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
         f"this run: {len(outcomes)} trials, {spent} trial-epochs of {len(outcomes) * epochs} without pruning, "
         f"{seconds:.0f} s")
    if s.defn.multi_objective:
        rows = pareto_rows(study)
        _say(f"Pareto set: {len(rows)} trial(s)")
        for r in rows:
            _say(f"  trial {r['trial']:3d}  natural {r[M.NATURAL_RISK]:.3f}  hypocritical {r[M.HYPOCRITICAL_RISK]:.3f}"
                 f"  {_fmt_params({k: v for k, v in r.items() if k in {p.name for p in s.space}})}")
    elif counts["COMPLETE"]:
        b = study.best_trial
        nat, hyp = b.user_attrs.get(M.NATURAL_RISK, math.nan), b.user_attrs.get(M.HYPOCRITICAL_RISK, math.nan)
        ok = b.user_attrs.get("feasible")
        _say(f"best trial {b.number}: objective {b.value:.4f}  ({M.HYPOCRITICAL_RISK} {hyp:.3f}, {M.NATURAL_RISK} "
             f"{nat:.3f} {'<=' if ok else '>'} {s.objective.max_natural_risk:g})  {_fmt_params(b.params)}")
        if not ok:
            _say("  no trial met the natural-risk ceiling: widen the search or raise --max-natural-risk")
    fails = [o for o in outcomes if o.state == "FAIL"]
    for o in fails[:3]:
        _say(f"failed: trial {o.number}: {o.reason}")
    _say(f"tracking URI:   {s.tracking_uri}")
    _say(f"experiment:     {experiment} (id {s.experiment_id})")
    _say(f"parent run:     {s.parent_id}")
    for p in paths:
        _say(f"artefact:       {p}")
    if s.tracking_uri.startswith("sqlite:///"):
        _say(f"open the UI:    mlflow server --backend-store-uri {s.tracking_uri} --host 127.0.0.1 "
             f"--port {tracking.UI_PORT}")
    _say(f"runs:           {tracking.runs_link(s.tracking_uri, s.experiment_id)}")
    _say(f"watch live:     optuna-dashboard {s.storage}")
    _say(f"continue with:  python sweeps/{s.defn.name}.py --profile {s.profile} --study-name {study.study_name}"
         + _storage_flag(args))
