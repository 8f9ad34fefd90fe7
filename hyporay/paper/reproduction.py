"""The reproduction of the paper (sweeps/reproduce.py): its combined grid, and the report with computed verdicts.

``grid`` builds the trials of the four parts (Tables 1-2, Table 3, Fig. 3 via ``eval.targeted``, Fig. 4);
``parts_of`` tells from a trial config which parts it belongs to; ``report`` (the sweep's ``after`` hook)
turns the finished child runs into ``report.md`` with the paper's CIFAR-10 numbers beside ours and one
verdict per claim, each computed by the rule written next to it (``claim_*`` functions, pure).
"""
from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from hyporay import metrics as M
from hyporay.config import load_config, merge
from hyporay.analysis import frontier as F
from hyporay.analysis import tables as R
from hyporay.analysis import stats as S
from hyporay.engine import tracking

T3_VARIANTS = ("quality", "poisoning")
T3_TRAINERS = (("natural", 0.0), ("pgd_at", 0.0), ("trades", 6.0))   # Table 3: TRADES with λ = 6
FIG4_TRAINERS = ("trades", "thrm")
TRAINER_NAMES = {"natural": "NT", "pgd_at": "PGD-AT", "trades": "TRADES", "thrm": "THRM"}
SUBSTANDARD = ("naive", "noise", "mislabeling", "poisoning")
REF = (1.0, 1.0)        # hypervolume reference point (natural risk, R_hyp(D-)): the worst value of both

# thresholds of the verdicts (stated in the report)
CLAIM1_GAP = 0.20       # F - D in every substandard cell
CLAIM3_P = 0.05         # permutation p-value of Spearman's ρ
CLAIM5_GAP = 0.20       # median over groups of R_hyp(D-) - max_label targeted success
CLAIM5_MIN_WRONG = 5    # groups with fewer misclassified test points (mean over seeds) are left out
N_BOOT = 2000

# The paper's published numbers (000, CIFAR-10, l_inf 8/255, GPU), accuracies D / A / F in %
PAPER_T1 = {  # variant -> model -> (D, A, F)
    "naive": {"mlp": (8.56, 0.00, 99.56), "vgg16": (9.76, 0.45, 57.25), "wrn28_10": (10.06, 0.34, 40.64)},
    "noise": {"mlp": (8.53, 0.71, 86.75), "vgg16": (9.81, 0.00, 97.98), "wrn28_10": (11.35, 0.02, 98.42)},
    "mislabeling": {"mlp": (9.92, 0.00, 100.00), "vgg16": (9.94, 0.00, 99.86), "wrn28_10": (10.21, 0.00, 100.00)},
    "poisoning": {"mlp": (57.60, 0.55, 99.50), "vgg16": (12.19, 0.00, 99.49), "wrn28_10": (10.42, 0.00, 100.00)},
    "quality": {"mlp": (58.09, 0.91, 99.31), "vgg16": (92.90, 0.00, 100.00), "wrn28_10": (95.41, 0.00, 100.00)},
}
PAPER_T3 = {  # (variant, trainer) -> (D, A, F), ResNet-18
    ("quality", "natural"): (94.38, 0.00, 100.00), ("quality", "pgd_at"): (84.08, 51.98, 96.92),
    ("quality", "trades"): (81.05, 53.32, 95.17), ("poisoning", "pgd_at"): (82.65, 51.34, 96.20),
    ("poisoning", "trades"): (80.01, 52.34, 94.64),
}
PAPER_LABEL = "paper (000): CIFAR-10, l_inf ε=8/255, 110 epochs, GPU"


# --- the grid -------------------------------------------------------------------------------------------

def _paper_exceptions(over: dict, variant: str, model: str) -> dict:
    """Reference §4: MLP lr 0.01; Noise/Mislabeling: weight decay 0, no augmentation; VGG-16 there lr 0.01."""
    train = over.setdefault("train", {})
    if model == "mlp":
        train["lr"] = 0.01
    if variant in ("noise", "mislabeling"):
        train["weight_decay"] = 0.0
        train["augment"] = False
        if model == "vgg16":
            train["lr"] = 0.01
    return over


