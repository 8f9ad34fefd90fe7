"""Sweeps on Ray Tune: a declarative definition, profiles, the Tuner, MLflow parent runs and frontiers.

A sweep script (sweeps/*.py) is a ``SweepDefinition``: its axes (dotted trial-config keys and their values),
which axes the command line can override, and whether it ends with a trade-off frontier. ``main`` does the
rest: profile choice, Ray, MLflow, the Tuner (or ``Tuner.restore``), artefacts and the closing summary.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyporay import provenance
from hyporay.cliutil import OneLineParser, run_user_command
from hyporay.config import ConfigError, load_config, merge, parse_overrides
from hyporay.analysis import frontier as F
from hyporay.engine import tracking
from hyporay.cluster.resources import (ClusterInfo, bind_loopback_if_local, cluster_info, init_ray, joins_cluster,
                                   shutdown_ray, trial_resources)
from hyporay.engine.trainable import data_key, run_name, tune_trainable

STATE_FILE = "hyporay_sweep.json"
PROFILES = ("auto", "local", "paper")


@dataclass
class Axis:
    key: str                       # dotted trial-config key, e.g. "train.lam"
    values: list[Any] | None       # None: take the profile's value for this key (``sweep.<flag>``)
    flag: str | None = None        # command-line flag that overrides it, e.g. "--lambdas"
    type: Callable = str
    help: str = ""


@dataclass
class SweepDefinition:
    name: str
    description: str
    axes: list[Axis]
    frontier: bool = True
    after: Callable | None = None  # fn(context dict) -> list of extra artefact paths (tables, ...)
    tags: dict[str, str] = field(default_factory=dict)
    label_key: str = F.DEFAULT_LABEL  # trial field that labels frontier points (train.lam, model.name, ...)
    # trial fields of this sweep (dotted key -> value): over the profile's trial, under --set and the axes
    defaults: dict[str, Any] = field(default_factory=dict)
    # fn(base trial dict, {axis key: values}, seeds, profile name) -> trial dicts: replaces the axes' product
    # (sweeps made of several parts, e.g. reproduce.py); identical trials are run once
    grid: Callable | None = None
    options: Callable | None = None  # fn(argparse parser): extra command-line options (``args`` in ``after``)
    seeds: dict[str, int] = field(default_factory=dict)  # profile -> default --seeds (over the profile's)


# run names show the swept fields that trainer-lam-model-seed does not
_NAMED_KEYS = ("train.trainer", "train.lam", "model.name", "seed")


def name_keys(defn: SweepDefinition) -> list[str]:
    return [a.key for a in defn.axes if a.key not in _NAMED_KEYS]


# --- profiles -------------------------------------------------------------------------------------------

def is_profile_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def profile_name(ref: str) -> str:
    """The name a profile goes by (experiment and run names): ``local``, or a profile file's stem."""
    return Path(ref).stem if is_profile_path(ref) else ref


def load_profile(configs_dir: Path, name: str) -> dict:
    """A profile by name (``sweeps/configs/<name>.yaml``) or by path (``--profile my/profile.yaml``)."""
    path = Path(name).expanduser() if is_profile_path(name) else configs_dir / f"{name}.yaml"
    if not path.is_file():
        if is_profile_path(name):
            raise ConfigError(f"profile: no file {name}")
        known = ", ".join(sorted(p.stem for p in configs_dir.glob("*.yaml")))
        raise ConfigError(f"profile: unknown {name!r}; known: auto, {known}, or a path to a profile .yaml")
    try:
        prof = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(prof, dict):
        raise ConfigError(f"profile: {path} must hold a mapping (description, trial, seeds, resources, sweep)")
    unknown = set(prof) - {"description", "trial", "seeds", "resources", "sweep"}
    if unknown:
        raise ConfigError(f"profile {profile_name(name)}: unknown key {sorted(unknown)[0]!r}; known: description, "
                          "trial, seeds, resources, sweep")
    return prof


