"""Statistics of the reproduction report, on ``scipy.stats``: rank correlation with a permutation p-value, the
sign test, percentile bootstrap intervals over seeds, and the one 2-D Pareto routine with its hypervolume.

Conventions: both frontier coordinates (natural risk, R_hyp(D-)) are *minimised*; a hypervolume is the area
dominated by a front and bounded by a reference point (larger = better front). Bootstrap intervals resample seeds
(the trials log aggregate metrics, not per-example outcomes, so test points are not resampled).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as st

# --- the one Pareto routine --------------------------------------------------------------------------------

def pareto_mask(points) -> np.ndarray:
    """True where no other point is <= in both coordinates and < in one (both minimised); NaN points are never
    Pareto-optimal, equal points do not dominate each other."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    ok = ~np.isnan(p).any(axis=1)
    le = (p[None, :, :] <= p[:, None, :]).all(axis=2)      # [i, j]: j is <= i in both
    lt = (p[None, :, :] < p[:, None, :]).any(axis=2)       # [i, j]: j is < i in one
    dominated = (le & lt & ok[None, :]).any(axis=1)
    return ok & ~dominated


def nondominated(points) -> np.ndarray:
    """The Pareto-optimal points of ``points`` (n x 2), duplicates once, sorted by x."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    front = np.unique(p[pareto_mask(p)], axis=0)
    return front[np.argsort(front[:, 0], kind="stable")].reshape(-1, 2)


def hypervolume_2d(points, ref: Sequence[float] = (1.0, 1.0)) -> float:
    """Area dominated by ``points`` (both minimised) inside the box bounded by ``ref``; points that do not
    strictly dominate ``ref`` add nothing; an empty front has 0. One point (0.2, 0.4), ref (1, 1): 0.48."""
    rx, ry = float(ref[0]), float(ref[1])
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    front = nondominated(p[(p[:, 0] < rx) & (p[:, 1] < ry)])
    if not len(front):
        return 0.0
    xs = np.append(front[:, 0], rx)
    return float(np.sum((xs[1:] - xs[:-1]) * (ry - front[:, 1])))


def common_x_reference(front_a, front_b, ry: float = 1.0) -> tuple[float, float]:
    """(the smaller of the two fronts' largest x, ``ry``): compares two fronts on the x range both reach."""
    fa = np.asarray(front_a, dtype=float).reshape(-1, 2)
    fb = np.asarray(front_b, dtype=float).reshape(-1, 2)
    return float(min(np.nanmax(fa[:, 0]), np.nanmax(fb[:, 0]))), float(ry)


# --- bootstrap over seeds ----------------------------------------------------------------------------------

def bootstrap_ci(stat: Callable[[np.ndarray], float], n_units: int, *, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): ``stat(indices)`` on all units, and ``scipy.stats.bootstrap``'s percentile interval
    of it over resamples of the units (``stat`` gets an index array, so paired arrays resample together).
    With one unit the interval is the estimate itself; NaN bounds when every resample is NaN."""
    if n_units < 1:
        raise ValueError("n_units: need at least one unit")
    est = float(stat(np.arange(n_units)))
    if n_units == 1:
        return est, est, est

    def vec(idx, axis=-1):
        idx = np.atleast_2d(idx).astype(int)
        return np.array([stat(row) for row in idx])

    res = st.bootstrap((np.arange(n_units),), vec, vectorized=True, n_resamples=n_boot, confidence_level=1 - alpha,
                       method="percentile", random_state=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return est, lo, hi


def bootstrap_mean_ci(values, **kw) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float)
    return bootstrap_ci(lambda idx: float(np.mean(v[idx])), len(v), **kw)


def hypervolume_difference(a_by_seed, b_by_seed, ref: Sequence[float] | None = (1.0, 1.0),
                           **kw) -> tuple[float, float, float]:
    """HV(mean front of A) - HV(mean front of B) with a bootstrap interval over seeds (paired).

    ``a_by_seed``, ``b_by_seed``: seeds x grid points x 2 (NaN allowed). A resample's front is the per-grid-point
    mean over its seeds. ``ref=None``: each resample is bounded by ``common_x_reference`` of its two fronts.
    """
    a, b = np.asarray(a_by_seed, dtype=float), np.asarray(b_by_seed, dtype=float)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"seeds: A has {a.shape[0]}, B has {b.shape[0]}; need the same (paired) seeds")

    def stat(idx):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN column: NaN, as intended
            fa, fb = np.nanmean(a[idx], axis=0), np.nanmean(b[idx], axis=0)
        r = common_x_reference(fa, fb) if ref is None else ref
        return hypervolume_2d(fa, r) - hypervolume_2d(fb, r)

    return bootstrap_ci(stat, a.shape[0], **kw)


# --- rank correlation and paired comparisons ---------------------------------------------------------------

def _pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    return x[ok], y[ok]


def spearman(x, y) -> float:
    """Spearman's ρ (average ranks for ties); NaN pairs dropped; NaN with < 2 pairs or a constant side."""
    x, y = _pairs(x, y)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(st.spearmanr(x, y).statistic)


def spearman_permutation_p(x, y, *, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's ρ (``scipy.stats.permutation_test``, pairings permuted)."""
    x, y = _pairs(x, y)
    if math.isnan(spearman(x, y)):
        return math.nan
    res = st.permutation_test((x, y), lambda a, b: st.spearmanr(a, b).statistic, permutation_type="pairings",
                              n_resamples=n_perm, alternative="two-sided", random_state=np.random.default_rng(seed))
    return float(res.pvalue)


def sign_test_p(diffs) -> float:
    """Exact two-sided sign test of median difference 0 (``scipy.stats.binomtest``; zeros dropped; 1.0 if none)."""
    d = np.asarray(diffs, dtype=float)
    d = d[~np.isnan(d) & (d != 0)]
    if not len(d):
        return 1.0
    return float(st.binomtest(int(np.sum(d > 0)), len(d), 0.5).pvalue)


def paired_comparison(a, b, **kw) -> dict:
    """Paired A - B over units (seeds): mean difference and its bootstrap interval, units with A < B and A > B,
    and the sign-test p-value."""
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