def grid(base: dict, values: dict, seeds: list[int], profile: str) -> list[dict]:
    """The trials of all parts (see the module doc). Table 3 and Fig. 4 use the profile's trial model; every
    trial is evaluated once, after its last epoch."""
    cfg = load_config(base)
    epochs, model3 = cfg.train.epochs, cfg.model.name
    once = {"eval": {"every": max(1, epochs)}}
    trials = []

    def add(over: dict, variant: str, model: str) -> None:
        if profile == "paper":
            over = _paper_exceptions(over, variant, model)
        trials.append(merge(merge(base, once), over))

    for seed in seeds:
        for v in values["variant.name"]:
            for m in values["model.name"]:
                add({"seed": seed, "variant": {"name": v}, "model": {"name": m},
                     "train": {"trainer": "natural", "lam": 0.0}, "eval": {"targeted": True}}, v, m)
        for v in T3_VARIANTS:
            for trainer, lam in T3_TRAINERS:
                add({"seed": seed, "variant": {"name": v}, "model": {"name": model3},
                     "train": {"trainer": trainer, "lam": lam}, "eval": {"targeted": True}}, v, model3)
        for trainer in FIG4_TRAINERS:
            for lam in values["train.lam"]:
                add({"seed": seed, "variant": {"name": "quality"}, "model": {"name": model3},
                     "train": {"trainer": trainer, "lam": float(lam)}, "eval": {"targeted": False}},
                    "quality", model3)
    return trials


def options(p) -> None:
    p.add_argument("--out", help="report directory (default docs/results/<profile>)")
    p.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap resamples of the intervals")


def parts_of(trial: dict, model3: str | None) -> set[str]:
    """Which parts of the report a trial config feeds: t12, t3, fig3, fig4."""
    t, v, m = trial["train"], trial["variant"]["name"], trial["model"]["name"]
    targeted = trial["eval"].get("targeted", False)
    out = set()
    if targeted:
        out.add("fig3")
        if t["trainer"] == "natural":
            out.add("t12")
        if m == model3 and v in T3_VARIANTS and (t["trainer"], float(t["lam"])) in T3_TRAINERS:
            out.add("t3")
    elif t["trainer"] in FIG4_TRAINERS and v == "quality":
        out.add("fig4")
    return out


def _model3(trials: list[dict]) -> str | None:
    """Table 3's model: the one of the PGD-AT trials (the profile's trial model)."""
    ms = {t["model"]["name"] for t in trials if t["train"]["trainer"] == "pgd_at"}
    return next(iter(ms)) if len(ms) == 1 else None


# --- claims (pure: rows are dicts of params and final metrics, as reports.final_rows) ------------------

def _f(r: dict, k: str) -> float:
    v = r.get(k)
    return math.nan if v is None else float(v)


def _lam(r: dict) -> float:
    return float(r.get("train.lam", 0) or 0)


def _seed(r: dict) -> int:
    return int(float(r.get("seed", 0)))


def claim1(rows_t12: list[dict]) -> dict:
    """F - D per substandard cell (variant != quality, mean over seeds). Shown: gap >= CLAIM1_GAP in every cell;
    partly: in at least half; not shown: otherwise."""
    cells = R.mean_by([r for r in rows_t12 if r.get("variant.name") in SUBSTANDARD], ["variant.name", "model.name"],
                      [M.ACC_CLEAN, M.ACC_HYP])
    gaps = [(c["variant.name"], c["model.name"], c[M.ACC_HYP] - c[M.ACC_CLEAN]) for c in cells]
    gaps = [g for g in gaps if not math.isnan(g[2])]
    if not gaps:
        return {"verdict": "inconclusive", "statistic": "no substandard cells finished", "cells": []}
    ok = sum(g >= CLAIM1_GAP for _, _, g in gaps)
    verdict = "shown" if ok == len(gaps) else "partly shown" if 2 * ok >= len(gaps) else "not shown"
    vals = [g for _, _, g in gaps]
    stat = (f"F - D >= {CLAIM1_GAP:.2f} in {ok}/{len(gaps)} substandard cells; min {min(vals):.3f}, median "
            f"{float(np.median(vals)):.3f}")
    below = [f"{R.VARIANTS.get(v, v)}/{m} {g:.3f}" for v, m, g in gaps if g < CLAIM1_GAP]
    if below:
        stat += "; below: " + ", ".join(below)
    return {"verdict": verdict, "statistic": stat, "cells": [{"variant": v, "model": m, "gap": g}
                                                             for v, m, g in gaps]}


