"""hyporay.analysis.stats on hand-made inputs with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hyporay.analysis import stats as S


def test_hypervolume_single_point():
    assert S.hypervolume_2d([(0.2, 0.4)], (1, 1)) == pytest.approx(0.8 * 0.6)


def test_hypervolume_staircase_by_hand():
    # front (0.1, 0.8), (0.3, 0.5), (0.6, 0.2), ref (1, 1): 0.2*0.2 + 0.3*0.5 + 0.4*0.8 = 0.51
    pts = [(0.6, 0.2), (0.1, 0.8), (0.3, 0.5)]
    assert S.hypervolume_2d(pts, (1, 1)) == pytest.approx(0.04 + 0.15 + 0.32)


def test_hypervolume_ignores_dominated_duplicate_and_outside_points():
    pts = [(0.1, 0.8), (0.3, 0.5), (0.6, 0.2), (0.4, 0.6), (0.3, 0.5), (1.2, 0.0), (0.0, 1.0), (float("nan"), 0.1)]
    assert S.hypervolume_2d(pts, (1, 1)) == pytest.approx(0.51)
    assert S.hypervolume_2d([], (1, 1)) == 0.0
    assert S.hypervolume_2d([(2, 2)], (1, 1)) == 0.0


def test_hypervolume_other_reference_and_full_box():
    assert S.hypervolume_2d([(0, 0)], (2, 3)) == pytest.approx(6.0)
    assert S.hypervolume_2d([(0.5, 0.5)], (0.5, 1)) == 0.0  # on the reference's edge: nothing


def test_nondominated_sorted_by_x():
    f = S.nondominated([(0.6, 0.2), (0.1, 0.8), (0.4, 0.6), (0.3, 0.5), (0.1, 0.9)])
    assert f.tolist() == [[0.1, 0.8], [0.3, 0.5], [0.6, 0.2]]


def test_pareto_mask_known_answers():
    pts = [(0.1, 0.9), (0.2, 0.5), (0.3, 0.6), (0.5, 0.1), (0.2, 0.5), (0.5, 0.2), (float("nan"), 0.0)]
    # (0.3, 0.6) is dominated by (0.2, 0.5); (0.5, 0.2) by (0.5, 0.1) (equal x, lower y); equal points do not
    # dominate each other; a NaN point is never optimal and dominates nothing
    assert S.pareto_mask(pts).tolist() == [True, True, False, True, True, False, False]
    assert S.pareto_mask([]).tolist() == []


def test_spearman_known_values():
    assert S.spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 100]) == pytest.approx(1.0)
    assert S.spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # no ties: 1 - 6 Σd² / (n(n²-1)); ranks y = 2,1,4,3,5 -> Σd² = 4 -> 1 - 24/120 = 0.8
    assert S.spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    assert math.isnan(S.spearman([1, 2, 3], [7, 7, 7]))
    assert math.isnan(S.spearman([1], [2]))


def test_spearman_with_ties_matches_pearson_of_average_ranks():
    # x ranks 1, 2.5, 2.5, 4; y ranks 1, 2, 3, 4 -> centred (-1.5,0,0,1.5).(-1.5,-.5,.5,1.5) = 4.5, norms² 4.5 and 5
    assert S.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, 30), rng.integers(0, 5, 30)
    assert S.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)


def test_spearman_drops_nan_pairs():
    assert S.spearman([1, 2, float("nan"), 3], [1, 2, 0, 3]) == pytest.approx(1.0)


def test_permutation_p_small_for_perfect_and_one_for_constant_order():
    assert S.spearman_permutation_p(range(8), range(8), n_perm=500) < 0.01
    assert math.isnan(S.spearman_permutation_p([1, 1, 1], [1, 2, 3]))


def test_bootstrap_ci_constant_and_single_unit():
    est, lo, hi = S.bootstrap_mean_ci([0.3, 0.3, 0.3])
    assert (est, lo, hi) == pytest.approx((0.3, 0.3, 0.3))
    assert S.bootstrap_mean_ci([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError):
        S.bootstrap_ci(lambda i: 0.0, 0)


def test_bootstrap_ci_two_values_spans_their_range():
    # resamples of {0, 1} have means 0, 0.5 or 1 (prob. 1/4, 1/2, 1/4): the 95% interval is [0, 1]
    est, lo, hi = S.bootstrap_mean_ci([0.0, 1.0], n_boot=4000, seed=3)
    assert est == 0.5 and lo == 0.0 and hi == 1.0


def test_bootstrap_ci_is_deterministic_and_covers_mean():
    v = np.arange(10.0)
    a, b = S.bootstrap_mean_ci(v, seed=5), S.bootstrap_mean_ci(v, seed=5)
    assert a == b and a[1] < 4.5 < a[2] and a[0] == 4.5


def test_hypervolume_difference_known_fronts():
    # A (both seeds) one point (0.2, 0.2): HV 0.64; B (0.5, 0.5): HV 0.25 -> difference 0.39, no spread
    a = np.array([[[0.2, 0.2]], [[0.2, 0.2]]])
    b = np.array([[[0.5, 0.5]], [[0.5, 0.5]]])
    est, lo, hi = S.hypervolume_difference(a, b)
    assert (est, lo, hi) == pytest.approx((0.39, 0.39, 0.39))


def test_hypervolume_difference_uses_mean_front_and_paired_seeds():
    # A seeds: (0.2,0.2) and (0.4,0.4) -> mean (0.3,0.3): HV 0.49; B always (0.3,0.3) -> 0 difference at the
    # estimate, interval from resamples {both 0.2: +0.15, both 0.4: -0.13}
    a = np.array([[[0.2, 0.2]], [[0.4, 0.4]]])
    b = np.array([[[0.3, 0.3]], [[0.3, 0.3]]])
    est, lo, hi = S.hypervolume_difference(a, b, n_boot=4000, seed=0)
    assert est == pytest.approx(0.0)
    assert lo == pytest.approx(0.36 - 0.49) and hi == pytest.approx(0.64 - 0.49)
    with pytest.raises(ValueError):
        S.hypervolume_difference(a, b[:1])


def test_sign_test_known_p():
    assert S.sign_test_p([-1, -1, -1, -1, -1]) == pytest.approx(2 / 32)
    assert S.sign_test_p([1, -1]) == 1.0
    assert S.sign_test_p([0, 0]) == 1.0
    assert S.sign_test_p([-1, -2, -3, 4]) == pytest.approx(2 * 5 / 16)


def test_paired_comparison():
    r = S.paired_comparison([0.1, 0.2, 0.3], [0.3, 0.4, 0.5])
    assert r["n"] == 3 and r["mean"] == pytest.approx(-0.2)
    assert r["low"] == pytest.approx(-0.2) and r["high"] == pytest.approx(-0.2)
    assert r["n_less"] == 3 and r["n_greater"] == 0 and r["sign_p"] == pytest.approx(0.25)
    assert S.paired_comparison([float("nan")], [1.0])["n"] == 0


def test_common_range_hypervolume_difference():
    # A reaches x 0.8 with y 0.1, but on B's range [0, 0.4] A (0.2, 0.6) is worse than B (0.2, 0.4)
    a = np.array([[[0.2, 0.6], [0.8, 0.1]]] * 2)
    b = np.array([[[0.2, 0.4], [0.4, 0.3]]] * 2)
    assert S.common_x_reference(a[0], b[0]) == (0.4, 1.0)
    full = S.hypervolume_difference(a, b)[0]
    assert full == pytest.approx((0.6 * 0.4 + 0.2 * 0.9) - (0.2 * 0.6 + 0.6 * 0.7))  # 0.42 - 0.54
    common = S.hypervolume_difference(a, b, None)
    assert common == pytest.approx((0.2 * 0.4 - 0.2 * 0.6,) * 3)  # ref (0.4, 1): 0.08 - 0.12
