"""The reproduction's claim verdicts (hyporay/paper/claims.py ``claim1`` ... ``claim5``) on hand-made rows.

Each rule is driven to every verdict it has (shown / partly shown / not shown / inconclusive), and across its
threshold by a change of one number, so a verdict that is hard-coded, a rule with a flipped comparison or a
claim computed from the wrong metric fails here. Rows look like ``reports.final_rows``: dotted trial fields
plus final metrics.
"""
from __future__ import annotations

from hyporay import metrics as M
from hyporay.paper import claims as R
from hyporay.paper.grid import T3_VARIANTS

NB = 300  # bootstrap / permutation resamples: plenty for the clear-cut cases below


# --- claim 1: F - D in every substandard cell ------------------------------------------------------------------

def _t12(cells: dict[tuple[str, str], list[tuple[float, float]]]) -> list[dict]:
    """(variant, model) -> [(D, F) per seed]."""
    return [{"variant.name": v, "model.name": m, "seed": s, M.ACC_CLEAN: d, M.ACC_HYP: f}
            for (v, m), seeds in cells.items() for s, (d, f) in enumerate(seeds)]


def test_claim1_verdicts():
    """Shown when F - D >= 0.20 in every substandard cell (mean over seeds), partly shown in at least half,
    not shown otherwise, inconclusive without substandard cells; Quality cells do not count."""
    good = {("naive", "mlp"): [(0.10, 0.90)], ("noise", "mlp"): [(0.10, 0.50)],
            ("mislabeling", "mlp"): [(0.10, 0.95)], ("poisoning", "mlp"): [(0.12, 0.32)],  # gap exactly 0.20
            ("quality", "mlp"): [(0.95, 0.99)]}                                            # not substandard
    assert R.claim1(_t12(good))["verdict"] == "shown"
    half = {**good, ("noise", "mlp"): [(0.10, 0.25)], ("poisoning", "mlp"): [(0.12, 0.31)]}
    c = R.claim1(_t12(half))
    assert c["verdict"] == "partly shown" and "2/4" in c["statistic"]
    assert R.claim1(_t12({**half, ("naive", "mlp"): [(0.10, 0.20)]}))["verdict"] == "not shown"
    # the mean over seeds decides: 0.05 and 0.45 average to a gap of 0.25
    seeds = {**good, ("noise", "mlp"): [(0.10, 0.15), (0.10, 0.55)]}
    assert R.claim1(_t12(seeds))["verdict"] == "shown"
    assert R.claim1(_t12({("quality", "mlp"): [(0.95, 0.99)]}))["verdict"] == "inconclusive"


# --- claim 2: adversarial training lowers R_hyp(D-), paired by seed ----------------------------------------------

def _t3(r_hyp: dict[tuple[str, str], list[float]]) -> list[dict]:
    """(variant, trainer) -> R_hyp(D-) per seed."""
    return [{"variant.name": v, "train.trainer": t, "train.lam": 6.0 if t == "trades" else 0.0, "seed": s,
             M.HYPOCRITICAL_RISK: r} for (v, t), vals in r_hyp.items() for s, r in enumerate(vals)]


def test_claim2_verdicts():
    """Shown when every (training set, trainer) difference to NT has a bootstrap interval below 0, partly when
    some do, not shown when none do; inconclusive with one seed or a missing comparison."""
    nt = [0.95, 0.97, 0.96]
    below = [0.60, 0.65, 0.62]
    rows = {(v, t): (nt if t == "natural" else below) for v in T3_VARIANTS for t in ("natural", "pgd_at", "trades")}
    c = R.claim2(_t3(rows), n_boot=NB)
    assert c["verdict"] == "shown" and len(c["comparisons"]) == 4
    assert all(x["high"] < 0 for x in c["comparisons"])
    mixed = {**rows, ("poisoning", "trades"): [0.94, 0.99, 0.97]}  # no better than NT on Poisoning
    assert R.claim2(_t3(mixed), n_boot=NB)["verdict"] == "partly shown"
    worse = {k: (nt if k[1] == "natural" else [0.99, 0.99, 0.99]) for k in rows}
    assert R.claim2(_t3(worse), n_boot=NB)["verdict"] == "not shown"
    assert R.claim2(_t3({k: v[:1] for k, v in rows.items()}), n_boot=NB)["verdict"] == "inconclusive"
    no_poisoning = {k: v for k, v in rows.items() if k[0] != "poisoning"}
    assert R.claim2(_t3(no_poisoning), n_boot=NB)["verdict"] == "inconclusive"
    assert R.claim2([], n_boot=NB)["verdict"] == "inconclusive"