def claim2(rows_t3: list[dict], n_boot: int = N_BOOT) -> dict:
    """R_hyp(D-) of PGD-AT / TRADES minus that of NT, paired by seed, per training set. Shown: the 95% bootstrap
    interval (over seeds) lies below 0 in every comparison; inconclusive with fewer than 2 seeds."""
    by = defaultdict(dict)
    for r in rows_t3:
        by[(r["variant.name"], r["train.trainer"])][_seed(r)] = _f(r, M.HYPOCRITICAL_RISK)
    comps = []
    for v in T3_VARIANTS:
        nt = by.get((v, "natural"), {})
        for at in ("pgd_at", "trades"):
            a = by.get((v, at), {})
            seeds = sorted(set(a) & set(nt))
            if not seeds:
                continue
            c = S.paired_comparison([a[s] for s in seeds], [nt[s] for s in seeds], n_boot=n_boot)
            comps.append({"variant": v, "trainer": at, **c})
    if not comps:
        return {"verdict": "inconclusive", "statistic": "no Table 3 pairs finished", "comparisons": []}
    parts = [f"{TRAINER_NAMES[c['trainer']]}-NT on {c['variant']}: {c['mean']:+.3f} [{c['low']:+.3f}, "
             f"{c['high']:+.3f}] (n={c['n']})" for c in comps]
    n_min = min(c["n"] for c in comps)
    if n_min < 2 or len(comps) < 4:
        verdict = "inconclusive"
    else:
        below = sum(c["high"] < 0 for c in comps)
        verdict = "shown" if below == len(comps) else "partly shown" if below else "not shown"
    return {"verdict": verdict, "statistic": "Δ R_hyp(D-) " + "; ".join(parts), "comparisons": comps}


def claim3(rows_f4: list[dict], n_perm: int = N_BOOT) -> dict:
    """Per trainer, Spearman's ρ of λ with natural risk and with R_hyp(D-) over all trials (every seed). Shown:
    ρ(natural) > 0 and ρ(R_hyp) < 0 with permutation p < CLAIM3_P for both trainers; inconclusive with fewer
    than 3 distinct λ."""
    res, good, lams_n = [], 0, []
    for tr in FIG4_TRAINERS:
        rs = [r for r in rows_f4 if r.get("train.trainer") == tr]
        lam = [_lam(r) for r in rs]
        lams_n.append(len(set(lam)))
        nat, hyp = [_f(r, M.NATURAL_RISK) for r in rs], [_f(r, M.HYPOCRITICAL_RISK) for r in rs]
        rn, rh = S.spearman(lam, nat), S.spearman(lam, hyp)
        pn = S.spearman_permutation_p(lam, nat, n_perm=n_perm)
        ph = S.spearman_permutation_p(lam, hyp, n_perm=n_perm)
        ok = rn > 0 and rh < 0 and pn < CLAIM3_P and ph < CLAIM3_P
        good += ok
        res.append({"trainer": tr, "n": len(rs), "rho_natural": rn, "p_natural": pn, "rho_hyp": rh, "p_hyp": ph})
    stat = "; ".join(f"{TRAINER_NAMES[r['trainer']]}: ρ(λ, natural risk) = {r['rho_natural']:+.2f} "
                     f"(p={r['p_natural']:.4f}), ρ(λ, R_hyp(D-)) = {r['rho_hyp']:+.2f} (p={r['p_hyp']:.4f}), "
                     f"n={r['n']}" for r in res)
    if min(lams_n) < 3:
        verdict = "inconclusive"
    else:
        verdict = "shown" if good == len(res) else "partly shown" if good else "not shown"
    return {"verdict": verdict, "statistic": stat, "per_trainer": res}


