"""Reports of finished sweeps beyond the frontier: tables and plots from the child runs' final metrics.

Sweep scripts' ``after`` hooks call these (they receive the child runs in their context): ``final_rows``
turns runs into rows, ``mean_by`` averages them over seeds, ``markdown_table`` / ``write_csv`` write them.
Two reports of the paper are built here: the substandard-models table (Tables 1-2: D / A / F per training
set and architecture) and the attack-convergence curves (accuracy under attack vs steps and restarts).
Pure functions except the writers; no MLflow import (runs only need ``.info`` and ``.data``).
"""
from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from pathlib import Path

from hyporay import metrics as M

RUN_ID = "run_id"
N = "n_seeds"

# the paper's row and column names (Tables 1-2)
VARIANTS = {"naive": "Naive", "noise": "Noise", "mislabeling": "Mislabeling", "poisoning": "Poisoning",
            "quality": "Quality"}
ARCHITECTURES = {"mlp": "MLP", "cnn": "CNN", "vgg16": "VGG-16", "resnet18": "ResNet-18", "wrn28_10": "WRN-28-10"}


# --- rows from runs ---------------------------------------------------------------------------------------

def outcome(run) -> str:
    """What a child run is: ``result`` (FINISHED, its model meaningful), ``degenerate`` (FINISHED, but a constant
    or non-finite model: risks not results), ``diverged`` (stopped by a non-finite loss) or ``unfinished``."""
    tags = run.data.tags
    if run.info.status == "FINISHED":
        return "degenerate" if tags.get("degenerate") == "true" or run.data.metrics.get(M.DEGENERATE) else "result"
    if tags.get("diverged") == "true":
        return "diverged"
    return "unfinished"


def describe_left_out(left_out: Counter) -> str:
    """``2 unfinished, 1 diverged`` (empty string when nothing was left out)."""
    return ", ".join(f"{n} {why}" for why, n in sorted(left_out.items()) if n)


def final_rows(runs) -> tuple[list[dict], Counter]:
    """One row per child run whose numbers are results: its params (dotted trial fields, as strings), its final
    metrics (the latest value of each, floats) and ``run_id``. Returns (rows, Counter of the runs left out by
    ``outcome``: unfinished, diverged, degenerate): no table, frontier or claim is built from those."""
    rows, left_out = [], Counter()
    for r in runs:
        kind = outcome(r)
        if kind != "result":
            left_out[kind] += 1
            continue
        rows.append({**r.data.params, **r.data.metrics, RUN_ID: r.info.run_id})
    return rows, left_out


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def mean_by(rows: list[dict], keys: list[str], metrics: list[str]) -> list[dict]:
    """Group ``rows`` by the values of ``keys``; per group (in first-seen order): the keys, ``n_seeds`` (rows in
    the group), and each metric's mean and ``<metric>_std`` over the rows that have it (NaN if none)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in keys)].append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(keys, key)) | {N: len(rs)}
        for m in metrics:
            row[m], row[f"{m}_std"] = _mean_std([float(r[m]) for r in rs if r.get(m) is not None])
        out.append(row)
    return out


def unique(values) -> list:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))


# --- writers --------------------------------------------------------------------------------------------

def markdown_table(header: list[str], body: list[list[str]], caption: str | None = None) -> str:
    """A GitHub-flavoured markdown table (caption first, as the paper's tables)."""
    lines = [caption, ""] if caption else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Rows (dicts) as CSV; the columns are the union of the rows' keys in first-seen order."""
    cols = unique(k for r in rows for k in r)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols or ["empty"])
        w.writeheader()
        w.writerows(rows)
    return Path(path)


def eval_caption(trial: dict, profile: str) -> str:
    """Data set, the eval attack's full threat model and the profile: what a robustness number needs."""
    from hyporay.config import load_config

    cfg = load_config(trial)
    return f"data {cfg.data.name}; eval attack {cfg.eval.attack.spec().describe()}; profile {profile}"


# --- Tables 1-2: substandard training sets -------------------------------------------------------------

