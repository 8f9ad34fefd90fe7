"""What a sweep is: its axes, its grid of planned trials (each with the tags the grid knows: the parts of the paper
it serves, the frontier curves it feeds), and the profiles it runs under.

Light on purpose: nothing here imports torch, pydantic, ray or mlflow at import time (``--help`` answers at once).
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyporay.dotted import flatten, get, put
from hyporay.tracking.tags import CURVES_TAG, PARTS_TAG

DEFAULT_LABEL = "train.lam"


@dataclass
class Axis:
    key: str                       # dotted trial-config key, e.g. "train.lam"
    values: list[Any] | None       # None: take the profile's value for this key (``sweep.<key>``)
    flag: str | None = None        # command-line flag that overrides it, e.g. "--lambdas"
    type: Callable = str
    help: str = ""


@dataclass
class SweepDefinition:
    name: str
    description: str
    axes: list[Axis]
    frontier: bool = True
    # the report after the trials: fn(context) -> artefact paths, or "module:function" (imported when needed)
    after: Callable | str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    label_key: str = DEFAULT_LABEL  # trial field that labels frontier points (train.lam, model.name, ...)
    # trial fields of this sweep (dotted key -> value): over the profile's trial, under --set and the axes
    defaults: dict[str, Any] = field(default_factory=dict)
    # fn(base trial dict, {axis key: values}, seeds, profile) -> [(trial dict, tags)]: replaces the axes' product
    # (sweeps made of several parts, e.g. reproduce.py), or "module:function"
    grid: Callable | str | None = None
    options: Callable | str | None = None  # fn(argparse parser): extra command-line options, or "module:function"
    seeds: dict[str, int] = field(default_factory=dict)  # profile -> default --seeds (over the profile's)


def resolve(obj):
    """A callable, or ``"package.module:function"`` imported now."""
    if isinstance(obj, str):
        import importlib

        module, _, name = obj.partition(":")
        return getattr(importlib.import_module(module), name)
    return obj


@dataclass
class Planned:
    """One trial of a plan: its full config, the tags the grid gave it, and its name (the MLflow run's, Tune's)."""

    config: dict
    tags: dict[str, str] = field(default_factory=dict)
    name: str = ""


# --- the grid ----------------------------------------------------------------------------------------------

def canonical(trial: dict, sweep_trainers: list[str] | None = None) -> tuple[dict, dict[str, str]]:
    """A trial that trains naturally by the rule ``hyporay.trainers.losses.natural_at`` (TRADES or THRM at λ = 0) is
    planned as natural training once, tagged as feeding the curve of each regularised trainer of the sweep."""
    from hyporay.trainers.losses import REGULARISED, natural_at

    t = trial.get("train", {})
    if t.get("trainer") in REGULARISED and natural_at(float(t.get("lam", 0) or 0)):
        curves = [x for x in (sweep_trainers or [t["trainer"]]) if x in REGULARISED] or [t["trainer"]]
        out = json.loads(json.dumps(trial))
        out["train"]["trainer"] = "natural"
        return out, {CURVES_TAG: ",".join(curves)}
    return trial, {}


def merge_tags(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    """Tags of two plans of the same trial: comma-separated lists (parts, curves) united, others from ``b``."""
    out = dict(a)
    for k, v in b.items():
        if k in (PARTS_TAG, CURVES_TAG) and k in out:
            out[k] = ",".join(dict.fromkeys(out[k].split(",") + v.split(",")))
        else:
            out[k] = v
    return out


def dedupe(planned: list[Planned]) -> list[Planned]:
    """Identical trials run once (first-seen order); their tags are merged."""
    seen: dict[str, Planned] = {}
    for p in planned:
        key = json.dumps(p.config, sort_keys=True, default=str)
        if key in seen:
            seen[key].tags = merge_tags(seen[key].tags, p.tags)
        else:
            seen[key] = Planned(p.config, dict(p.tags), p.name)
    return list(seen.values())


def product(base: dict, axes: list[Axis], values: dict[str, list], seeds: list[int]) -> list[tuple[dict, dict]]:
    """Every combination of the axes' values x seeds, each a trial-config dict (not yet validated), no tags."""
    keys = [a.key for a in axes]
    out = []
    for combo in itertools.product(*(values[k] for k in keys)):
        for seed in seeds:
            over: dict = {"seed": seed}
            for k, v in zip(keys, combo):
                put(over, k, v)
            out.append((_merge(base, over), {}))
    return out