def fig4_arrays(rows_f4: list[dict]) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
    """(THRM, TRADES) arrays seeds x λ x (natural risk, R_hyp(D-)) over the seeds both trainers have (NaN where
    a trial is missing), the seeds and the λ grid."""
    lams = sorted({_lam(r) for r in rows_f4})
    by = {}
    for r in rows_f4:
        by[(r["train.trainer"], _seed(r), _lam(r))] = (_f(r, M.NATURAL_RISK), _f(r, M.HYPOCRITICAL_RISK))
    seeds = sorted({s for (t, s, _) in by if t == "thrm"} & {s for (t, s, _) in by if t == "trades"})

    def arr(tr):
        return np.array([[by.get((tr, s, lam), (math.nan, math.nan)) for lam in lams] for s in seeds],
                        dtype=float).reshape(len(seeds), len(lams), 2)

    return arr("thrm"), arr("trades"), seeds, lams


def claim4(rows_f4: list[dict], n_boot: int = N_BOOT) -> dict:
    """Hypervolume of THRM's mean frontier minus TRADES's on the natural-risk range both reach (reference point
    (the smaller of the two fronts' largest natural risk, 1), per resample), with a 95% bootstrap interval over
    seeds (paired). Shown: the interval lies above 0; not shown otherwise (also with 1 seed: no interval). The
    difference w.r.t. REF (the whole square, which also rewards reaching higher natural risk) is reported too."""
    thrm, trades, seeds, lams = fig4_arrays(rows_f4)
    if not seeds:
        return {"verdict": "not shown", "statistic": "no seed with both trainers finished", "seeds": 0}
    est, lo, hi = S.hypervolume_difference(thrm, trades, None, n_boot=n_boot)
    f_est, f_lo, f_hi = S.hypervolume_difference(thrm, trades, REF, n_boot=n_boot)
    with np.errstate(all="ignore"):
        m_thrm, m_trades = np.nanmean(thrm, axis=0), np.nanmean(trades, axis=0)
    ref = S.common_x_reference(m_thrm, m_trades)
    hv_thrm, hv_trades = S.hypervolume_2d(m_thrm, ref), S.hypervolume_2d(m_trades, ref)
    shown = len(seeds) >= 2 and lo > 0
    stat = (f"on the common natural-risk range [0, {ref[0]:.3f}]: HV(THRM) - HV(TRADES) = {est:+.4f}, 95% bootstrap "
            f"CI over {len(seeds)} seed(s) [{lo:+.4f}, {hi:+.4f}] (HV THRM {hv_thrm:.4f}, TRADES {hv_trades:.4f}); "
            f"whole square, reference point {REF}: {f_est:+.4f} [{f_lo:+.4f}, {f_hi:+.4f}]; {len(lams)} λ values")
    if len(seeds) < 2:
        stat += "; 1 seed: no interval"
    return {"verdict": "shown" if shown else "not shown", "statistic": stat, "difference": est, "low": lo,
            "high": hi, "hv_thrm": hv_thrm, "hv_trades": hv_trades, "reference": ref, "difference_full": f_est,
            "low_full": f_lo, "high_full": f_hi, "seeds": len(seeds)}


def fig3_groups(rows_fig3: list[dict]) -> list[dict]:
    """Per (variant, model, trainer), means over seeds: misclassified count, R_hyp(D-), each label's targeted
    success, their mean and max."""
    labels = sorted({int(k[len(M.TARGETED_PREFIX):]) for r in rows_fig3 for k in r
                     if k.startswith(M.TARGETED_PREFIX) and k[len(M.TARGETED_PREFIX):].isdigit()})
    keys = [M.N_MISCLASSIFIED, M.HYPOCRITICAL_RISK, M.TARGETED_MEAN] + [M.targeted_metric(k) for k in labels]
    out = []
    for g in R.mean_by(rows_fig3, ["variant.name", "model.name", "train.trainer"], keys):
        per = [g[M.targeted_metric(k)] for k in labels]
        per = [p for p in per if not math.isnan(p)]
        g["targeted_max"] = max(per) if per else math.nan
        g["labels"] = labels
        out.append(g)
    return out