# --- claim 3: as λ grows natural risk rises and R_hyp(D-) falls -------------------------------------------------

LAMS = [0.0, 1.0, 5.0, 10.0, 20.0, 40.0]


def _f4(points: dict[str, list[tuple[float, float]]], lams=LAMS, seed: int = 0) -> list[dict]:
    """trainer -> [(natural risk, R_hyp(D-)) per λ]."""
    return [{"train.trainer": t, "train.lam": lam, "seed": seed, M.NATURAL_RISK: n, M.HYPOCRITICAL_RISK: h}
            for t, pts in points.items() for lam, (n, h) in zip(lams, pts)]


RISING = [(0.02, 0.95), (0.03, 0.90), (0.05, 0.80), (0.07, 0.70), (0.10, 0.60), (0.14, 0.50)]


def test_claim3_verdicts():
    """Shown when for both trainers ρ(λ, natural risk) > 0 and ρ(λ, R_hyp(D-)) < 0 with permutation p < 0.05,
    partly shown for one trainer, not shown for none, inconclusive with fewer than 3 λ values."""
    c = R.claim3(_f4({"trades": RISING, "thrm": RISING}), n_perm=NB)
    assert c["verdict"] == "shown"
    assert all(r["rho_natural"] == 1.0 and r["rho_hyp"] == -1.0 for r in c["per_trainer"])
    # THRM's R_hyp(D-) rising with λ (the opposite of the claim)
    backwards = [(n, 1.0 - h) for n, h in RISING]
    assert R.claim3(_f4({"trades": RISING, "thrm": backwards}), n_perm=NB)["verdict"] == "partly shown"
    flat_nat = [(0.05, h) for _, h in RISING]  # natural risk does not move: ρ undefined, not shown
    assert R.claim3(_f4({"trades": flat_nat, "thrm": backwards}), n_perm=NB)["verdict"] == "not shown"
    two = _f4({"trades": RISING[:2], "thrm": RISING[:2]}, lams=LAMS[:2])
    assert R.claim3(two, n_perm=NB)["verdict"] == "inconclusive"
    # three λ values, perfectly ordered: ρ = ±1 but a permutation p of about 1/3, not significant
    three = R.claim3(_f4({"trades": RISING[:3], "thrm": RISING[:3]}, lams=LAMS[:3]), n_perm=NB)
    assert three["verdict"] == "not shown" and all(r["p_hyp"] > 0.05 for r in three["per_trainer"])


# --- claim 4: THRM's trade-off beats TRADES's (hypervolume, paired bootstrap over seeds) --------------------------

def _shifted(points, dy):
    return [(n, min(1.0, h + dy)) for n, h in points]


