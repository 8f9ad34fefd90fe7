"""One table of a sweep's runs: read once from MLflow into a pandas DataFrame, every later step a function of it.

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
import math
from collections import Counter
from functools import lru_cache
from typing import Any

import pandas as pd

from hyporay import metrics as M
from hyporay import provenance as P

OUTCOMES = ("result", "degenerate", "diverged", "unfinished")
PARTS_TAG = "hyporay.parts"     # comma-separated parts of the paper a trial was planned for (t12, t3, fig3, fig4)
CURVES_TAG = "hyporay.curves"   # comma-separated frontier curves a trial belongs to (natural λ=0: trades,thrm)
TAG_COLUMNS = (P.COMMIT, P.DIRTY, P.DIFF, P.CONFIG, "hyporay.provenance_mixed", "degenerate", "diverged",
               "optuna.trial_number", "optuna_state", "hyporay.trial_key")


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
        return "degenerate" if tags.get("degenerate") == "true" or metrics.get(M.DEGENERATE) else "result"
    return "diverged" if tags.get("diverged") == "true" else "unfinished"


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


def read(tracking_uri: str, experiment_id: str, parent_id: str | None = None) -> pd.DataFrame:
    """The child runs of a sweep (or of every sweep of the experiment) in one MLflow query, as ``table``."""
    from hyporay.engine import tracking

    return table(tracking.child_runs(tracking.client(tracking_uri), experiment_id, parent_id))


def results(df: pd.DataFrame) -> tuple[pd.DataFrame, Counter]:
    """The rows whose numbers are results, and a Counter of the others by outcome (what tables must say)."""
    if df.empty:
        return df, Counter()
    left = Counter(o for o in df["outcome"] if o != "result")
    return df[df["outcome"] == "result"].copy(), left


def describe_left_out(left_out: Counter) -> str:
    """``2 unfinished, 1 diverged`` (empty string when nothing was left out)."""
    return ", ".join(f"{n} {why}" for why, n in sorted(left_out.items()) if n)


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain dicts without NaN entries (a run without a metric simply lacks it)."""
    out = []
    for r in df.to_dict("records"):
        out.append({k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))})
    return out


def mean_std(values) -> tuple[float, float]:
    """THE mean/std rule of every table and plot: NaN ignored; sample std (ddof 1), 0 for one value, NaN for none."""
    s = pd.Series(values, dtype=float).dropna()
    if s.empty:
        return math.nan, math.nan
    return float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else 0.0


def commits(df: pd.DataFrame) -> dict[str, int]:
    """How many runs each code version produced: ``{describe(provenance): count}`` (unknown code counted too)."""
    if df.empty:
        return {}
    out: Counter = Counter()
    for r in df.to_dict("records"):
        prov = {k: r.get(k) for k in (P.COMMIT, P.DIRTY, P.DIFF) if isinstance(r.get(k), str)}
        label = P.describe(prov) if prov else "unknown code (no provenance recorded)"
        if isinstance(r.get("hyporay.provenance_mixed"), str):
            label = f"mixed: {r['hyporay.provenance_mixed']}"
        out[label] += 1
    return dict(out)


def one_clean_commit(df: pd.DataFrame) -> str | None:
    """The commit every run ran, if they all ran that one clean commit; else None."""
    seen = commits(df)
    if len(seen) == 1:
        (label,) = seen
        if label.startswith("commit ") and "+" not in label and not label.startswith("mixed"):
            full = {r.get(P.COMMIT) for r in df.to_dict("records")}
            return full.pop() if len(full) == 1 else None
    return None
