"""Trade-off frontiers: natural risk (x) vs hypocritical risk R_hyp(D-) (y), one curve per trainer.

A function of the runs table (``hyporay.analysis.runs``): points are means over seeds (``runs.mean_std``) per
(curve, label), the label being the swept trial field (``label_key``: ``train.lam`` by default, or e.g.
``train.attack.eps``, ``model.name``). A run planned for several curves (natural training at λ = 0 feeds both
TRADES and THRM: tag ``hyporay.curves``) is a point of each. Pareto-optimal points (``stats.pareto_mask``, over
every point) are marked, and each curve has its own Pareto front of its mean points.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from hyporay import metrics as M
from hyporay.analysis.runs import mean_std
from hyporay.analysis.stats import pareto_mask

X, Y = M.NATURAL_RISK, M.HYPOCRITICAL_RISK
UPPER = M.HYPOCRITICAL_RISK_CERTIFIED_UPPER  # with eval.certify: the bracket's certified side of R_hyp(D-)
COST = M.TRAIN_PASSES  # what a point cost: training image-passes (forward + backward, attacks included) per run
DEFAULT_LABEL = "train.lam"
_LABEL_SYMBOL = {"train.lam": "λ", "train.attack.eps": "ε"}


@dataclass
class FrontierPoint:
    trainer: str                   # the curve: a trainer (natural λ = 0 runs appear in each curve they feed)
    label: float | str             # value of ``label_key`` (λ by default; may be a string, e.g. a model name)
    n_seeds: int
    natural_risk: float
    natural_risk_std: float
    hypocritical_risk: float
    hypocritical_risk_std: float
    pareto: bool = False           # Pareto-optimal among every point of the frontier
    front: bool = False            # on its own curve's Pareto front
    label_key: str = DEFAULT_LABEL
    # the certified upper bound of R_hyp(D-) (mean over seeds; NaN without eval.certify): R_hyp(D-) as found by
    # the attack is the bracket's lower side
    hypocritical_risk_certified_upper: float = float("nan")
    # its cost: training image-passes of one run (mean over seeds; NaN where the runs did not count them)
    train_passes: float = float("nan")

    @property
    def label_text(self) -> str:
        return label_text(self.label_key, self.label)


def label_column(label_key: str) -> str:
    """CSV column of a label: ``train.lam`` -> ``lam``, ``train.attack.eps`` -> ``eps``, ``model.name`` -> ``model``."""
    parts = label_key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def label_text(label_key: str, value) -> str:
    """How a point is annotated: ``λ=5``, ``ε=0.05``, or the value itself for strings (``resnet18``)."""
    if isinstance(value, str):
        return value
    return f"{_LABEL_SYMBOL.get(label_key, label_column(label_key))}={value:.4g}"


def _label_order(label) -> tuple:
    return (isinstance(label, str), label)


def curve_rows(df: pd.DataFrame, label_key: str = DEFAULT_LABEL) -> pd.DataFrame:
    """One row per (run, curve it feeds), with ``curve`` and ``label`` columns; rows without both risks (a model
    without mistakes has no R_hyp(D-)) are dropped."""
    if df.empty or X not in df or Y not in df:
        return pd.DataFrame(columns=["curve", "label", X, Y])
    rows = []
    for r in df.to_dict("records"):
        if pd.isna(r.get(X)) or pd.isna(r.get(Y)):
            continue
        label = r.get(label_key, 0.0 if label_key == DEFAULT_LABEL else None)
        label = "n/a" if label is None or (isinstance(label, float) and pd.isna(label)) else label
        for curve in r.get("curves") or (str(r.get("train.trainer")),):
            rows.append({"curve": curve, "label": label, X: float(r[X]), Y: float(r[Y]), "seed": r.get("seed"),
                         "run_id": r.get("run_id"), UPPER: float(r.get(UPPER, float("nan"))),
                         COST: float(r.get(COST, float("nan")))})
    return pd.DataFrame(rows, columns=["curve", "label", X, Y, "seed", "run_id", UPPER, COST])


def points(df: pd.DataFrame, label_key: str = DEFAULT_LABEL) -> list[FrontierPoint]:
    """The frontier of the result rows of a runs table (see the module doc)."""
    cr = curve_rows(df, label_key)
    pts = []
    for (curve, label), g in cr.groupby(["curve", "label"], sort=False):
        (xm, xs), (ym, ys) = mean_std(g[X]), mean_std(g[Y])
        pts.append(FrontierPoint(str(curve), label, len(g), xm, xs, ym, ys, label_key=label_key,
                                 hypocritical_risk_certified_upper=mean_std(g[UPPER])[0],
                                 train_passes=mean_std(g[COST])[0]))
    pts.sort(key=lambda p: (p.trainer, _label_order(p.label)))
    for p, flag in zip(pts, pareto_mask([(p.natural_risk, p.hypocritical_risk) for p in pts])):
        p.pareto = bool(flag)
    for _trainer, ps in by_trainer(pts).items():
        for p, flag in zip(ps, pareto_mask([(p.natural_risk, p.hypocritical_risk) for p in ps])):
            p.front = bool(flag)
    return pts


def by_trainer(pts: list[FrontierPoint]) -> dict[str, list[FrontierPoint]]:
    out: dict[str, list[FrontierPoint]] = {}
    for p in pts:
        out.setdefault(p.trainer, []).append(p)
    return out


def front(pts: list[FrontierPoint]) -> list[FrontierPoint]:
    """A curve's own Pareto front, by natural risk: what a line through the curve should join (not λ order)."""
    return sorted((p for p in pts if p.front), key=lambda p: (p.natural_risk, p.hypocritical_risk))