def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def substandard_table(rows: list[dict], models: list[str] | None = None
                      ) -> tuple[list[str], list[list[str]], list[dict]]:
    """The paper's layout: rows = training set (Naive, Noise, Mislabeling, Poisoning, Quality), columns =
    architecture, cells ``D / A / F`` in % (two decimals) = acc_clean / acc_adv / acc_hyp, mean over seeds.

    ``rows``: run rows with params ``variant.name`` and ``model.name`` (see ``final_rows``); ``models``: the
    column order (default: first-seen). Returns (header, body, the averaged rows for a CSV). A missing
    combination shows ``n/a``; variants outside the paper's five follow them in first-seen order.
    """
    metrics = [M.ACC_CLEAN, M.ACC_ADV, M.ACC_HYP]
    means = mean_by(rows, ["variant.name", "model.name"], metrics)
    cell = {(m["variant.name"], m["model.name"]): m for m in means}
    models = list(models) if models else unique(m["model.name"] for m in means)
    seen = unique(m["variant.name"] for m in means)
    variants = [v for v in VARIANTS if v in seen] + [v for v in seen if v not in VARIANTS]
    header = ["training set"] + [ARCHITECTURES.get(m, m) for m in models]
    body = []
    for v in variants:
        line = [VARIANTS.get(v, v)]
        for m in models:
            c = cell.get((v, m))
            line.append(" / ".join(_pct(c[k]) for k in metrics) if c else "n/a")
        body.append(line)
    ordered = [cell[(v, m)] for v in variants for m in models if (v, m) in cell]
    return header, body, ordered