def claim5(groups: list[dict]) -> dict:
    """Gap = R_hyp(D-) - the highest per-label targeted success, per group with >= CLAIM5_MIN_WRONG misclassified
    points. Shown: gap > 0 in every group and median gap >= CLAIM5_GAP; partly: median gap > 0; else not shown."""
    gs = [g for g in groups if g[M.N_MISCLASSIFIED] >= CLAIM5_MIN_WRONG and not math.isnan(g["targeted_max"])
          and not math.isnan(g[M.HYPOCRITICAL_RISK])]
    if not gs:
        return {"verdict": "inconclusive", "statistic": "no group with targeted metrics and enough mistakes"}
    gaps = [g[M.HYPOCRITICAL_RISK] - g["targeted_max"] for g in gs]
    med = float(np.median(gaps))
    pos = sum(x > 0 for x in gaps)
    verdict = ("shown" if pos == len(gaps) and med >= CLAIM5_GAP else "partly shown" if med > 0 else "not shown")
    stat = (f"R_hyp(D-) - max_label targeted success > 0 in {pos}/{len(gaps)} groups, median {med:+.3f}, "
            f"min {min(gaps):+.3f}; mean targeted success {np.mean([g[M.TARGETED_MEAN] for g in gs]):.3f} vs "
            f"R_hyp(D-) {np.mean([g[M.HYPOCRITICAL_RISK] for g in gs]):.3f}")
    return {"verdict": verdict, "statistic": stat, "groups": len(gs)}


CLAIMS = {
    1: "Substandard models reach far higher accuracy on hypocritical examples (F) than on clean data (D).",
    2: "Adversarial training (PGD-AT, TRADES) lowers R_hyp(D-) compared with natural training.",
    3: "As λ grows, natural risk rises and R_hyp(D-) falls, for both TRADES and THRM.",
    4: "THRM gives a better trade-off (lower R_hyp(D-) at equal natural risk) than TRADES.",
    5: "On misclassified points the hypocritical attack succeeds far more often than targeted attacks toward "
       "any fixed wrong label (Fig. 3).",
}
RULES = {
    1: f"shown if F - D >= {CLAIM1_GAP:.2f} in every substandard cell (Naive/Noise/Mislabeling/Poisoning x model, "
       "mean over seeds); partly shown if in at least half; not shown otherwise.",
    2: "per training set (Quality, Poisoning) and trainer (PGD-AT, TRADES λ=6): R_hyp(D-) minus NT's, paired by "
       "seed; shown if every 95% bootstrap interval (over seeds) lies below 0, partly shown if some do, "
       "inconclusive with < 2 seeds.",
    3: f"per trainer, Spearman ρ (average ranks for ties) of λ with natural risk and with R_hyp(D-) over all "
       f"trials; shown if ρ(natural) > 0 and ρ(R_hyp) < 0 with two-sided permutation p < {CLAIM3_P} for both "
       "trainers, partly shown for one, inconclusive with < 3 λ values.",
    4: "hypervolume (both risks minimised) of THRM's mean-over-seeds frontier minus TRADES's on the natural-risk "
       "range both trainers reach (reference point: the smaller of the two fronts' largest mean natural risk, "
       "R_hyp(D-) = 1; recomputed in each resample), 95% percentile bootstrap interval over seeds (resampled "
       "jointly for both trainers); shown only if the interval lies above 0. The whole-square difference "
       f"(reference point {REF}) is shown for information: it also rewards a trainer for reaching higher natural "
       "risk, which the claim (at equal natural risk) does not.",
    5: f"per group (training set x model x trainer, Tables 1-3 trials, >= {CLAIM5_MIN_WRONG} misclassified test "
       "points): R_hyp(D-) minus the highest per-label targeted success on D-; shown if positive in every group "
       f"and the median >= {CLAIM5_GAP:.2f}; partly shown if the median > 0.",
}


# --- the report ----------------------------------------------------------------------------------------

