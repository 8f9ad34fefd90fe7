"""Trade-off frontiers: natural risk (x) vs hypocritical risk R_hyp(D-) (y), one curve per trainer.

Points are aggregated over seeds (mean and standard deviation) per (trainer, label), the label being the
swept trial field (``label_key``: ``train.lam`` by default, or e.g. ``train.attack.eps``, ``model.name``);
Pareto-optimal points (no other point has both risks lower or equal, one strictly) are marked. Artefacts:
``frontier.csv``, ``frontier.png`` (matplotlib) and ``frontier.html`` (plotly, self-contained, works offline).

``build`` turns MLflow child runs into points and artefacts, ``publish`` logs artefacts to the parent run and
rewrites the experiment's shared frontier chart; ``rebuild_for_parent`` does both for a finished or
interrupted sweep (``hyporay frontier``). The sweep engine uses the same two steps.
"""
from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from hyporay import metrics as M

X, Y = M.NATURAL_RISK, M.HYPOCRITICAL_RISK
DEFAULT_LABEL = "train.lam"
_LABEL_SYMBOL = {"train.lam": "λ", "train.attack.eps": "ε"}


@dataclass
class FrontierPoint:
    trainer: str
    label: float | str             # value of ``label_key`` (λ by default; may be a string, e.g. a model name)
    n_seeds: int
    natural_risk: float
    natural_risk_std: float
    hypocritical_risk: float
    hypocritical_risk_std: float
    pareto: bool = False
    label_key: str = DEFAULT_LABEL  # dotted trial field the points are labelled by

    @property
    def lam(self) -> float | str:
        """The label under its historical name (λ sweeps)."""
        return self.label

    @property
    def label_text(self) -> str:
        return label_text(self.label_key, self.label)


def label_column(label_key: str) -> str:
    """CSV column of a label: the last part of the dotted key (``name`` -> its parent): ``train.lam`` -> ``lam``,
    ``train.attack.eps`` -> ``eps``, ``model.name`` -> ``model``."""
    parts = label_key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def label_text(label_key: str, value) -> str:
    """How a point is annotated: ``λ=5``, ``ε=0.05``, or the value itself for strings (``resnet18``)."""
    if isinstance(value, str):
        return value
    return f"{_LABEL_SYMBOL.get(label_key, label_column(label_key))}={value:.4g}"


def parse_label(raw) -> float | str:
    """An MLflow param (a string) as a label: a number when it reads as one, else the string (None: "n/a")."""
    if raw is None:
        return "n/a"
    try:
        return float(raw)
    except (TypeError, ValueError):
        return str(raw)


def _label_order(label) -> tuple:
    return (isinstance(label, str), label)


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def pareto_mask(points: list[tuple[float, float]]) -> list[bool]:
    """True where no other point is <= in both coordinates and < in one (both minimised)."""
    out = []
    for i, (x, y) in enumerate(points):
        dominated = any(xo <= x and yo <= y and (xo < x or yo < y)
                        for j, (xo, yo) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def aggregate(rows: list[dict], label_key: str = DEFAULT_LABEL) -> list[FrontierPoint]:
    """``rows`` hold trainer, label (``"label"``, or ``"lam"`` for λ rows), and the two risks, one row per trial;
    rows with a NaN or missing risk are skipped. One point per (trainer, label): mean and std over seeds."""
    groups: dict[tuple[str, float | str], list[dict]] = defaultdict(list)
    for r in rows:
        if any(r.get(k) is None or math.isnan(float(r[k])) for k in (X, Y)):
            continue
        groups[(str(r["trainer"]), parse_label(r["label"] if "label" in r else r["lam"]))].append(r)
    pts = []
    for (trainer, label), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], _label_order(kv[0][1]))):
        xm, xs = _mean_std([float(r[X]) for r in rs])
        ym, ys = _mean_std([float(r[Y]) for r in rs])
        pts.append(FrontierPoint(trainer, label, len(rs), xm, xs, ym, ys, label_key=label_key))
    for p, flag in zip(pts, pareto_mask([(p.natural_risk, p.hypocritical_risk) for p in pts])):
        p.pareto = flag
    return pts


