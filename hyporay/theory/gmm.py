"""001's Gaussian-mixture model of delusive attacks (Tao et al., §3.2, Eqs. 5-7, Theorems 2-3, Figure 2).

Data (Eq. 5): y uniform in {-1, +1}, x ~ N(y·μ, σ²I) in R^(d+1) with μ = (1, η, ..., η): one robust feature
(centre 1) and d non-robust features (centre η). The delusive adversary (l_inf budget ε = 2η) shifts every
non-robust centre to -η (D̂₁, Eq. 6: μ̂₁ = (1, -η, ..., -η)) or to 3η (D̂₂, Eq. 7: μ̂₂ = (1, 3η, ..., 3η)).

A linear classifier f(x) = sign(wᵀx) has natural accuracy on D (the closed form used throughout)

    acc(w) = Φ(wᵀμ / (σ‖w‖₂)),

since y·wᵀx ~ N(wᵀμ, σ²‖w‖²). The Bayes optimal classifier of N(±m, σ²I) is w = m (Theorem 2's f_D, f_D̂₁,
f_D̂₂). The optimal linear l_inf-robust classifier of N(±m, σ²I) at budget ε maximises the robust margin
(wᵀm - ε‖w‖₁) / ‖w‖₂ (its adversarial accuracy is Φ of that over σ); the maximiser is the soft-thresholded
mean w_i = sign(m_i)·max(|m_i| - ε, 0) (Tsipras et al. 2019; 001 Appendix C.3). At ε = 2η this gives
w = (1 - 2η, 0, ..., 0) for D̂₁ (the robust feature alone: accuracy Φ(1/σ) for every d) and
w = (1 - 2η, η, ..., η) for D̂₂.

Pure Python + numpy (no torch needed): ``accuracy``, ``margin``, ``bayes_weights``, ``robust_weights``,
``model_accuracies``, ``figure2_curves``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: the five models of 001's Figure 2: (key, label, training distribution, robust?)
MODELS = (("f_D", "standard on D", "D", False),
          ("f_D1", "standard on D̂₁", "D1", False),
          ("f_D2", "standard on D̂₂", "D2", False),
          ("f_D1_rob", "adversarial on D̂₁", "D1", True),
          ("f_D2_rob", "adversarial on D̂₂", "D2", True))
DISTRIBUTIONS = ("D", "D1", "D2")


def _check(d: int, eta: float, sigma: float) -> None:
    if isinstance(d, bool) or int(d) != d or d < 1:
        raise ValueError(f"d: the number of non-robust features must be an integer >= 1, got {d!r}")
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta: must be a finite number > 0, got {eta!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: must be a finite number > 0, got {sigma!r}")


def normal_cdf(z: float) -> float:
    """Φ(z), the standard normal CDF (erfc form: accurate in the lower tail)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def mean_vector(dist: str, d: int, eta: float) -> np.ndarray:
    """μ (``"D"``, Eq. 5), μ̂₁ (``"D1"``, Eq. 6) or μ̂₂ (``"D2"``, Eq. 7), a vector of length d + 1."""
    shift = {"D": eta, "D1": -eta, "D2": 3 * eta}
    if dist not in shift:
        raise ValueError(f"dist: unknown {dist!r}; known: {', '.join(DISTRIBUTIONS)}")
    m = np.full(int(d) + 1, shift[dist], dtype=np.float64)
    m[0] = 1.0
    return m


def bayes_weights(dist: str, d: int, eta: float) -> np.ndarray:
    """Weights of the Bayes optimal classifier sign(wᵀx) of ``dist``: its mean vector (equal class priors,
    isotropic covariance)."""
    return mean_vector(dist, d, eta)


def robust_weights(dist: str, d: int, eta: float, eps: float | None = None) -> np.ndarray:
    """Weights of the optimal linear l_inf-robust classifier of ``dist`` at budget ``eps`` (default 2η, the
    attacker's): the soft-thresholded mean sign(m)·max(|m| - ε, 0), the maximiser of (wᵀm - ε‖w‖₁)/‖w‖₂."""
    eps = 2 * eta if eps is None else float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: must be a finite number >= 0, got {eps!r}")
    m = mean_vector(dist, d, eta)
    w = np.sign(m) * np.maximum(np.abs(m) - eps, 0.0)
    if not np.any(w):
        raise ValueError(f"eps: {eps} >= every |mean| of {dist}: the robust classifier is w = 0 (no decision)")
    return w