def _git_commit(start: Path) -> str:
    """HEAD's commit, read from .git without running git (unknown outside a checkout)."""
    for d in [start, *start.parents]:
        g = d / ".git"
        if g.is_file():  # worktree: "gitdir: <path>"
            g = Path(g.read_text().split(":", 1)[1].strip())
        if not g.is_dir():
            continue
        head = (g / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        for root in (g, Path((g / "commondir").read_text().strip()) if (g / "commondir").is_file() else g):
            root = root if root.is_absolute() else g / root
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        return f"unknown ({ref})"
    return "unknown (not a git checkout)"


def _hardware() -> str:
    import torch

    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "no GPU"
    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU core(s), {gpus}".replace("  ", " ")


def _pct3(c: dict | None) -> str:
    if not c:
        return "n/a"
    return " / ".join(R._pct(c[k]) for k in (M.ACC_CLEAN, M.ACC_ADV, M.ACC_HYP))


def _paper3(v: tuple | None) -> str:
    return " / ".join(f"{x:.2f}" for x in v) if v else "—"


def _ms(m: float, s: float) -> str:
    return "n/a" if math.isnan(m) else f"{m:.3f} ± {s:.3f}"


def _fig3_png(groups: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(groups) + 2), 4.5), dpi=120)
    x = np.arange(len(groups))
    w = 0.27
    ax.bar(x - w, [g[M.HYPOCRITICAL_RISK] for g in groups], w, label="hypocritical (toward the true label)")
    ax.bar(x, [g["targeted_max"] for g in groups], w, label="targeted, best fixed label")
    ax.bar(x + w, [g[M.TARGETED_MEAN] for g in groups], w, label="targeted, mean over labels")
    ax.set_xticks(x, [f"{R.VARIANTS.get(g['variant.name'], g['variant.name'])}\n{g['model.name']}"
                      f"\n{TRAINER_NAMES.get(g['train.trainer'], g['train.trainer'])}" for g in groups], fontsize=7)
    ax.set_ylabel("attack success rate on misclassified points")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def build_report(rows: list[dict], trials: list[dict], profile: str, out: Path, *, command: str, commit: str,
                 hardware: str, counts: str, n_boot: int = N_BOOT) -> tuple[str, dict, list[Path]]:
    """Write report.md and its figures/tables under ``out`` from run rows (each with ``_parts``); returns
    (markdown, claims, paths)."""
    out.mkdir(parents=True, exist_ok=True)
    part = {p: [r for r in rows if p in r["_parts"]] for p in ("t12", "t3", "fig3", "fig4")}
    t0 = trials[0]
    caption = R.eval_caption(t0, profile)
    model3 = _model3(trials) or t0["model"]["name"]
    epochs = sorted({t["train"]["epochs"] for t in trials})
    n_seeds = len({t["seed"] for t in trials})
    ours = f"{t0['data']['name']}, {epochs[0] if len(epochs) == 1 else epochs} epoch(s), {hardware}"
    paths: list[Path] = []
    md = [f"# Reproduction of \"With False Friends Like These\" (000): profile `{profile}`", "",
          f"- generated: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
          f"- commit: `{commit}`", f"- command: `{command}`", f"- trials: {counts}; {n_seeds} seed(s)",
          f"- {caption}; train attack {load_config(t0).train.attack.spec().describe()}",
          f"- hardware: {hardware}",
          "- every number of ours is a mean over seeds (± standard deviation where shown); the paper's numbers are "
          "its published CIFAR-10 results (GPU), shown for the layout and orders of magnitude only: "
          + ("the data set differs." if t0["data"]["name"] != "cifar10" else "same data set."), ""]

    # Tables 1-2
    models = R.unique(r["model.name"] for r in part["t12"])
    header, body, cells = R.substandard_table(part["t12"], models)
    paths.append(R.write_csv(cells, out / "table1_2.csv"))
    md += ["## Tables 1-2: substandard training sets (natural training)", "",
           R.markdown_table(header, body, f"Ours — accuracy (%) D / A / F, {ours}; {caption}."),
           R.markdown_table(["training set", "MLP", "VGG-16", "WRN-28-10"],
                            [[R.VARIANTS[v]] + [_paper3(PAPER_T1[v][m]) for m in ("mlp", "vgg16", "wrn28_10")]
                             for v in PAPER_T1], f"Paper (Table 1) — accuracy (%) D / A / F, {PAPER_LABEL}.")]

    # Table 3
    t3 = {(c["variant.name"], c["train.trainer"]): c for c in R.mean_by(
        part["t3"], ["variant.name", "train.trainer"], [M.ACC_CLEAN, M.ACC_ADV, M.ACC_HYP, M.HYPOCRITICAL_RISK])}
    body3 = []
    for v in T3_VARIANTS:
        for tr, lam in T3_TRAINERS:
            c = t3.get((v, tr))
            name = TRAINER_NAMES[tr] + (f" (λ={lam:g})" if tr == "trades" else "")
            body3.append([R.VARIANTS[v], name, _pct3(c),
                          _ms(c[M.HYPOCRITICAL_RISK], c[f"{M.HYPOCRITICAL_RISK}_std"]) if c else "n/a",
                          _paper3(PAPER_T3.get((v, tr)))])
    paths.append(R.write_csv(list(t3.values()), out / "table3.csv"))
    md += ["## Table 3: adversarial training on Quality and Poisoning", "",
           R.markdown_table(["training set", "trainer", f"ours D / A / F (%) ({model3})", "ours R_hyp(D-)",
                             "paper D / A / F (%) (ResNet-18, CIFAR-10)"], body3,
                            f"Ours: {ours}; {caption}. Paper: {PAPER_LABEL}; it publishes no Poisoning NT row "
                            "for ResNet-18 (—).")]

    # Fig. 3
    groups = fig3_groups(part["fig3"])
    if groups:
        _fig3_png(groups, out / "fig3.png", f"Fig. 3 (ours): {t0['data']['name']}, {caption}")
        paths.append(out / "fig3.png")
        paths.append(R.write_csv([{k: v for k, v in g.items() if k != "labels"} for g in groups], out / "fig3.csv"))
    body_f3 = [[R.VARIANTS.get(g["variant.name"], g["variant.name"]), g["model.name"],
                TRAINER_NAMES.get(g["train.trainer"], g["train.trainer"]), f"{g[M.N_MISCLASSIFIED]:.1f}",
                f"{g[M.HYPOCRITICAL_RISK]:.3f}", f"{g[M.TARGETED_MEAN]:.3f}", f"{g['targeted_max']:.3f}"]
               for g in groups]
    md += ["## Fig. 3: hypocritical vs targeted attacks on misclassified points", "",
           "![Fig. 3](fig3.png)" if groups else "(no trial with targeted metrics finished)", "",
           R.markdown_table(["training set", "model", "trainer", "misclassified (mean)", "R_hyp(D-)",
                             "targeted (mean over labels)", "targeted (best label)"], body_f3,
                            f"Ours: {ours}; targeted success toward label k counts misclassified points whose true "
                            "label and clean prediction differ from k. The paper's Fig. 3 (CIFAR-10) shows the same "
                            "comparison as bars; it publishes no table."), ""]

    # Fig. 4
    frows = [{"trainer": r["train.trainer"], "label": _lam(r), M.NATURAL_RISK: _f(r, M.NATURAL_RISK),
              M.HYPOCRITICAL_RISK: _f(r, M.HYPOCRITICAL_RISK)} for r in part["fig4"]]
    points = F.aggregate(frows)
    if points:
        title = f"Fig. 4 (ours): TRADES vs THRM · {profile} · {t0['data']['name']}/{model3}"
        paths += [F.write_csv(points, out / "frontier.csv"), F.write_png(points, out / "frontier.png", title)]
    lams = sorted({p.label for p in points})
    pt = {(p.trainer, p.label): p for p in points}
    body4 = [[f"{lam:g}"] + [(_ms(pt[(tr, lam)].natural_risk, pt[(tr, lam)].natural_risk_std) + " ; "
                              + _ms(pt[(tr, lam)].hypocritical_risk, pt[(tr, lam)].hypocritical_risk_std))
                             if (tr, lam) in pt else "n/a" for tr in FIG4_TRAINERS] for lam in lams]
    md += ["## Fig. 4: TRADES vs THRM trade-off over λ", "",
           "![Fig. 4](frontier.png)" if points else "(no Fig. 4 trial finished)", "",
           R.markdown_table(["λ", "TRADES: natural risk ; R_hyp(D-)", "THRM: natural risk ; R_hyp(D-)"], body4,
                            f"Ours: {ours}, {model3} on Quality; mean ± std over seeds. The paper's Fig. 4 "
                            "(CIFAR-10, ResNet-18) is a plot with no published table."), ""]

    # claims
    claims = {1: claim1(part["t12"]), 2: claim2(part["t3"], n_boot), 3: claim3(part["fig4"], n_boot),
              4: claim4(part["fig4"], n_boot), 5: claim5(groups)}
    md += ["## The five claims: verdicts computed from the runs", ""]
    for k, c in claims.items():
        md += [f"**Claim {k}.** {CLAIMS[k]}", "", f"- verdict: **{c['verdict']}**", f"- statistic: {c['statistic']}",
               f"- rule: {RULES[k]}", ""]
    md += ["## Method notes", "",
           ("- Bootstrap intervals resample seeds only (the trials log aggregate metrics, not per-example "
           "outcomes), so they reflect seed-to-seed variation (initialisation, batch order, attack starts), not the "
           "sampling of test points; with 3 seeds a bootstrap has only 10 distinct resamples: a coarse interval."),
           ("- Hypervolume: the area dominated by the mean-over-seeds points of one trainer (all λ), bounded by the "
            "reference point; larger is a better trade-off. Claim 4 bounds it at the natural risk both trainers "
            "reach; an earlier version of this rule used the whole square [0, 1]², and was tightened after a run "
            "showed that the whole-square difference came from THRM reaching natural risks TRADES never reaches."),
           ("- Verdicts are computed by `hyporay/paper/reproduction.py` (`claim1` ... `claim5`) from the MLflow child "
           "runs of this sweep; nothing in this report is written by hand."), ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "claims.json").write_text(json.dumps({str(k): v for k, v in claims.items()}, indent=1, default=float))
    paths = [out / "report.md", out / "claims.json"] + paths
    return text, claims, paths


