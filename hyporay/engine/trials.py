"""The trial preparation a grid and a study share on the driver: paths made absolute (Ray runs trials elsewhere),
plugin modules named, and every trial checked against its data (each data set loaded once) before anything starts."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def absolute_paths(trial_base: dict, workdir: Path) -> dict:
    """Ray runs trials in other working directories: data paths and ``imports`` files absolute on the driver."""
    from hyporay.plugins import is_path

    def absolute(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (workdir / q).resolve())

    data = dict(trial_base.get("data", {}))
    data["root"] = absolute(data.get("root", "data"))
    if data.get("cache_dir"):
        data["cache_dir"] = absolute(data["cache_dir"])
    out = {**trial_base, "data": data}
    if isinstance(trial_base.get("imports"), list):
        out["imports"] = [absolute(i) if isinstance(i, str) and is_path(i) else i for i in trial_base["imports"]]
    return out


def with_plugins(trial: dict) -> dict:
    """A trial's ``imports`` completed with the modules that registered the data set and models it names (a data
    set registered in the sweep's own script reaches the Ray workers without a flag)."""
    from hyporay.plugins import needed_for

    need = [m for m in needed_for(trial) if m not in (trial.get("imports") or [])]
    return {**trial, "imports": [*(trial.get("imports") or []), *need]} if need else trial


def trial_key(trial: dict) -> str:
    """Deterministic identity of a grid trial (its full config): finds its MLflow child run again."""
    return hashlib.sha256(json.dumps(trial, sort_keys=True, default=str).encode()).hexdigest()[:20]


def data_key(trial: dict) -> str:
    """Trials with equal keys train and test on the same tensors (``split_seed: trial`` resolved to the seed)."""
    data = dict(trial.get("data", {}))
    if data.get("split_seed") == "trial":
        data["split_seed"] = trial.get("seed", 0)
    return json.dumps(data, sort_keys=True)


def load_and_check(trials: list[dict]) -> dict:
    """The trials' data sets (keyed by ``data_key``), each loaded once, after checking every trial against its
    data: the attack budgets and the model, built once per architecture, options and input shape (a bad option
    value fails here in one line, not in every Ray worker)."""
    from hyporay.config import load_config
    from hyporay.experiment import check_budget, check_certifiable, load_trial_data, make_model

    datasets, built = {}, set()
    for t in trials:
        k = data_key(t)
        cfg = load_config(t)
        if k not in datasets:
            datasets[k] = load_trial_data(cfg)
        ds = datasets[k]
        check_budget(cfg, ds.in_shape)
        arch = (cfg.model.name, json.dumps(cfg.model.kwargs, sort_keys=True, default=str), ds.in_shape,
                ds.num_classes, cfg.eval.certify)
        if arch not in built:
            check_certifiable(cfg, make_model(cfg, ds), ds)
            built.add(arch)
    return datasets