def margin(w: np.ndarray, d: int, eta: float, sigma: float = 1.0, dist: str = "D") -> float:
    """wᵀμ / (σ‖w‖₂): the accuracy's argument. Orders classifiers where Φ of it rounds to 0 or 1 in floats
    (large d), so the theorems are checked on it."""
    _check(d, eta, sigma)
    w = np.asarray(w, dtype=np.float64)
    norm = float(np.linalg.norm(w))
    if norm == 0 or not math.isfinite(norm):
        raise ValueError("w: must be a finite non-zero weight vector")
    return float(w @ mean_vector(dist, d, eta)) / (sigma * norm)


def accuracy(w: np.ndarray, d: int, eta: float, sigma: float = 1.0, dist: str = "D") -> float:
    """Natural accuracy Φ(wᵀμ / (σ‖w‖₂)) of sign(wᵀx) on ``dist`` (default the clean D)."""
    return normal_cdf(margin(w, d, eta, sigma, dist))


def robust_accuracy(w: np.ndarray, d: int, eta: float, sigma: float = 1.0, dist: str = "D",
                    eps: float | None = None) -> float:
    """Adversarial accuracy Φ((wᵀm - ε‖w‖₁) / (σ‖w‖₂)) of sign(wᵀx) on ``dist`` under an l_inf attack of
    budget ``eps`` (default 2η): the worst-case shift of each x is -y·ε·sign(w)."""
    _check(d, eta, sigma)
    eps = 2 * eta if eps is None else float(eps)
    w = np.asarray(w, dtype=np.float64)
    m = mean_vector(dist, d, eta)
    return normal_cdf((float(w @ m) - eps * float(np.abs(w).sum())) / (sigma * float(np.linalg.norm(w))))


def model_weights(key: str, d: int, eta: float) -> np.ndarray:
    """The weights of Figure 2's model ``key`` (a key of :data:`MODELS`)."""
    for k, _label, dist, robust in MODELS:
        if k == key:
            return robust_weights(dist, d, eta) if robust else bayes_weights(dist, d, eta)
    raise ValueError(f"model: unknown {key!r}; known: {', '.join(m[0] for m in MODELS)}")


def model_margins(d: int, eta: float = 0.01, sigma: float = 1.0) -> dict[str, float]:
    """:func:`margin` on D of Figure 2's five models at (d, η, σ), keyed as in :data:`MODELS`."""
    return {key: margin(model_weights(key, d, eta), d, eta, sigma) for key, *_ in MODELS}


def model_accuracies(d: int, eta: float = 0.01, sigma: float = 1.0) -> dict[str, float]:
    """Natural accuracy on D of Figure 2's five models at (d, η, σ), keyed as in :data:`MODELS`."""
    return {key: normal_cdf(z) for key, z in model_margins(d, eta, sigma).items()}


def figure2_curves(ds: Sequence[int], eta: float = 0.01, sigma: float = 1.0) -> dict[str, list[float]]:
    """Figure 2: each model's natural accuracy on D against the number d of non-robust features."""
    rows = [model_accuracies(int(d), eta, sigma) for d in ds]
    return {key: [r[key] for r in rows] for key, *_ in MODELS}


def sample(dist: str, n: int, d: int, eta: float, sigma: float = 1.0,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws (x: n x (d+1), y in {-1, +1}) of ``dist`` (for Monte-Carlo checks of the closed form)."""
    _check(d, eta, sigma)
    rng = rng or np.random.default_rng(0)
    y = rng.choice(np.array([-1.0, 1.0]), size=n)
    x = y[:, None] * mean_vector(dist, d, eta)[None, :] + sigma * rng.standard_normal((n, d + 1))
    return x, y
