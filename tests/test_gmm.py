"""001's Gaussian-mixture model (§3.2): the closed form against the issue's reference table, Monte Carlo and a
numerical optimum; Theorems 2 and 3 on a grid of (η, d)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import load_script
from hyporay.theory import gmm

# issue 25's reference values at σ = 1, η = 0.01 (derived from the closed form by hand)
REFERENCE = {1_000: (0.853, 0.805, 0.827), 10_000: (0.921, 0.500, 0.897), 50_000: (0.993, 0.051, 0.991)}


@pytest.mark.parametrize("d", sorted(REFERENCE))
def test_reference_table(d):
    acc = gmm.model_accuracies(d, eta=0.01, sigma=1.0)
    assert [round(acc[k], 3) for k in ("f_D", "f_D1", "f_D2")] == list(REFERENCE[d])
    assert round(acc["f_D1_rob"], 3) == 0.841  # Φ(1) for every d: the robust feature alone


def test_hand_computed_d1000():
    """f_D̂₂ at d = 1000, η = 0.01: wᵀμ = 1 + 3dη² = 1.3, ‖w‖ = √(1 + 9dη²) = √1.9."""
    w = gmm.bayes_weights("D2", 1000, 0.01)
    assert gmm.margin(w, 1000, 0.01) == pytest.approx(1.3 / math.sqrt(1.9), rel=1e-12)
    assert gmm.normal_cdf(1.0) == pytest.approx(0.8413447460685429, rel=1e-12)


def test_robust_weights_are_soft_thresholded_means():
    eta = 0.05
    np.testing.assert_allclose(gmm.robust_weights("D1", 4, eta), [1 - 2 * eta, 0, 0, 0, 0])
    np.testing.assert_allclose(gmm.robust_weights("D2", 4, eta), [1 - 2 * eta, eta, eta, eta, eta])
    for d in (1, 100, 10_000, 10 ** 6):
        assert gmm.model_accuracies(d)["f_D1_rob"] == pytest.approx(gmm.normal_cdf(1.0), abs=1e-15)


@pytest.mark.parametrize("dist", ["D1", "D2"])
def test_robust_weights_maximise_the_robust_margin(dist):
    """No other w (random directions and small moves around the optimum) has a higher robust accuracy."""
    d, eta = 6, 0.08
    w_star = gmm.robust_weights(dist, d, eta)
    best = gmm.robust_accuracy(w_star, d, eta, dist=dist)
    rng = np.random.default_rng(0)
    others = [rng.standard_normal(d + 1) for _ in range(2000)]
    others += [w_star + 0.05 * rng.standard_normal(d + 1) for _ in range(2000)]
    others += [gmm.bayes_weights(dist, d, eta)]
    assert max(gmm.robust_accuracy(w, d, eta, dist=dist) for w in others) <= best + 1e-12


def test_closed_form_matches_monte_carlo():
    d, eta, n = 400, 0.05, 200_000
    x, y = gmm.sample("D", n, d, eta, rng=np.random.default_rng(1))
    for key in ("f_D", "f_D1", "f_D2", "f_D2_rob"):
        w = gmm.model_weights(key, d, eta)
        empirical = float(np.mean(np.sign(x @ w) == y))
        closed = gmm.accuracy(w, d, eta)
        assert abs(empirical - closed) < 4 * math.sqrt(closed * (1 - closed) / n), key


ETAS = [0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.33]
DS = [1, 2, 10, 100, 1_000, 10_000, 100_000, 10 ** 6]


@pytest.mark.parametrize("eta", ETAS)
def test_theorem_2_ordering(eta):
    """R_nat(f_D) < R_nat(f_D̂₂) < R_nat(f_D̂₁) for every d (compared on margins: Φ saturates in floats)."""
    for d in DS:
        z = gmm.model_margins(d, eta)
        assert z["f_D"] > z["f_D2"] > z["f_D1"], (eta, d, z)


@pytest.mark.parametrize("eta", ETAS)
def test_theorem_3_robust_beats_standard(eta):
    for d in DS:
        z = gmm.model_margins(d, eta)
        assert z["f_D1_rob"] > z["f_D1"] and z["f_D2_rob"] > z["f_D2"], (eta, d, z)


def test_figure2_shapes():
    """The curves as 001 describes them: f_D̂₁ keeps falling, f_D̂₂ first falls then rises, f_D̂₁,rob flat."""
    ds = [10, 100, 1_000, 3_000, 10_000, 30_000, 100_000]
    c = gmm.figure2_curves(ds)
    assert all(a > b for a, b in zip(c["f_D1"], c["f_D1"][1:]))
    low = int(np.argmin(c["f_D2"]))
    assert 0 < low < len(ds) - 1 and c["f_D2"][-1] > c["f_D2"][0]
    assert max(c["f_D1_rob"]) - min(c["f_D1_rob"]) < 1e-12


@pytest.mark.parametrize("kwargs, field", [({"d": 0}, "d:"), ({"d": 2.5}, "d:"), ({"eta": 0.0}, "eta:"),
                                           ({"sigma": -1.0}, "sigma:"), ({"eta": float("nan")}, "eta:")])
def test_bad_parameters_fail_with_one_line(kwargs, field):
    args = {"d": 10, "eta": 0.01, "sigma": 1.0, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}"):
        gmm.model_accuracies(**args)


def test_figure2_script_prints_the_table_and_draws(tmp_path, capsys):
    mod = load_script("tools/gmm_figure2.py")
    out = tmp_path / "fig2.png"
    assert mod.main(["--out", str(out), "--d-max", "1000"]) == 0
    assert out.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "  10,000     0.921     0.500     0.897     0.841     0.921" in text
    with pytest.raises(SystemExit):
        mod.main(["--eta", "-1"])
    assert "--eta: must be a number > 0" in capsys.readouterr().err
