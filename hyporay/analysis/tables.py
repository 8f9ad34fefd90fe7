"""Tables of a sweep's results: means over seeds, Markdown and CSV writers, the paper's Tables 1-2 layout and the
attack-convergence table. Functions of the runs table (``hyporay.analysis.runs``); the writers are the only I/O.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import pandas as pd

from hyporay import metrics as M
from hyporay.analysis.runs import mean_std

N = "n_seeds"

# the paper's row and column names (Tables 1-2)
VARIANTS = {"naive": "Naive", "noise": "Noise", "mislabeling": "Mislabeling", "poisoning": "Poisoning",
            "quality": "Quality"}
ARCHITECTURES = {"mlp": "MLP", "cnn": "CNN", "vgg16": "VGG-16", "resnet18": "ResNet-18", "wrn28_10": "WRN-28-10",
                 "linf_dist": "l_inf-dist"}


def unique(values) -> list:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))


def mean_by(rows, keys: list[str], metrics: list[str]) -> list[dict]:
    """Group rows (a runs table or a list of dicts) by ``keys``; per group, in first-seen order: the keys,
    ``n_seeds`` (rows in the group) and each metric's mean and ``<metric>_std`` (``runs.mean_std``)."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r.get(k) for k in keys)].append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(keys, key)) | {N: len(rs)}
        for m in metrics:
            row[m], row[f"{m}_std"] = mean_std([r.get(m) for r in rs if r.get(m) is not None])
        out.append(row)
    return out


# --- writers: one Markdown table, one CSV ------------------------------------------------------------------

def markdown_table(header: list[str], body: list[list[str]], caption: str | None = None) -> str:
    """A GitHub-flavoured markdown table (caption first, as the paper's tables)."""
    lines = [caption, ""] if caption else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def write_csv(rows, path: str | Path) -> Path:
    """Rows (dicts, or a DataFrame) as CSV; the columns are the union of the rows' keys in first-seen order."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    cols = unique(k for r in records for k in r)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols or ["empty"])
        w.writeheader()
        w.writerows(records)
    return Path(path)


def threat_caption(trial: dict, profile: str | None = None) -> str:
    """Data set, the training and evaluation attacks' full threat models (and the profile): what a robustness
    number needs next to it."""
    from hyporay.config import load_config

    cfg = load_config(trial)
    text = (f"data {cfg.data.name}; eval attack {cfg.eval.attack.describe()}; train attack "
            f"{cfg.train.attack.describe()}")
    return text + (f"; profile {profile}" if profile else "")


def pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def mean_pm(m: float, s: float, digits: int = 3) -> str:
    return "n/a" if m is None or math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


# --- Tables 1-2: substandard training sets ----------------------------------------------------------------

def substandard_table(rows, models: list[str] | None = None) -> tuple[list[str], list[list[str]], list[dict]]:
    """The paper's layout: rows = training set (Naive, Noise, Mislabeling, Poisoning, Quality), columns =
    architecture, cells ``D / A / F`` in % (two decimals) = acc_clean / acc_adv / acc_hyp, mean over seeds.
    Returns (header, body, the averaged cells for a CSV); a missing combination shows ``n/a``."""
    metrics = [M.ACC_CLEAN, M.ACC_ADV, M.ACC_HYP]
    means = mean_by(rows, ["variant.name", "model.name"], metrics)
    cell = {(m["variant.name"], m["model.name"]): m for m in means}
    models = list(models) if models else unique(m["model.name"] for m in means)
    seen = unique(m["variant.name"] for m in means)
    variants = [v for v in VARIANTS if v in seen] + [v for v in seen if v not in VARIANTS]
    header = ["training set"] + [ARCHITECTURES.get(m, m) for m in models]
    body = [[VARIANTS.get(v, v)] + [" / ".join(pct(cell[(v, m)][k]) for k in metrics) if (v, m) in cell else "n/a"
                                    for m in models] for v in variants]
    return header, body, [cell[(v, m)] for v in variants for m in models if (v, m) in cell]


# --- attack convergence (eval.steps_grid / eval.restarts_grid) --------------------------------------------

ATTACKS = {M.ACC_ADV: "adversarial", M.ACC_HYP: "hypocritical"}


def convergence_rows(rows) -> list[dict]:
    """Long form of the runs' ``steps_K/<metric>`` and ``restarts_R/<metric>`` metrics, averaged over seeds: one
    row per (trainer, setting, value, metric) with ``n_seeds``, ``mean`` and ``std``; sorted."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    long = []
    for r in records:
        for name, v in r.items():
            parsed = M.parse_setting(name) if isinstance(name, str) else None
            if parsed is not None and not (isinstance(v, float) and math.isnan(v)):
                kind, value, metric = parsed
                long.append({"trainer": r.get("train.trainer"), "setting": kind, "value": value, "metric": metric,
                             "x": float(v)})
    out = mean_by(long, ["trainer", "setting", "value", "metric"], ["x"])
    for o in out:
        o["mean"], o["std"] = o.pop("x"), o.pop("x_std")
    return sorted(out, key=lambda o: (str(o["trainer"]), o["setting"], o["metric"], o["value"]))


def convergence_series(conv: list[dict]) -> dict[tuple, list[dict]]:
    s: dict[tuple, list[dict]] = defaultdict(list)
    for o in conv:
        s[(o["trainer"], o["setting"], o["metric"])].append(o)
    return s


def convergence_verdict(conv: list[dict], tol: float = 0.01) -> list[str]:
    """Per trainer, setting and attack: is the accuracy under attack flat between the two strongest settings
    (|change| <= tol), and does a stronger attack never help the model by more than tol (reference §7)?"""
    lines = []
    for (trainer, kind, metric), pts in sorted(convergence_series(conv).items(),
                                               key=lambda kv: tuple(map(str, kv[0]))):
        if metric not in ATTACKS or len(pts) < 2:
            continue
        pts = sorted(pts, key=lambda o: o["value"])
        sign = 1 if metric == M.ACC_ADV else -1  # a stronger attack lowers A and raises F
        worse = max(sign * (b["mean"] - a["mean"]) for a, b in zip(pts, pts[1:]))
        a, b = pts[-2], pts[-1]
        note = "converged" if abs(b["mean"] - a["mean"]) <= tol else "NOT converged"
        if worse > tol:
            note += f"; a stronger attack helped the model by {worse:.3f} (masking or noise?)"
        lines.append(f"{trainer:<8} {ATTACKS[metric]:<12} {kind:<8} {a['value']:>5d} -> {b['value']:<5d} "
                     f"{metric} {a['mean']:.4f} -> {b['mean']:.4f}: {note}")
    return lines