def _merge(base: dict, over: dict) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- names ----------------------------------------------------------------------------------------------------

NAMED_KEYS = ("train.trainer", "train.lam", "model.name", "seed")  # in every name: trainer-lamλ-model-...-seedN


def _name_part(key: str, value) -> str:
    if isinstance(value, str):
        return value
    short = key.split(".")[-1]
    return f"{short}{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{short}{value}"


def run_name(trial: dict, extra_keys: list[str] | tuple[str, ...] = ()) -> str:
    """``<trainer>-lam<λ>-<model>[-<extra>...]-seed<N>``; ``extra_keys``: dotted fields a sweep also varies."""
    t = trial.get("train", {})
    extras = "".join(f"-{_name_part(k, get(trial, k))}" for k in extra_keys)
    return (f"{t.get('trainer')}-lam{t.get('lam', 0):g}-{trial.get('model', {}).get('name')}{extras}"
            f"-seed{trial.get('seed', 0)}")


def name_all(planned: list[Planned], extra_keys: list[str]) -> list[Planned]:
    """Give each planned trial its run name; trials that would share one get the fields that tell them apart
    appended (e.g. ``-targetedTrue``), so every name in a sweep is distinct."""
    groups: dict[str, list[Planned]] = {}
    for p in planned:
        groups.setdefault(run_name(p.config, extra_keys), []).append(p)
    for name, ps in groups.items():
        if len(ps) == 1:
            ps[0].name = name
            continue
        flats = [flatten(p.config) for p in ps]
        differ = sorted(k for k in set().union(*flats) if len({json.dumps(f.get(k), default=str) for f in flats}) > 1)
        for p, f in zip(ps, flats):
            p.name = name + "".join(f"-{_name_part(k, f.get(k))}" for k in differ)
    return planned


def name_keys(defn: SweepDefinition) -> list[str]:
    return [a.key for a in defn.axes if a.key not in NAMED_KEYS]


# --- profiles ------------------------------------------------------------------------------------------------

PROFILE_KEYS = ("description", "trial", "seeds", "resources", "sweep")


def is_profile_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def profile_name(ref: str) -> str:
    """The name a profile goes by (experiment and run names): ``local``, or a profile file's stem."""
    return Path(ref).stem if is_profile_path(ref) else ref


def load_profile(configs_dir: Path, name: str) -> dict:
    """A profile by name (``sweeps/configs/<name>.yaml``) or by path (``--profile my/profile.yaml``)."""
    import yaml

    from hyporay.config import ConfigError

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
        raise ConfigError(f"profile: {path} must hold a mapping ({', '.join(PROFILE_KEYS)})")
    unknown = set(prof) - set(PROFILE_KEYS)
    if unknown:
        raise ConfigError(f"profile {profile_name(name)}: unknown key {sorted(unknown)[0]!r}; known: "
                          f"{', '.join(PROFILE_KEYS)}")
    return prof


def choose_profile(requested: str, info, local_gpus: int) -> tuple[str, str]:
    """(profile, reason). ``auto`` picks ``paper`` when the connected cluster (``info``, a ``ClusterInfo``) or,
    without one, this machine (``local_gpus``) has GPUs, ``local`` otherwise."""
    if requested != "auto":
        return requested, "requested with --profile"
    gpus = info.gpus if info is not None else local_gpus
    where = f"Ray cluster at {info.address}" if info is not None else "this machine"
    if gpus > 0:
        return "paper", f"{where} has {gpus:g} GPU(s)"
    return "local", f"{where} has no GPU"


def configs_dir(script: str | None = None) -> Path:
    """sweeps/configs beside the running script; `ray submit` copies the script alone to ~ on the head, so fall
    back to the checkout hyporay is installed from (pip install -e, as cluster.yaml does)."""
    import sys

    beside = Path(script or sys.argv[0]).resolve().parent / "configs"
    installed = Path(__file__).resolve().parents[2] / "sweeps" / "configs"
    return beside if beside.is_dir() or not installed.is_dir() else installed