def choose_profile(requested: str, info: ClusterInfo | None, local_gpus: int) -> tuple[str, str]:
    """(profile, reason). ``auto`` picks ``paper`` when the cluster has GPUs, ``local`` otherwise."""
    if requested != "auto":
        return requested, "requested with --profile"
    gpus = info.gpus if info is not None else local_gpus
    where = f"Ray cluster at {info.address}" if info is not None else "this machine"
    if gpus > 0:
        return "paper", f"{where} has {gpus:g} GPU(s)"
    return "local", f"{where} has no GPU"


# --- the grid -------------------------------------------------------------------------------------------

def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def build_trials(base: dict, axes: list[Axis], values: dict[str, list], seeds: list[int]) -> list[dict]:
    """Every combination of the axes' values x seeds, each a full trial-config dict (validated)."""
    keys = [a.key for a in axes]
    trials = []
    for combo in itertools.product(*(values[k] for k in keys)):
        for seed in seeds:
            over: dict = {"seed": seed}
            for k, v in zip(keys, combo):
                _set(over, k, v)
            cfg = load_config(merge(base, over))
            trials.append(cfg.model_dump())
    return trials


def absolute_paths(trial_base: dict, workdir: Path) -> dict:
    """Ray runs trials in other working directories: make data paths and ``imports`` files absolute on the
    driver."""
    def absolute(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (workdir / q).resolve())

    data = dict(trial_base.get("data", {}))
    data["root"] = absolute(data.get("root", "data"))
    if data.get("cache_dir"):
        data["cache_dir"] = absolute(data["cache_dir"])
    out = {**trial_base, "data": data}
    if isinstance(trial_base.get("imports"), list):
        from hyporay.plugins import _is_path

        out["imports"] = [absolute(i) if isinstance(i, str) and _is_path(i) else i for i in trial_base["imports"]]
    return out


def with_plugins(trials: list[dict]) -> list[dict]:
    """Each trial's ``imports`` completed with the modules that registered the data set and models it names
    (a data set registered in the sweep's own script reaches the Ray workers without a flag)."""
    from hyporay.plugins import needed_for

    out = []
    for t in trials:
        need = [m for m in needed_for(t) if m not in (t.get("imports") or [])]
        out.append({**t, "imports": [*(t.get("imports") or []), *need]} if need else t)
    return out


# --- command line ---------------------------------------------------------------------------------------

def build_parser(defn: SweepDefinition) -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"sweeps/{defn.name}.py", description=defn.description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", default="auto", help="auto | local | paper | a YAML name under sweeps/configs/ | a "
                                                     "path to a profile .yaml; auto = paper when the Ray cluster has "
                                                     "GPUs, else local")
    for a in defn.axes:
        if a.flag:
            p.add_argument(a.flag, help=a.help + " (comma-separated; default: the profile's)")
    p.add_argument("--seeds", type=count(1), help="repeat every trial with seeds 0..N-1 (default: the profile's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trial field for every trial, e.g. train.epochs=3")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default <sweep>-<profile>)")
    p.add_argument("--storage-path", help="Ray Tune storage: local dir, NFS path or s3://bucket/prefix (shared on "
                                          "a cluster; default: HYPORAY_STORAGE_PATH, else hyporay_runs)")
    p.add_argument("--name", help="run name (default <sweep>-<profile>-<timestamp>-<random>)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="NAME",
                   help="continue an interrupted sweep (the latest one, or NAME) without re-running finished trials")
    p.add_argument("--max-failures", type=count(0), default=2, help="retries per trial, from its last checkpoint")
    p.add_argument("--cpus-per-trial", type=positive, help="CPUs per trial (default: the profile's)")
    p.add_argument("--gpu-fraction", type=positive, help="GPU share per trial when the cluster has GPUs, e.g. 0.5 "
                                                         "packs two trials per GPU (default: the profile's)")
    p.add_argument("--gpus-per-trial", type=non_negative, help="force a GPU request (autoscaling clusters)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--audit", action="store_true",
                   help="audit each finished trial's final checkpoint (hyporay audit, default settings): MLflow "
                        "artefacts audit.md + audit.json and tag audit=pass|flag on its run (a --resume keeps the "
                        "choice the sweep started with)")
    p.add_argument("--dry-run", action="store_true", help="print the trials it would run and exit")
    p.add_argument("--chaos-exit-after-epoch", type=int, help=argparse.SUPPRESS)
    if defn.options is not None:
        defn.options(p)
    p.add_argument("--chaos-dir", help=argparse.SUPPRESS)
    return p