def fmt_label(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def table(pts: list[FrontierPoint], caption: str | None = None) -> str:
    """The frontier as text, its threat model in the caption: ``*`` Pareto-optimal overall, ``+`` on its curve's
    front."""
    key = pts[0].label_key if pts else DEFAULT_LABEL
    name = "lambda" if key == DEFAULT_LABEL else label_column(key)
    width = max([7, len(name)] + [len(fmt_label(p.label)) for p in pts])
    upper, cost = certified(pts), counted(pts)
    head = (f"{'trainer':<8} {name:>{width}} {'seeds':>5} {'natural_risk':>18} {'hypocritical_risk':>18}"
            + ("  certified <=" if upper else "") + (f"  {'train passes':>12}" if cost else "") + "  pareto")
    lines = ([caption] if caption else []) + [head, "-" * len(head)]
    for p in pts:
        mark = "*" if p.pareto else "+" if p.front else ""
        bound = f"  {p.hypocritical_risk_certified_upper:>12.4f}" if upper else ""
        spent = f"  {fmt_passes(p.train_passes):>12}" if cost else ""
        lines.append(f"{p.trainer:<8} {fmt_label(p.label):>{width}} {p.n_seeds:>5d} "
                     f"{p.natural_risk:>9.4f} ± {p.natural_risk_std:<6.4f}"
                     f" {p.hypocritical_risk:>9.4f} ± {p.hypocritical_risk_std:<6.4f}{bound}{spent}  {mark}")
    if pts:
        lines.append("* Pareto-optimal among all points; + on its trainer's own front (mean ± std over seeds)"
                     + ("; train passes: image-passes of one run's training, forward + backward" if cost else ""))
    if upper:
        lines.append(vacuous_note(pts))
    return "\n".join(lines)


def vacuous_note(pts: list[FrontierPoint]) -> str:
    """What the certified column means, and how many of its bounds prove nothing (an upper bound of 1 on a risk)."""
    bounds = [p.hypocritical_risk_certified_upper for p in pts if not math.isnan(p.hypocritical_risk_certified_upper)]
    vacuous = sum(b >= 1.0 for b in bounds)
    tail = ("" if not vacuous else f"; {'every bound' if vacuous == len(bounds) else f'{vacuous} of {len(bounds)}'}"
            " at 1.0000 is vacuous: the certifier proves nothing for that model at this eps")
    return "certified <=: a certified upper bound of R_hyp(D-) (eval.certify; mean over seeds)" + tail


def certified(pts: list[FrontierPoint]) -> bool:
    """Whether the points carry the certified side of the R_hyp(D-) bracket (the runs had eval.certify)."""
    return any(not math.isnan(p.hypocritical_risk_certified_upper) for p in pts)


def counted(pts: list[FrontierPoint]) -> bool:
    """Whether the points carry their cost (the runs counted their training passes)."""
    return any(not math.isnan(p.train_passes) for p in pts)


def fmt_passes(n: float) -> str:
    """Image-passes for a table: ``1.23e+06``; ``n/a`` when not counted."""
    return "n/a" if math.isnan(n) else f"{n:.3g}"


def csv_rows(pts: list[FrontierPoint]) -> list[dict]:
    """The CSV's rows: the label under its column name (``lam``, ``eps``, ``model``, ...), no ``label_key``; the
    certified upper bound of R_hyp(D-) only when some run had one."""
    out = []
    with_upper, with_cost = certified(pts), counted(pts)
    for p in pts:
        d = asdict(p)
        d.pop("label_key")
        if not with_upper:
            d.pop(UPPER)
        if not with_cost:
            d.pop(COST)
        out.append({"trainer": d.pop("trainer"), label_column(p.label_key): d.pop("label"), **d})
    return out
