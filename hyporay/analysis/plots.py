"""Pictures, one helper per kind: the trade-off frontier (PNG with matplotlib, interactive HTML with plotly), the
attack-convergence curves and the Fig. 3 bars. Every title carries the threat model it was measured under."""
from __future__ import annotations

from pathlib import Path

from hyporay import metrics as M
from hyporay.analysis.frontier import FrontierPoint, by_trainer, front
from hyporay.analysis.tables import ATTACKS, convergence_series, unique

X_LABEL = "natural risk (clean test error)"
Y_LABEL = "hypocritical risk R_hyp(D-) (concealable mistakes)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _name(trainer: str) -> str:
    return trainer.upper() if len(trainer) <= 6 else trainer


def frontier_png(pts: list[FrontierPoint], path: Path, title: str, caption: str = "") -> Path:
    """Mean points with ± std bars, one colour per trainer, each trainer's own Pareto front as a staircase
    (not a line through λ order), labels at every point, the overall Pareto-optimal points circled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.8), dpi=120)
    for i, (trainer, ps) in enumerate(sorted(by_trainer(pts).items())):
        colour = f"C{i}"
        ax.errorbar([p.natural_risk for p in ps], [p.hypocritical_risk for p in ps],
                    xerr=[p.natural_risk_std for p in ps], yerr=[p.hypocritical_risk_std for p in ps], fmt="o",
                    capsize=3, color=colour, alpha=0.85, label=_name(trainer))
        f = front(ps)
        if len(f) > 1:
            ax.step([p.natural_risk for p in f], [p.hypocritical_risk for p in f], where="post", color=colour, lw=1.4,
                    label=f"{_name(trainer)} front")
        for p in ps:
            ax.annotate(p.label_text, (p.natural_risk, p.hypocritical_risk), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=colour)
    par = [p for p in pts if p.pareto]
    if par:
        ax.scatter([p.natural_risk for p in par], [p.hypocritical_risk for p in par], s=170, facecolors="none",
                   edgecolors="black", linewidths=1.2, label="Pareto-optimal (all)", zorder=5)
    seeds = max((p.n_seeds for p in pts), default=0)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    sub = (f"mean ± std over {seeds} seeds" if seeds > 1 else "") + (f"\n{caption}" if caption else "")
    ax.set_title(title + (f"\n{sub}" if sub else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def frontier_html(pts: list[FrontierPoint], path: Path, title: str, caption: str = "") -> Path:
    """The same picture, interactive and self-contained (works offline)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (trainer, ps) in enumerate(sorted(by_trainer(pts).items())):
        colour = f"hsl({(i * 137) % 360},60%,42%)"
        fig.add_trace(go.Scatter(
            x=[p.natural_risk for p in ps], y=[p.hypocritical_risk for p in ps], mode="markers+text",
            name=trainer, text=[p.label_text for p in ps], textposition="top right", marker={"color": colour},
            error_x={"type": "data", "array": [p.natural_risk_std for p in ps]},
            error_y={"type": "data", "array": [p.hypocritical_risk_std for p in ps]},
            customdata=[[p.label_text, p.n_seeds, p.pareto] for p in ps],
            hovertemplate=("%{fullData.name} %{customdata[0]}<br>natural risk %{x:.4f}<br>R_hyp(D-) %{y:.4f}"
                           "<br>seeds %{customdata[1]} pareto %{customdata[2]}<extra></extra>")))
        f = front(ps)
        if len(f) > 1:
            fig.add_trace(go.Scatter(x=[p.natural_risk for p in f], y=[p.hypocritical_risk for p in f],
                                     mode="lines", line={"shape": "hv", "color": colour}, name=f"{trainer} front"))
    par = [p for p in pts if p.pareto]
    fig.add_trace(go.Scatter(x=[p.natural_risk for p in par], y=[p.hypocritical_risk for p in par], mode="markers",
                             name="Pareto-optimal", marker={"size": 16, "symbol": "circle-open", "color": "black"}))
    fig.update_layout(title=title + (f"<br><sub>{caption}</sub>" if caption else ""), xaxis_title=X_LABEL,
                      yaxis_title=Y_LABEL, template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return Path(path)


def convergence_png(conv: list[dict], path: Path, title: str) -> Path:
    """Accuracy under attack vs steps (left, log scale) and vs restarts (right), one colour per trainer, solid =
    adversarial (A), dashed = hypocritical (F)."""
    plt = _plt()
    series = convergence_series(conv)
    colours = {t: f"C{i}" for i, t in enumerate(unique(t for t, _, _ in series))}
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
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def bars_png(groups: list[dict], bars: list[tuple[str, str]], labels: list[str], path: Path, title: str,
             ylabel: str) -> Path:
    """Grouped bars: one group per entry of ``groups`` (x tick ``labels``), one bar per (key, legend) of
    ``bars``."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(groups) + 2), 4.5), dpi=120)
    x = np.arange(len(groups))
    w = 0.8 / max(1, len(bars))
    for i, (key, legend) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * w, [g[key] for g in groups], w, label=legend)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