def _number(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read {raw!r} as a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {raw}")
    return v


def positive(raw: str) -> float:
    """argparse type: a finite number > 0 (resource flags are checked before Ray starts)."""
    v = _number(raw)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {raw}")
    return v


def non_negative(raw: str) -> float:
    v = _number(raw)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return v


def count(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``."""
    def parse(raw: str) -> int:
        try:
            v = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {raw!r} as a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    parse.__name__ = "count"
    return parse


def _parse_list(raw: str, typ: Callable, flag: str) -> list:
    out = []
    for tok in raw.split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            out.append(typ(tok))
        except ValueError:
            raise ConfigError(f"{flag}: cannot read {tok!r} as {typ.__name__}") from None
    if not out:
        raise ConfigError(f"{flag}: give at least one value")
    return out


def _num(tok: str) -> float:
    v = float(tok)
    return int(v) if v.is_integer() else v


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def main(defn: SweepDefinition, argv: list[str] | None = None, configs_dir: Path | None = None) -> int:
    args = build_parser(defn).parse_args(argv)
    bind_loopback_if_local(args.address)  # before anything imports ray
    try:
        return run_user_command(
            lambda: _main(defn, args, configs_dir or _configs_dir()), defn.name)
    finally:
        shutdown_ray()


def _configs_dir() -> Path:
    """sweeps/configs beside the script; `ray submit` copies the script alone to ~ on the head, so fall back to
    the checkout hyporay is installed from (pip install -e, as cluster.yaml does)."""
    beside = Path(sys.argv[0]).resolve().parent / "configs"
    installed = Path(__file__).resolve().parents[2] / "sweeps" / "configs"
    return beside if beside.is_dir() or not installed.is_dir() else installed


def _main(defn: SweepDefinition, args, configs_dir: Path) -> int:
    workdir = Path.cwd()
    if args.profile not in PROFILES:
        load_profile(configs_dir, args.profile)  # a missing or malformed profile: one line, now
    # on a cluster both come from the environment cluster.yaml sets up (one place for each)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(workdir)
    raw_storage = args.storage_path or os.environ.get("HYPORAY_STORAGE_PATH") or "hyporay_runs"
    storage = raw_storage if "://" in raw_storage else str((workdir / raw_storage).resolve())

    # Cheap checks first: nothing starts (Ray, MLflow runs, data) before the inputs are known to be good.
    resumed = json.loads(_find_state(storage, defn.name, args.resume).read_text()) if args.resume else None
    if not resumed and args.name and "://" not in storage and (Path(storage) / args.name).exists():
        raise ConfigError(f"--name: a sweep named {args.name!r} already exists under {storage}; --resume "
                          f"{args.name} continues it, or choose another --name")
    if not args.dry_run:
        tracking.check_reachable(resumed["tracking_uri"] if resumed else tracking_uri)

    # 1. which profile: only "auto" on a cluster needs to connect first; a local Ray has this machine's GPUs, so
    #    nothing starts before every trial is validated
    info = None
    if args.profile == "auto" and not resumed and joins_cluster(args.address):
        init_ray(args.address)
        info = cluster_info()
    import torch

    if resumed:
        profile_ref = resumed.get("profile_ref", resumed["profile"])
        why = f"the profile of the resumed sweep {resumed['name']}"
    else:
        profile_ref, why = choose_profile(args.profile, info, torch.cuda.device_count())
        if is_profile_path(profile_ref):
            profile_ref = str(Path(profile_ref).expanduser().resolve())
    profile = profile_name(profile_ref)
    _say(f"profile: {profile} ({why})")
    prof = load_profile(configs_dir, profile_ref)

    # 2. the trials, all validated before any work
    sweep_defaults: dict = {}
    for k, v in defn.defaults.items():
        _set(sweep_defaults, k, v)
    base = absolute_paths(merge(merge(prof.get("trial", {}), sweep_defaults), parse_overrides(args.set)), workdir)
    values = {}
    for a in defn.axes:
        raw = getattr(args, a.flag.lstrip("-").replace("-", "_")) if a.flag else None
        if raw is not None:
            values[a.key] = _parse_list(raw, a.type, a.flag)
        elif a.values is not None:
            values[a.key] = list(a.values)
        else:
            prof_vals = prof.get("sweep", {}).get(a.key)
            if not prof_vals:
                raise ConfigError(f"profile {profile}: sweep.{a.key} is missing (values of the {a.flag} axis)")
            values[a.key] = list(prof_vals)
    n_seeds = args.seeds if args.seeds is not None else int(defn.seeds.get(profile, prof.get("seeds", 1)))
    if n_seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {n_seeds}")
    if defn.grid is None:
        trials = build_trials(base, defn.axes, values, list(range(n_seeds)))
    else:
        trials = [load_config(t).model_dump() for t in defn.grid(base, values, list(range(n_seeds)), profile)]
        trials = list({json.dumps(t, sort_keys=True, default=str): t for t in trials}.values())
    trials = with_plugins(trials)
    res_prof = prof.get("resources", {})
    cpus = args.cpus_per_trial or res_prof.get("cpus_per_trial", 1)
    gfrac = args.gpu_fraction or res_prof.get("gpu_fraction", 1.0)

    if args.dry_run:
        shape = (' x '.join(f'{len(v)} {k}' for k, v in values.items()) if defn.grid is None
                 else ', '.join(f'{k} {v}' for k, v in values.items()) + ',')
        _say(f"{defn.name}: {len(trials)} trials ({shape} x {n_seeds} seeds), profile {profile}")
        for t in trials:
            _say(f"  {run_name(t, name_keys(defn)):<40s} data={t['data']['name']} variant={t['variant']['name']} "
                 f"epochs={t['train']['epochs']} train[{load_config(t).train.attack.spec().describe()}]")
        _say(f"eval attack: {load_config(trials[0]).eval.attack.spec().describe()}")
        return 0

    if resumed:
        trials = resumed["trials"]
    # data sets once into the object store, keyed by data config; a missing one, a model that cannot be built on
    # it or a budget beyond the input range fails here, before Ray/MLflow
    datasets = load_and_check(trials)
    if info is None:
        init_ray(args.address)
        info = cluster_info()
    resources = trial_resources(info, cpus_per_trial=cpus, gpu_fraction=gfrac, gpus_per_trial=args.gpus_per_trial)
    device = "cuda" if resources.get("gpu") else "cpu"
    threads = max(1, int(resources["cpu"]))
    if not resumed:
        trials = [load_config(t, {"device": device, "threads": t.get("threads") or threads}).model_dump()
                  for t in trials]

    # 3. MLflow experiment + parent run (driver only), or the ones of the sweep being resumed
    from ray import tune

    experiment = args.experiment or f"{defn.name}-{profile}"
    if resumed:
        state = resumed
        run_dir_name, exp_id, parent_id = state["name"], state["experiment_id"], state["parent_run_id"]
        tracking_uri = state["tracking_uri"]
        _say(f"resuming {run_dir_name} (parent run {parent_id})")
    else:
        # a random suffix: two sweeps started in the same second get their own Tune directories
        run_dir_name = args.name or f"{defn.name}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        exp_id = tracking.ensure_experiment(tracking_uri, experiment)
        c = tracking.client(tracking_uri)
        parent = tracking.retry(c.create_run, exp_id, run_name=run_dir_name, tags={
            tracking.ROLE_TAG: "sweep", tracking.SWEEP_TAG: defn.name, "profile": profile,
            **({tracking.FRONTIER_LABEL_TAG: defn.label_key} if defn.frontier else {}), **defn.tags,
            **tracking.provenance_tags(provenance.code()), provenance.CONFIG: provenance.plan_hash(trials)})
        parent_id = parent.info.run_id
        tracking.log_params(c, parent_id, {"sweep": defn.name, "profile": profile, "n_trials": len(trials),
                                           "seeds": n_seeds, **{f"axis.{k}": v for k, v in values.items()},
                                           "resources": resources, "storage_path": storage})
    meta = {"tracking_uri": tracking_uri, "experiment_id": exp_id, "parent_run_id": parent_id,
            "tags": {"profile": profile, tracking.SWEEP_TAG: defn.name}, "name_keys": name_keys(defn)}
    if args.audit:
        meta["audit"] = {}  # run_audit options (empty: the defaults of `hyporay audit`)
    if args.chaos_exit_after_epoch is not None:
        meta["chaos_exit_after_epoch"] = {"epoch": args.chaos_exit_after_epoch, "marker_dir": args.chaos_dir}

    # 4. the trainable, with the data sets in the object store
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, datasets=datasets), resources)

    _say(f"{defn.name}: {len(trials)} trials on {info.nodes} node(s) ({info.cpus:g} CPU, {info.gpus:g} GPU), "
         f"{resources} per trial; Tune storage {storage}/{run_dir_name}")
    _say(f"MLflow: {tracking_uri}  experiment {experiment!r} (id {exp_id})  parent run {parent_id}")
    exp_path = f"{storage.rstrip('/')}/{run_dir_name}"
    if resumed:
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    else:
        _write_state(storage, run_dir_name, {"name": run_dir_name, "sweep": defn.name, "profile": profile,
                                             "profile_ref": profile_ref, "command": command_line(),
                                             "experiment": experiment, "experiment_id": exp_id,
                                             "parent_run_id": parent_id, "tracking_uri": tracking_uri,
                                             "trials": trials})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials), "meta": meta},
            tune_config=tune.TuneConfig(reuse_actors=True),  # same resources: skip a worker start per trial
            run_config=tune.RunConfig(name=run_dir_name, storage_path=storage, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=args.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    results = tuner.fit()
    errors = [r for r in results if r.error is not None]

    # 5. artefacts on the parent run
    c = tracking.client(tracking_uri)
    runs = tracking.child_runs(c, exp_id, parent_id)
    # a trial is done when its MLflow run is FINISHED, or FAILED because it diverged (a result: not retried);
    # Tune's own count calls pending trials of an interrupted run terminated; what is neither done nor errored
    # was interrupted (Ctrl-C)
    finished = sum(r.info.status == "FINISHED" for r in runs)
    diverged = sum(tracking.is_final(r) and r.info.status == "FAILED" for r in runs)
    degenerate = sum(r.data.tags.get(tracking.DEGENERATE_TAG) == "true" for r in runs)
    unfinished = len(trials) - finished - diverged - len(errors)
    ctx = {"runs": runs, "client": c, "parent_run_id": parent_id, "experiment_id": exp_id, "profile": profile,
           "trials": trials, "args": args}
    artefacts: list[Path] = []
    art_dir = Path(storage if "://" not in storage else workdir / "hyporay_runs") / run_dir_name / "artefacts"
    points: list[F.FrontierPoint] = []
    if defn.frontier:
        fr = F.build(runs, art_dir, F.title_for(defn.name, profile, runs), defn.label_key)
        points = fr.points
        artefacts += fr.artefacts
    if defn.after is not None:
        artefacts += defn.after(ctx | {"out_dir": art_dir})
    view = F.publish(c, tracking_uri, exp_id, parent_id, runs, artefacts)
    tracking.retry(c.set_tag, parent_id, "errored_trials", str(len(errors)))
    if not unfinished:  # an interrupted sweep's parent stays RUNNING until --resume completes it
        tracking.retry(c.set_terminated, parent_id, "FAILED" if len(errors) == len(trials) else "FINISHED")

    # 6. where to look
    _say()
    if points:
        _say(F.table(points))
        _say()
    _say(f"trials: {finished} finished, {diverged} diverged, {len(errors)} failed, {unfinished} not finished"
         + (f" ({', '.join(str(r.error).splitlines()[0][:80] for r in errors[:3])})" if errors else ""))
    if diverged or degenerate:
        _say(f"left out of every frontier and table: {diverged} diverged, {degenerate} degenerate (constant or "
             "non-finite model): their risks are not results")
    _say(f"tracking URI:   {tracking_uri}")
    _say(f"experiment:     {experiment} (id {exp_id})")
    _say(f"parent run:     {parent_id}")
    for a in artefacts:
        _say(f"artefact:       {a}")
    if tracking_uri.startswith("sqlite:///"):
        _say(f"open the UI:    mlflow server --backend-store-uri {tracking_uri} --host 127.0.0.1 --port {tracking.UI_PORT}")
    _say(f"runs:           {tracking.runs_link(tracking_uri, exp_id)}")
    if view:
        _say(f"frontier chart: {view}")
    if errors or unfinished:
        _say(f"resume with:    {resume_command(run_dir_name, args)}")
    return 130 if unfinished else 1 if errors else 0


def load_and_check(trials: list[dict]) -> dict:
    """The trials' data sets (keyed by ``data_key``), each loaded once, after checking every trial against its
    data: the attack budgets (``check_budget``) and the model, built once per architecture, options and input
    shape (a bad option value fails here in one line, not in every Ray worker)."""
    from hyporay.experiment import check_budget, load_trial_data, make_model

    datasets, built = {}, set()
    for t in trials:
        k = data_key(t)
        cfg = load_config(t)
        if k not in datasets:
            datasets[k] = load_trial_data(cfg)
        ds = datasets[k]
        check_budget(cfg, ds.in_shape)
        arch = (cfg.model.name, json.dumps(cfg.model.kwargs, sort_keys=True, default=str), ds.in_shape,
                ds.num_classes)
        if arch not in built:
            make_model(cfg, ds)
            built.add(arch)
    return datasets


def command_line() -> str:
    """The command this process was started with, as a user would retype it from the same directory."""
    import shlex

    return "python " + shlex.join(sys.argv)


def resume_command(name: str, args) -> str:
    """``python <the script that ran> --resume NAME`` (+ the storage and tracking flags it was given): runs as
    printed from the directory the sweep was started in, whichever script started it."""
    import shlex

    extra = []
    for flag, value in (("--storage-path", args.storage_path), ("--tracking-uri", args.tracking_uri)):
        if value:
            extra += [flag, value]
    return "python " + shlex.join([sys.argv[0], "--resume", name, *extra])


def _write_state(storage: str, name: str, state: dict) -> None:
    if "://" in storage:  # remote storage: keep the driver-side state locally too
        path = Path("hyporay_runs") / name / STATE_FILE
    else:
        path = Path(storage) / name / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1, default=str))


def _find_state(storage: str, sweep: str, which: str) -> Path:
    root = Path(storage) if "://" not in storage else Path("hyporay_runs")
    if which != "latest":
        p = root / which / STATE_FILE
        if not p.is_file():
            raise ConfigError(f"--resume: no sweep named {which!r} under {root}")
        return p
    found = sorted((p for p in root.glob(f"*/{STATE_FILE}") if json.loads(p.read_text()).get("sweep") == sweep),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"--resume: no interrupted {sweep} sweep under {root}")
    return found[-1]
