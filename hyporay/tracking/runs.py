"""The runs table: a sweep's or study's MLflow runs read once into a pandas DataFrame (``hyporay.analysis`` is a
function of it).

One row per child run; columns:
- ``run_id``, ``run_name``, ``status`` (MLflow's), ``outcome``: ``result`` (finished, its model meaningful),
  ``degenerate`` (finished, a constant or non-finite model: its risks are not results), ``diverged`` (stopped by a
  non-finite loss) or ``unfinished``;
- the trial fields (dotted, e.g. ``train.lam``), typed as ``TrialConfig`` types them (MLflow keeps strings);
- the final metrics (floats, NaN where a run has none);
- ``parts`` (the parts of the paper a trial was planned for) and ``curves`` (the frontier curves it belongs to),
  both from tags the engine set when it built the grid, as tuples;
- provenance: ``hyporay.git_commit``, ``hyporay.git_dirty``, ``hyporay.git_diff_sha256``, ``hyporay.config_sha256``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pandas as pd

from hyporay import metrics as M
from hyporay import provenance as P
from hyporay.tracking.store import client, retry
from hyporay.tracking.tags import (
    CURVES_TAG,
    DEGENERATE_TAG,
    DIVERGED_TAG,
    MIXED_TAG,
    OPTUNA_STATE_TAG,
    OPTUNA_TRIAL_TAG,
    PARENT_TAG,
    PARTS_TAG,
    ROLE_TAG,
    TRIAL_KEY_TAG,
)

OUTCOMES = ("result", "degenerate", "diverged", "unfinished")
TAG_COLUMNS = (P.COMMIT, P.DIRTY, P.DIFF, P.CONFIG, *P.MACHINE_KEYS, MIXED_TAG, DEGENERATE_TAG, DIVERGED_TAG,
               OPTUNA_TRIAL_TAG, OPTUNA_STATE_TAG, TRIAL_KEY_TAG)


@lru_cache(maxsize=1)
def _field_types() -> dict[str, type]:
    from hyporay.config import TrialConfig, flatten

    return {k: type(v) for k, v in flatten(TrialConfig().model_dump()).items() if v is not None}


def parse_param(key: str, raw: Any) -> Any:
    """An MLflow param (a string) back to the type the trial config gives that field."""
    if not isinstance(raw, str):
        return raw
    if raw == "None":
        return None
    typ = _field_types().get(key)
    try:
        if typ is bool:
            return raw == "True"
        if typ is int:
            return int(float(raw)) if raw.replace(".", "", 1).lstrip("-").isdigit() else raw
        if typ is float:
            return float(raw)
        if typ in (list, dict):
            return json.loads(raw)
    except ValueError:
        return raw
    if typ is None:  # a field without a typed default (e.g. lr_large_lambda, a search's own params)
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw


def outcome(status: str, tags: dict, metrics: dict) -> str:
    if status == "FINISHED":
        return "degenerate" if tags.get(DEGENERATE_TAG) == "true" or metrics.get(M.DEGENERATE) else "result"
    return "diverged" if tags.get(DIVERGED_TAG) == "true" else "unfinished"


def _split(tag: str | None) -> tuple[str, ...]:
    return tuple(t for t in (tag or "").split(",") if t)


def table(runs) -> pd.DataFrame:
    """The runs (MLflow ``Run`` objects, or anything with ``.info`` and ``.data``) as one typed table."""
    rows = []
    for r in runs:
        tags = getattr(r.data, "tags", {}) or {}
        row: dict[str, Any] = {"run_id": r.info.run_id, "run_name": getattr(r.info, "run_name", None),
                               "status": r.info.status, "outcome": outcome(r.info.status, tags, r.data.metrics)}
        row |= {k: parse_param(k, v) for k, v in r.data.params.items()}
        row |= {k: float(v) for k, v in r.data.metrics.items()}
        row |= {k: tags.get(k) for k in TAG_COLUMNS if k in tags}
        row["parts"], row["curves"] = _split(tags.get(PARTS_TAG)), _split(tags.get(CURVES_TAG))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["run_id", "run_name", "status", "outcome", "parts", "curves"])
    return df


def child_runs(c, experiment_id: str, parent_id: str | None = None) -> list:
    """The trial runs of a parent run (or of every parent run of the experiment), in one MLflow query."""
    flt = f"tags.`{ROLE_TAG}` = 'trial'"
    if parent_id:
        flt += f" and tags.`{PARENT_TAG}` = '{parent_id}'"
    return retry(c.search_runs, [experiment_id], filter_string=flt, max_results=50_000)


def read(tracking_uri: str, experiment_id: str, parent_id: str | None = None) -> pd.DataFrame:
    """The child runs of a sweep or study (or of every one of the experiment) in one MLflow query, as ``table``."""
    return table(child_runs(client(tracking_uri), experiment_id, parent_id))
