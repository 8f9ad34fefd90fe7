"""Statistics for the reproduction report (pure numpy): frontier hypervolume, bootstrap intervals, rank
correlation and paired comparisons.

Conventions: both frontier coordinates (natural risk, R_hyp(D-)) are *minimised*; a hypervolume is the area
dominated by a front and bounded by a reference point (larger = better front). Bootstrap intervals are
percentile intervals over resampled units (seeds here: the trials log aggregate metrics, not per-example
outcomes, so test points are not resampled).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# --- frontiers ------------------------------------------------------------------------------------------

def nondominated(points) -> np.ndarray:
    """The points of ``points`` (n x 2) that no other point weakly dominates (both minimised), sorted by x.
    Duplicates are kept once."""
    p = np.unique(np.asarray(points, dtype=float).reshape(-1, 2), axis=0)  # sorted by x, then y
    p = p[~np.isnan(p).any(axis=1)]
    keep, best_y = [], math.inf
    for x, y in p:
        if y < best_y:
            keep.append((x, y))
            best_y = y
    return np.asarray(keep, dtype=float).reshape(-1, 2)


def hypervolume_2d(points, ref: Sequence[float] = (1.0, 1.0)) -> float:
    """Area dominated by ``points`` (both coordinates minimised) inside the box bounded by ``ref``.

    Points that do not strictly dominate ``ref`` in both coordinates add nothing. An empty front has
    hypervolume 0. E.g. one point (0.2, 0.4) with ref (1, 1): 0.8 * 0.6 = 0.48.
    """
    rx, ry = float(ref[0]), float(ref[1])
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    p = p[(p[:, 0] < rx) & (p[:, 1] < ry)]
    front = nondominated(p)
    if not len(front):
        return 0.0
    xs = np.append(front[:, 0], rx)
    return float(np.sum((xs[1:] - xs[:-1]) * (ry - front[:, 1])))


# --- bootstrap ------------------------------------------------------------------------------------------

def bootstrap_ci(stat: Callable[[np.ndarray], float], n_units: int, *, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): ``stat(indices)`` on all units and the ``1 - alpha`` percentile interval over
    ``n_boot`` resamples of the units with replacement. ``stat`` receives an index array into the units (so it
    can resample several paired arrays at once). With one unit the interval is the estimate itself."""
    if n_units < 1:
        raise ValueError("n_units: need at least one unit")
    est = float(stat(np.arange(n_units)))
    if n_units == 1:
        return est, est, est
    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.integers(0, n_units, n_units)) for _ in range(n_boot)], dtype=float)
    boots = boots[~np.isnan(boots)]
    if not len(boots):
        return est, math.nan, math.nan
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return est, float(lo), float(hi)


def bootstrap_mean_ci(values, **kw) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap interval (see ``bootstrap_ci``)."""
    v = np.asarray(values, dtype=float)
    return bootstrap_ci(lambda idx: float(np.mean(v[idx])), len(v), **kw)


def common_x_reference(front_a, front_b, ry: float = 1.0) -> tuple[float, float]:
    """A reference point that restricts both fronts to the x range both reach: (the smaller of the two fronts'
    largest x, ``ry``). A hypervolume w.r.t. (1, 1) also rewards a front for merely extending to larger x (at
    higher natural risk); this one compares the fronts "at equal x"."""
    fa = np.asarray(front_a, dtype=float).reshape(-1, 2)
    fb = np.asarray(front_b, dtype=float).reshape(-1, 2)
    return float(min(np.nanmax(fa[:, 0]), np.nanmax(fb[:, 0]))), float(ry)


def hypervolume_difference(a_by_seed: np.ndarray, b_by_seed: np.ndarray, ref: Sequence[float] | None = (1.0, 1.0),
                           **kw) -> tuple[float, float, float]:
    """HV(mean front of A) - HV(mean front of B) with a bootstrap interval over seeds.

    ``a_by_seed``, ``b_by_seed``: arrays seeds x grid points x 2 (the (x, y) of each grid value, e.g. each λ,
    per seed; NaN allowed). Seeds are resampled jointly (paired: seed s of A with seed s of B); the front of a
    resample is the per-grid-point mean over its seeds. Positive = A's front dominates more area. ``ref=None``:
    each resample's reference point is ``common_x_reference`` of its two mean fronts (the shared x range).
    """
    a, b = np.asarray(a_by_seed, dtype=float), np.asarray(b_by_seed, dtype=float)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"seeds: A has {a.shape[0]}, B has {b.shape[0]}; need the same (paired) seeds")

    def stat(idx):
        with np.errstate(all="ignore"):
            fa, fb = np.nanmean(a[idx], axis=0), np.nanmean(b[idx], axis=0)
        r = common_x_reference(fa, fb) if ref is None else ref
        return hypervolume_2d(fa, r) - hypervolume_2d(fb, r)

    return bootstrap_ci(stat, a.shape[0], **kw)


# --- rank correlation ------------------------------------------------------------------------------------

def rankdata(values) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata(method="average"))."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=float)
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks (ties handled); NaN pairs dropped; NaN when
    fewer than 2 pairs remain or either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(np.sum(rx * rx)) * float(np.sum(ry * ry)))
    return float(np.sum(rx * ry) / den) if den > 0 else math.nan


def spearman_permutation_p(x, y, *, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's ρ (share of permutations of y with |ρ| >= the observed,
    counting the observed one)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rho = spearman(x, y)
    if math.isnan(rho):
        return math.nan
    rng = np.random.default_rng(seed)
    hits = sum(abs(spearman(x, rng.permutation(y))) >= abs(rho) - 1e-12 for _ in range(n_perm))
    return (hits + 1) / (n_perm + 1)


# --- paired comparisons ----------------------------------------------------------------------------------

def sign_test_p(diffs) -> float:
    """Exact two-sided sign test of median difference 0 (zeros dropped); 1.0 when nothing is left."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d) & (d != 0)]
    n = len(d)
    if n == 0:
        return 1.0
    k = int(min(np.sum(d > 0), np.sum(d < 0)))
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_comparison(a, b, **kw) -> dict:
    """Paired A - B over units (seeds): mean difference with its bootstrap interval, the number of units
    where A < B and A > B, and the sign-test p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired: shapes differ {a.shape} vs {b.shape}")
    d = a - b
    d = d[~np.isnan(d)]
    if not len(d):
        return {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan, "n_less": 0, "n_greater": 0,
                "sign_p": 1.0}
    mean, lo, hi = bootstrap_mean_ci(d, **kw)
    return {"n": len(d), "mean": mean, "low": lo, "high": hi, "n_less": int(np.sum(d < 0)),
            "n_greater": int(np.sum(d > 0)), "sign_p": sign_test_p(d)}
