"""The five claims of the paper as rules with computed verdicts (pure functions of run rows: dicts of a run's
params and final metrics, as ``hyporay.analysis.runs.records`` gives them). Statistics from ``scipy.stats`` via
``hyporay.analysis.stats``; every threshold is stated in ``RULES`` and printed next to the verdict."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from hyporay import metrics as M
from hyporay.analysis import stats as S
from hyporay.analysis import tables as R
from hyporay.paper.grid import FIG4_TRAINERS, N_BOOT, SUBSTANDARD, T3_VARIANTS
from hyporay.paper.published import TRAINER_NAMES

# thresholds of the verdicts (stated in the report)
CLAIM1_GAP = 0.20       # F - D in every substandard cell
CLAIM3_P = 0.05         # permutation p-value of Spearman's ρ
CLAIM5_GAP = 0.20       # median over groups of R_hyp(D-) - max_label targeted success
CLAIM5_MIN_WRONG = 5    # groups with fewer misclassified test points (mean over seeds) are left out
REF = (1.0, 1.0)        # hypervolume reference point (natural risk, R_hyp(D-)): the worst value of both


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
    # power: the interval's width gives the standard error (normal approximation, SE = width / 3.92); a true
    # difference is found (interval above 0) with 80% power once it exceeds (1.96 + 0.84) SE
    se = (hi - lo) / (2 * 1.96) if len(seeds) >= 2 else math.nan
    mdd = (1.96 + 0.84) * se
    if len(seeds) >= 2:
        stat = (f"on the common natural-risk range [0, {ref[0]:.3f}]: HV(THRM) - HV(TRADES) = {est:+.4f}, 95% "
                f"bootstrap CI over {len(seeds)} seed(s) [{lo:+.4f}, {hi:+.4f}] (HV THRM {hv_thrm:.4f}, TRADES "
                f"{hv_trades:.4f}); power: SE {se:.4f}, smallest difference found with 80% power {mdd:.4f}; "
                f"whole square, reference point {REF}: {f_est:+.4f} [{f_lo:+.4f}, {f_hi:+.4f}]; {len(lams)} λ values")
    else:  # one seed: a bootstrap interval would be a single point and the power unknown; neither is printed
        stat = (f"on the common natural-risk range [0, {ref[0]:.3f}]: HV(THRM) - HV(TRADES) = {est:+.4f} (HV THRM "
                f"{hv_thrm:.4f}, TRADES {hv_trades:.4f}); whole square, reference point {REF}: {f_est:+.4f}; "
                f"{len(lams)} λ values; 1 seed: no interval, no power estimate")
    return {"verdict": "shown" if shown else "not shown", "statistic": stat, "difference": est, "low": lo,
            "high": hi, "se": se, "detectable_80": mdd, "hv_thrm": hv_thrm, "hv_trades": hv_trades, "reference": ref,
            "difference_full": f_est,
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


