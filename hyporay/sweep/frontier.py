"""Trade-off frontiers: natural risk (x) vs hypocritical risk R_hyp(D-) (y), one curve per trainer.

Points are aggregated over seeds (mean and standard deviation) per (trainer, λ); Pareto-optimal points
(no other point has both risks lower or equal, one strictly) are marked. Artefacts: ``frontier.csv``,
``frontier.png`` (matplotlib) and ``frontier.html`` (plotly, self-contained, works offline).
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from hyporay import metrics as M

X, Y = M.NATURAL_RISK, M.HYPOCRITICAL_RISK


@dataclass
class FrontierPoint:
    trainer: str
    lam: float
    n_seeds: int
    natural_risk: float
    natural_risk_std: float
    hypocritical_risk: float
    hypocritical_risk_std: float
    pareto: bool = False


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


def aggregate(rows: list[dict]) -> list[FrontierPoint]:
    """``rows`` hold trainer, lam, and the two risks (one row per trial); NaN risks are skipped."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in rows:
        if any(r.get(k) is None or math.isnan(float(r[k])) for k in (X, Y)):
            continue
        groups[(str(r["trainer"]), float(r["lam"]))].append(r)
    pts = []
    for (trainer, lam), rs in sorted(groups.items()):
        xm, xs = _mean_std([float(r[X]) for r in rs])
        ym, ys = _mean_std([float(r[Y]) for r in rs])
        pts.append(FrontierPoint(trainer, lam, len(rs), xm, xs, ym, ys))
    for p, flag in zip(pts, pareto_mask([(p.natural_risk, p.hypocritical_risk) for p in pts])):
        p.pareto = flag
    return pts


def table(points: list[FrontierPoint]) -> str:
    head = f"{'trainer':<8} {'lambda':>7} {'seeds':>5} {'natural_risk':>18} {'hypocritical_risk':>18}  pareto"
    lines = [head, "-" * len(head)]
    for p in points:
        lines.append(f"{p.trainer:<8} {p.lam:>7g} {p.n_seeds:>5d} {p.natural_risk:>9.4f} ± {p.natural_risk_std:<6.4f}"
                     f" {p.hypocritical_risk:>9.4f} ± {p.hypocritical_risk_std:<6.4f}  {'*' if p.pareto else ''}")
    return "\n".join(lines)


def write_csv(points: list[FrontierPoint], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(points[0]).keys()) if points else ["trainer"])
        w.writeheader()
        for p in points:
            w.writerow(asdict(p))
    return path


def _by_trainer(points):
    out = defaultdict(list)
    for p in points:
        out[p.trainer].append(p)
    return out


def write_png(points: list[FrontierPoint], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for trainer, ps in sorted(_by_trainer(points).items()):
        ps = sorted(ps, key=lambda p: p.lam)
        xs, ys = [p.natural_risk for p in ps], [p.hypocritical_risk for p in ps]
        ax.errorbar(xs, ys, xerr=[p.natural_risk_std for p in ps], yerr=[p.hypocritical_risk_std for p in ps],
                    marker="o", capsize=3, label=trainer.upper() if len(trainer) <= 6 else trainer)
        for p in ps:
            ax.annotate(f"λ={p.lam:g}", (p.natural_risk, p.hypocritical_risk), textcoords="offset points",
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
        ps = sorted(ps, key=lambda p: p.lam)
        fig.add_trace(go.Scatter(
            x=[p.natural_risk for p in ps], y=[p.hypocritical_risk for p in ps], mode="lines+markers+text",
            name=trainer, text=[f"λ={p.lam:g}" for p in ps], textposition="top right",
            error_x={"type": "data", "array": [p.natural_risk_std for p in ps]},
            error_y={"type": "data", "array": [p.hypocritical_risk_std for p in ps]},
            customdata=[[p.lam, p.n_seeds, p.pareto] for p in ps],
            hovertemplate=("%{fullData.name} λ=%{customdata[0]}<br>natural risk %{x:.4f}<br>"
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


def rows_from_runs(runs) -> tuple[list[dict], int]:
    """Frontier rows from MLflow child runs (finished ones); returns (rows, skipped unfinished)."""
    rows, skipped = [], 0
    for r in runs:
        if r.info.status != "FINISHED":
            skipped += 1
            continue
        p, m = r.data.params, r.data.metrics
        if X not in m or Y not in m:
            skipped += 1
            continue
        rows.append({"trainer": p.get("train.trainer"), "lam": float(p.get("train.lam", 0)),
                     "seed": p.get("seed"), X: m[X], Y: m[Y], "run_id": r.info.run_id})
    return rows, skipped