def report(ctx: dict) -> list[Path]:
    """The sweep's ``after`` hook: rows from the finished child runs, report under --out, verdict lines."""
    args = ctx.get("args")
    out = Path(getattr(args, "out", None) or f"docs/results/{ctx['profile']}")
    from hyporay.engine.trainable import trial_key

    by_key = {trial_key(t): t for t in ctx["trials"]}
    model3 = _model3(ctx["trials"])
    rows, left_out = R.final_rows(ctx["runs"])
    R._say_skipped(left_out)
    keyed = {r.info.run_id: r.data.tags.get(tracking.TRIAL_KEY_TAG) for r in ctx["runs"]}
    for r in rows:
        t = by_key.get(keyed.get(r[R.RUN_ID]))
        r["_parts"] = parts_of(t, model3) if t else set()
    left = R.describe_left_out(left_out)
    counts = f"{len(rows)} finished, of {len(ctx['trials'])}" + (f"; left out: {left}" if left else "")
    command = ctx.get("command") or "python sweeps/reproduce.py " + shlex.join(sys.argv[1:])
    _text, claims, paths = build_report(rows, ctx["trials"], ctx["profile"], out, command=command,
                                       commit=_git_commit(Path(__file__).resolve().parent), hardware=_hardware(),
                                       counts=counts, n_boot=getattr(args, "bootstrap", N_BOOT) or N_BOOT)
    print(f"\nreport: {out / 'report.md'}", flush=True)
    for k, c in claims.items():
        print(f"claim {k}: {c['verdict']} — {c['statistic']}", flush=True)
    return paths