def test_claim4_verdicts():
    """Shown only when the bootstrap interval of HV(THRM) - HV(TRADES) on the common natural-risk range lies
    above 0 with at least 2 seeds; THRM worse, or a single seed, is not shown."""
    seeds = [(-0.02, 0.01), (0.0, 0.0), (0.01, -0.01)]  # seed-to-seed jitter of (TRADES, THRM) R_hyp(D-)
    better = [r for s, (jt, jh) in enumerate(seeds)
              for r in _f4({"trades": _shifted(RISING, jt), "thrm": _shifted(RISING, jh - 0.3)}, seed=s)]
    c = R.claim4(better, n_boot=NB)
    assert c["verdict"] == "shown" and c["seeds"] == 3 and c["low"] > 0 and c["difference"] > 0
    worse = [r for s, (jt, jh) in enumerate(seeds)
             for r in _f4({"trades": _shifted(RISING, jt - 0.3), "thrm": _shifted(RISING, jh)}, seed=s)]
    c = R.claim4(worse, n_boot=NB)
    assert c["verdict"] == "not shown" and c["difference"] < 0
    # better on average (a positive estimate) but not on every seed: the interval reaches below 0
    mixed = [r for s, dy in enumerate((-0.3, -0.3, 0.45))
             for r in _f4({"trades": RISING, "thrm": _shifted(RISING, dy)}, seed=s)]
    c = R.claim4(mixed, n_boot=NB)
    assert c["verdict"] == "not shown" and c["difference"] > 0 and c["low"] < 0
    one = [r for r in better if r["seed"] == 0]
    c = R.claim4(one, n_boot=NB)
    assert c["verdict"] == "not shown" and c["difference"] > 0 and "1 seed: no interval" in c["statistic"]
    assert "nan" not in c["statistic"] and "CI" not in c["statistic"]  # no one-point interval, no NaN power
    assert R.claim4([r for r in better if r["train.trainer"] == "thrm"], n_boot=NB)["verdict"] == "not shown"


# --- claim 5: hypocritical vs the best fixed-label targeted attack on D- ------------------------------------------

def _fig3(groups: list[tuple[str, float, float, float]]) -> list[dict]:
    """(variant, misclassified, R_hyp(D-), best label's targeted success) -> rows with 10 labels' rates."""
    rows = []
    for v, n_wrong, r_hyp, best in groups:
        row = {"variant.name": v, "model.name": "mlp", "train.trainer": "natural", "seed": 0,
               M.N_MISCLASSIFIED: n_wrong, M.HYPOCRITICAL_RISK: r_hyp}
        rates = [best] + [best / 2] * 9
        row.update({M.targeted_metric(k): r for k, r in enumerate(rates)})
        row[M.TARGETED_MEAN] = sum(rates) / len(rates)
        rows.append(row)
    return rows


def test_claim5_verdicts():
    """Shown when R_hyp(D-) beats the best label's targeted success in every group (>= 5 mistakes) with a
    median gap >= 0.20; partly shown when the median gap is > 0; not shown otherwise; inconclusive when no
    group has enough mistakes. The gap is taken against the best label, not the mean over labels."""
    groups = R.fig3_groups(_fig3([("naive", 400, 0.9, 0.4), ("noise", 300, 0.8, 0.3), ("quality", 20, 1.0, 0.5)]))
    assert [g["targeted_max"] for g in groups] == [0.4, 0.3, 0.5]
    assert R.claim5(groups)["verdict"] == "shown"
    # one group where a fixed label does as well as the true label: median still >= 0.2 but not every group
    some = R.fig3_groups(_fig3([("naive", 400, 0.9, 0.4), ("noise", 300, 0.8, 0.3), ("quality", 20, 0.5, 0.5)]))
    assert R.claim5(some)["verdict"] == "partly shown"
    small = R.fig3_groups(_fig3([("naive", 400, 0.5, 0.4), ("noise", 300, 0.45, 0.3), ("quality", 20, 0.6, 0.5)]))
    assert R.claim5(small)["verdict"] == "partly shown"  # every gap > 0 but the median 0.1 < 0.2
    # the mean over labels (0.22 here) would pass; the best label (0.4) beats R_hyp(D-) = 0.35
    beaten = R.fig3_groups(_fig3([("naive", 400, 0.35, 0.4), ("noise", 300, 0.3, 0.4)]))
    assert R.claim5(beaten)["verdict"] == "not shown"
    few = R.fig3_groups(_fig3([("quality", 4, 1.0, 0.0), ("naive", 3, 1.0, 0.0)]))
    assert R.claim5(few)["verdict"] == "inconclusive"

