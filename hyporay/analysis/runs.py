"""Functions of the runs table (``hyporay.tracking.runs.table``: one row per trial run, see there for the columns):
the rows that are results, what was left out and why, plain records, THE mean/std rule, and the code versions that
produced them. Nothing here reads MLflow: any table with those columns will do."""
from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from hyporay import provenance as P


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