def write_substandard(rows: list[dict], out_dir: str | Path, caption: str, models: list[str] | None = None
                      ) -> list[Path]:
    """``substandard_table.md`` (the paper's layout) and ``substandard_table.csv`` (one row per cell: means and
    standard deviations over seeds)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header, body, cells = substandard_table(rows, models)
    seeds = sorted({c[N] for c in cells})
    caption = (f"Accuracy (%) D / A / F = clean / adversarial / hypocritical examples, natural training on "
               f"substandard training sets; {caption}; "
               f"{'mean over ' + '/'.join(map(str, seeds)) + ' seed(s)' if seeds else 'no finished runs'}.")
    md = out / "substandard_table.md"
    md.write_text(markdown_table(header, body, caption))
    return [md, write_csv(cells, out / "substandard_table.csv")]


# --- attack convergence (eval.steps_grid / eval.restarts_grid) -------------------------------------------

ATTACKS = {M.ACC_ADV: "adversarial", M.ACC_HYP: "hypocritical"}


def convergence_rows(rows: list[dict]) -> list[dict]:
    """Long form of the runs' ``steps_K/<metric>`` and ``restarts_R/<metric>`` metrics, averaged over seeds:
    one row per (trainer, setting, value, metric) with ``n_seeds``, ``mean`` and ``std``; sorted."""
    long = []
    for r in rows:
        for name, v in r.items():
            parsed = M.parse_setting(name)
            if parsed is not None:
                kind, value, metric = parsed
                long.append({"trainer": r.get("train.trainer"), "setting": kind, "value": value, "metric": metric,
                             "x": float(v)})
    out = mean_by(long, ["trainer", "setting", "value", "metric"], ["x"])
    for o in out:
        o["mean"], o["std"] = o.pop("x"), o.pop("x_std")
    return sorted(out, key=lambda o: (str(o["trainer"]), o["setting"], o["metric"], o["value"]))


def _series(conv: list[dict]) -> dict[tuple, list[dict]]:
    s: dict[tuple, list[dict]] = defaultdict(list)
    for o in conv:
        s[(o["trainer"], o["setting"], o["metric"])].append(o)
    return s


def convergence_verdict(conv: list[dict], tol: float = 0.01) -> list[str]:
    """Per trainer, setting and attack: is the accuracy under attack flat between the two strongest settings
    (|change| <= tol), and does a stronger attack never help the model by more than tol (reference §7)?"""
    lines = []
    for (trainer, kind, metric), pts in sorted(_series(conv).items(), key=lambda kv: tuple(map(str, kv[0]))):
        if metric not in ATTACKS or len(pts) < 2:
            continue
        pts = sorted(pts, key=lambda o: o["value"])
        sign = 1 if metric == M.ACC_ADV else -1  # a stronger attack lowers A and raises F
        worse = max(sign * (b["mean"] - a["mean"]) for a, b in zip(pts, pts[1:]))
        a, b = pts[-2], pts[-1]
        flat = abs(b["mean"] - a["mean"]) <= tol
        note = "converged" if flat else "NOT converged"
        if worse > tol:
            note += f"; a stronger attack helped the model by {worse:.3f} (masking or noise?)"
        lines.append(f"{trainer:<8} {ATTACKS[metric]:<12} {kind:<8} {a['value']:>5d} -> {b['value']:<5d} "
                     f"{metric} {a['mean']:.4f} -> {b['mean']:.4f}: {note}")
    return lines


def write_convergence(conv: list[dict], out_dir: str | Path, title: str) -> list[Path]:
    """``convergence.csv`` (the long rows) and ``convergence.png``: accuracy under attack vs steps (left, log
    scale) and vs restarts (right), one colour per trainer, solid = adversarial (A), dashed = hypocritical (F)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(conv, out / "convergence.csv")
    series = _series(conv)
    trainers = unique(t for t, _, _ in series)
    colours = {t: f"C{i}" for i, t in enumerate(trainers)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for ax, kind in zip(axes, ("steps", "restarts")):
        for (trainer, k, metric), pts in series.items():
            if k != kind or metric not in ATTACKS:
                continue
            pts = sorted(pts, key=lambda o: o["value"])
            ax.errorbar([o["value"] for o in pts], [o["mean"] for o in pts], yerr=[o["std"] for o in pts],
                        color=colours[trainer], linestyle="-" if metric == M.ACC_ADV else "--", marker="o",
                        capsize=3, label=f"{trainer} · {'A' if metric == M.ACC_ADV else 'F'} ({ATTACKS[metric]})")
        if kind == "steps":
            ax.set_xscale("log")
        ax.set_xlabel("PGD steps (1 restart)" if kind == "steps" else "restarts (eval attack's steps)")
        ax.set_ylabel("accuracy under attack")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"vs {kind}", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    png = out / "convergence.png"
    fig.savefig(png)
    plt.close(fig)
    return [csv_path, png]


# --- ``after`` hooks of sweep scripts (context: runs, trials, profile, out_dir, ...) ------------------

def _say_skipped(left_out: Counter) -> None:
    if sum(left_out.values()):
        print(f"report: left out {describe_left_out(left_out)} run(s)", flush=True)


def substandard_report(ctx: dict) -> list[Path]:
    """sweeps/substandard.py: ``substandard_table.md`` / ``.csv`` from the child runs' final metrics."""
    rows, skipped = final_rows(ctx["runs"])
    _say_skipped(skipped)
    models = unique(t["model"]["name"] for t in ctx["trials"])
    paths = write_substandard(rows, ctx["out_dir"], eval_caption(ctx["trials"][0], ctx["profile"]), models)
    print("\n" + paths[0].read_text(), flush=True)
    return paths


def convergence_report(ctx: dict) -> list[Path]:
    """sweeps/attack_steps.py: ``convergence.csv`` / ``.png`` and a converged-or-not line per curve."""
    rows, skipped = final_rows(ctx["runs"])
    _say_skipped(skipped)
    conv = convergence_rows(rows)
    t = ctx["trials"][0]
    title = f"attack convergence · {ctx['profile']} · {t['data']['name']}/{t['model']['name']}"
    paths = write_convergence(conv, ctx["out_dir"], title + f"\n{eval_caption(t, ctx['profile'])}")
    print("\nattack convergence (mean over seeds; tolerance 0.01):", flush=True)
    for line in convergence_verdict(conv) or ["no steps/restarts grid metrics in the finished runs"]:
        print("  " + line, flush=True)
    return paths