def _fmt_label(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def table(points: list[FrontierPoint]) -> str:
    key = points[0].label_key if points else DEFAULT_LABEL
    name = "lambda" if key == DEFAULT_LABEL else label_column(key)
    width = max([7, len(name)] + [len(_fmt_label(p.label)) for p in points])
    head = f"{'trainer':<8} {name:>{width}} {'seeds':>5} {'natural_risk':>18} {'hypocritical_risk':>18}  pareto"
    lines = [head, "-" * len(head)]
    for p in points:
        lines.append(f"{p.trainer:<8} {_fmt_label(p.label):>{width}} {p.n_seeds:>5d} "
                     f"{p.natural_risk:>9.4f} ± {p.natural_risk_std:<6.4f}"
                     f" {p.hypocritical_risk:>9.4f} ± {p.hypocritical_risk_std:<6.4f}  {'*' if p.pareto else ''}")
    return "\n".join(lines)


def csv_rows(points: list[FrontierPoint]) -> list[dict]:
    """The CSV's rows: the label under its column name (``lam``, ``eps``, ``model``, ...), no ``label_key``."""
    out = []
    for p in points:
        d = asdict(p)
        d.pop("label_key")
        out.append({"trainer": d.pop("trainer"), label_column(p.label_key): d.pop("label"), **d})
    return out


def write_csv(points: list[FrontierPoint], path: Path) -> Path:
    rows = csv_rows(points)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trainer"])
        w.writeheader()
        w.writerows(rows)
    return path


def _by_trainer(points):
    out = defaultdict(list)
    for p in points:
        out[p.trainer].append(p)
    return out


def _numeric(points) -> bool:
    """Numeric labels are joined by a line in label order; categorical ones (model names) are not."""
    return all(not isinstance(p.label, str) for p in points)


def write_png(points: list[FrontierPoint], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for trainer, ps in sorted(_by_trainer(points).items()):
        ps = sorted(ps, key=lambda p: _label_order(p.label))
        xs, ys = [p.natural_risk for p in ps], [p.hypocritical_risk for p in ps]
        ax.errorbar(xs, ys, xerr=[p.natural_risk_std for p in ps], yerr=[p.hypocritical_risk_std for p in ps],
                    marker="o", capsize=3, linestyle="-" if _numeric(ps) else "none",
                    label=trainer.upper() if len(trainer) <= 6 else trainer)
        for p in ps:
            ax.annotate(p.label_text, (p.natural_risk, p.hypocritical_risk), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    par = [p for p in points if p.pareto]
    if par:
        ax.scatter([p.natural_risk for p in par], [p.hypocritical_risk for p in par], s=160, facecolors="none",
                   edgecolors="black", linewidths=1.2, label="Pareto-optimal", zorder=5)
    seeds = max((p.n_seeds for p in points), default=0)
    ax.set_xlabel("natural risk (clean test error)")
    ax.set_ylabel("hypocritical risk R_hyp(D-) (concealable mistakes)")
    ax.set_title(title + (f"\nmean ± std over {seeds} seeds" if seeds > 1 else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_html(points: list[FrontierPoint], path: Path, title: str) -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    for trainer, ps in sorted(_by_trainer(points).items()):
        ps = sorted(ps, key=lambda p: _label_order(p.label))
        fig.add_trace(go.Scatter(
            x=[p.natural_risk for p in ps], y=[p.hypocritical_risk for p in ps],
            mode="lines+markers+text" if _numeric(ps) else "markers+text",
            name=trainer, text=[p.label_text for p in ps], textposition="top right",
            error_x={"type": "data", "array": [p.natural_risk_std for p in ps]},
            error_y={"type": "data", "array": [p.hypocritical_risk_std for p in ps]},
            customdata=[[p.label_text, p.n_seeds, p.pareto] for p in ps],
            hovertemplate=("%{fullData.name} %{customdata[0]}<br>natural risk %{x:.4f}<br>"
                           "R_hyp(D-) %{y:.4f}<br>seeds %{customdata[1]} pareto %{customdata[2]}<extra></extra>")))
    par = [p for p in points if p.pareto]
    fig.add_trace(go.Scatter(x=[p.natural_risk for p in par], y=[p.hypocritical_risk for p in par], mode="markers",
                             name="Pareto-optimal", marker={"size": 16, "symbol": "circle-open", "color": "black"}))
    fig.update_layout(title=title, xaxis_title="natural risk", yaxis_title="hypocritical risk R_hyp(D-)",
                      template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def write_artifacts(points: list[FrontierPoint], out_dir: str | Path, title: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [write_csv(points, out / "frontier.csv"), write_png(points, out / "frontier.png", title),
            write_html(points, out / "frontier.html", title)]


def rows_from_runs(runs, label_key: str = DEFAULT_LABEL) -> tuple[list[dict], Counter]:
    """Frontier rows from MLflow child runs; returns (rows, Counter of the runs left out and why).

    Each row: trainer, label (the run's ``label_key`` param, a number when it reads as one), seed, the two risks
    and the run id. Unfinished, diverged and degenerate runs are left out (``reports.final_rows``), and so are
    runs without both risks (a model without mistakes: ``no mistakes``).
    """
    from hyporay.analysis.tables import final_rows

    rows = []
    finals, left_out = final_rows(runs)
    for r in finals:
        if X not in r or Y not in r:
            left_out["no mistakes" if r.get(M.N_MISCLASSIFIED) == 0 else "without risks"] += 1
            continue
        raw = r.get(label_key, 0 if label_key == DEFAULT_LABEL else None)
        rows.append({"trainer": r.get("train.trainer"), "label": parse_label(raw),
                     "seed": r.get("seed"), X: r[X], Y: r[Y], "run_id": r["run_id"]})
    return rows, left_out


# --- from MLflow runs to artefacts on the parent run ------------------------------------------------------

@dataclass
class Frontier:
    points: list[FrontierPoint]
    left_out: Counter              # child runs not on the frontier, by why (unfinished, diverged, degenerate, ...)
    artefacts: list[Path]


def title_for(sweep: str, profile: str, runs) -> str:
    """``<sweep> · <profile> · <data>/<model>`` from the runs' params (several values joined by ``,``)."""
    def values(key: str) -> str:
        vals = sorted({str(r.data.params.get(key)) for r in runs if r.data.params.get(key) is not None})
        return ",".join(vals) or "?"

    return f"{sweep} · {profile} · {values('data.name')}/{values('model.name')}"


def build(runs, out_dir: str | Path, title: str, label_key: str = DEFAULT_LABEL) -> Frontier:
    """Points from the finished child runs, written as frontier.csv/png/html under ``out_dir``."""
    rows, left_out = rows_from_runs(runs, label_key)
    points = aggregate(rows, label_key)
    return Frontier(points, left_out, write_artifacts(points, out_dir, title))


def publish(c, tracking_uri: str, experiment_id: str, parent_id: str, runs, artefacts) -> str | None:
    """Log ``artefacts`` to the parent run and rewrite the experiment's shared frontier chart (when the runs
    logged the risks); returns the chart's link or None."""
    from hyporay.engine import tracking

    for a in artefacts:
        tracking.retry(c.log_artifact, parent_id, str(a))
    metric_keys = sorted({k for r in runs for k in r.data.metrics})
    if M.NATURAL_RISK not in metric_keys:
        return None
    return tracking.write_frontier_view(tracking_uri, experiment_id, metric_keys, M.NATURAL_RISK,
                                        M.HYPOCRITICAL_RISK)


def rebuild_for_parent(tracking_uri: str, experiment_id: str, parent_id: str, out_dir: str | Path,
                       label_key: str | None = None) -> tuple[Frontier, str | None]:
    """Rebuild the frontier of a finished or interrupted sweep from its MLflow child runs.

    ``label_key`` defaults to the one the sweep recorded on its parent run (tag ``hyporay.frontier_label``),
    else ``train.lam``. Logs the artefacts to the parent run and rewrites the shared chart; returns the
    frontier and the chart's link.
    """
    from hyporay.engine import tracking

    c = tracking.client(tracking_uri)
    parent = tracking.retry(c.get_run, parent_id)
    tags = parent.data.tags
    label_key = label_key or tags.get(tracking.FRONTIER_LABEL_TAG) or DEFAULT_LABEL
    runs = tracking.child_runs(c, experiment_id, parent_id)
    fr = build(runs, out_dir, title_for(tags.get(tracking.SWEEP_TAG, parent.info.run_name or "sweep"),
                                    tags.get("profile", "?"), runs), label_key)
    return fr, publish(c, tracking_uri, experiment_id, parent_id, runs, fr.artefacts)