def rebuild(name: str, storage: str = "hyporay_runs", out: str | None = None, command: str | None = None,
            n_boot: int = N_BOOT) -> list[Path]:
    """Rewrite the report of a finished reproduce sweep from its MLflow runs (after a change of the report code);
    the artefacts are logged to its parent run again. ``command``: the command the sweep ran (the report shows it
    and how it was rebuilt)."""
    import argparse

    state = json.loads((Path(storage) / name / "hyporay_sweep.json").read_text())
    c = tracking.client(state["tracking_uri"])
    runs = tracking.child_runs(c, state["experiment_id"], state["parent_run_id"])
    how = f"python -m hyporay.paper.reproduction --rebuild {name}"
    ctx = {"runs": runs, "trials": state["trials"], "profile": state["profile"],
           "args": argparse.Namespace(out=out, bootstrap=n_boot),
           "command": f"{command} (report rebuilt from its runs by {how})" if command else how}
    paths = report(ctx)
    for a in paths:
        tracking.retry(c.log_artifact, state["parent_run_id"], str(a))
    return paths


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="rebuild the report of a finished sweeps/reproduce.py run")
    ap.add_argument("--rebuild", required=True, metavar="NAME", help="the sweep's run name (under --storage)")
    ap.add_argument("--storage", default="hyporay_runs")
    ap.add_argument("--out")
    ap.add_argument("--command", help="the command the sweep was run with")
    ap.add_argument("--bootstrap", type=int, default=N_BOOT)
    a = ap.parse_args()
    rebuild(a.rebuild, a.storage, a.out, a.command, a.bootstrap)
