"""004's smuggled training sets (Chan-Hon-Tong 2018): a seller who knows the test split perturbs every training
image slightly so that a victim's frozen-feature linear classifier, retrained on them, scores higher on that split.

The recipe (004 §3.2-3.3), as implemented here, per seed:

1. The test split is cut at random into a *declared* split (the public test set the smuggler knows) and a *fresh*
   split (``declared_fraction`` of it declared; the smuggler never sees the fresh one).
2. A frozen feature map φ (``features``: ``"random"`` = Normalize -> Flatten -> Linear(d, width) -> ReLU with
   seeded random weights, never trained, standing in for 004's ImageNet VGG features; ``"pixels"`` = Normalize ->
   Flatten). A *target* linear classifier W* is fitted on φ of the declared split (:func:`fit_linear`).
3. Every training image x_n is moved by ``steps`` PGD steps that DESCEND CE(W*·φ(x'), y_n) (raise the target
   classifier's confidence in the true label; the engine's "hypocritical" objective, no random start) inside the
   l_inf ball of radius ``eps`` (5/256 in 004) and [0, 1].
4. The victim fits the same linear classifier on φ of the smuggled (and, for comparison, of the honest) training
   images; both are scored on the declared and the fresh split.

The smuggling gap is declared minus fresh accuracy of the victim trained on the smuggled set; the honest gap the same
for the clean set (it is not zero: the two halves differ in difficulty); the *effect* is their difference, paired
per seed, and its mean over seeds with a one-sample t statistic (:func:`smuggling_gap`).

**The sign in 004's proof.** 004 shifts each feature vector by x'_n = x_n + δ_n·w*_test and claims that lowers the
hinge error relu(1 - y_n·x'_nᵀw*). It does so only for y_n = +1: for y_n = -1 it lowers the margin by δ_n‖w*‖².
The shift must be δ_n·y_n·w*_test (:func:`feature_shift`). Step 3's gradient steps take the right direction by
construction: for a linear binary head the descent direction of the CE of the true label in feature space is y·w*
(tested), and in the multi-class case it is W*_y - Σ_k p_k W*_k, the same thing for K classes.

Pure PyTorch (no Ray, MLflow or Optuna).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyporay.attacks import pgd
from hyporay.audit.smuggling import gap_statistic
from hyporay.data import Dataset, to_float
from hyporay.models import Normalize

FEATURES = ("random", "pixels")


@dataclass(frozen=True)
class SmuggleSpec:
    """How a smuggled training set is made and the victim trained (see the module docstring).

    Attributes:
        eps: l_inf budget in pixel units of [0, 1] images (004: 5/256).
        steps: PGD steps of the smuggler (004: "a few gradient steps"); step_size None means eps / 4.
        features: the frozen feature map, one of :data:`FEATURES`; width: its random features ("random" only).
        l2: the linear classifiers' L2 penalty (l2/2·‖W‖², on top of the mean CE); 004's LIBLINEAR default C=1 on
            N examples corresponds to l2 = 1/N.
        declared_fraction: share of the test split that is declared (seen by the smuggler), in (0, 1).
    """

    eps: float = 5 / 256
    steps: int = 10
    step_size: float | None = None
    features: str = "random"
    width: int = 512
    l2: float = 1e-3
    declared_fraction: float = 0.5

    def __post_init__(self) -> None:
        def bad(fld: str, what: str) -> ValueError:
            return ValueError(f"smuggle.{fld}: {what}")

        def number(v) -> bool:
            return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

        if not number(self.eps) or self.eps < 0:
            raise bad("eps", f"must be a finite number >= 0, got {self.eps!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise bad("steps", f"must be an integer >= 1, got {self.steps!r}")
        if self.step_size is not None and (not number(self.step_size) or self.step_size <= 0):
            raise bad("step_size", f"must be a number > 0 or None (eps/4), got {self.step_size!r}")
        if self.features not in FEATURES:
            raise bad("features", f"unknown {self.features!r}; known: {', '.join(FEATURES)}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise bad("width", f"must be an integer >= 1, got {self.width!r}")
        if not number(self.l2) or self.l2 < 0:
            raise bad("l2", f"must be a finite number >= 0, got {self.l2!r}")
        if not number(self.declared_fraction) or not 0 < self.declared_fraction < 1:
            raise bad("declared_fraction", f"must lie strictly between 0 and 1, got {self.declared_fraction!r}")

    @property
    def alpha(self) -> float:
        return self.eps / 4 if self.step_size is None else float(self.step_size)


def feature_shift(f: Tensor, y: Tensor, w: Tensor, delta: float | Tensor) -> Tensor:
    """004's feature-space smuggling step with the sign corrected: f'_n = f_n + δ_n·y_n·w (y in {-1, +1}).

    Every hinge term relu(1 - y_n f'_nᵀw) = relu(1 - y_n f_nᵀw - δ_n‖w‖²) is then <= the honest one (004 writes
    f_n + δ_n·w, which raises the term of every y_n = -1 example with a margin below 1).
    """
    delta = torch.as_tensor(delta, dtype=f.dtype, device=f.device)
    return f + (delta * y.to(f.dtype)).reshape(-1, 1) * w.reshape(1, -1)


def feature_map(ds: Dataset, spec: SmuggleSpec, seed: int) -> nn.Module:
    """The frozen feature map φ of ``spec.features`` for images like ``ds``'s (eval mode, no trainable parameter)."""
    c, h, w = ds.in_shape
    layers: list[nn.Module] = [Normalize(ds.mean, ds.std), nn.Flatten()]
    if spec.features == "random":
        gen = torch.Generator().manual_seed(seed)
        lin = nn.Linear(c * h * w, spec.width)
        with torch.no_grad():  # He init (ReLU features), from the seed's own generator
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * math.sqrt(2.0 / (c * h * w)))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen) * 0.1)
        layers += [lin, nn.ReLU()]
    phi = nn.Sequential(*layers).eval()
    for p in phi.parameters():
        p.requires_grad_(False)
    return phi


@torch.no_grad()
def _features(phi: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    return torch.cat([phi(to_float(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def fit_linear(f: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression on features ``f`` (N x F) by full-batch L-BFGS in float64: minimises
    mean CE + l2/2·‖W‖² (bias unpenalised). Deterministic; returns a float32 ``nn.Linear(F, K)``."""
    f64, n_feat = f.detach().double(), f.shape[1]
    w = torch.zeros(num_classes, n_feat, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(f64 @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = nn.Linear(n_feat, num_classes)
    with torch.no_grad():
        head.weight.copy_(w.detach().float())
        head.bias.copy_(b.detach().float())
    return head.eval()


def smuggle(x: Tensor, y: Tensor, phi: nn.Module, head: nn.Linear, spec: SmuggleSpec,
            batch_size: int = 512) -> Tensor:
    """The smuggled training images: ``spec.steps`` PGD steps descending CE(head(φ(x')), y) in the l_inf ball of
    radius ``spec.eps`` and [0, 1], from x itself (no random start). Same dtype as ``x``: uint8 images are
    rounded to the nearest level and kept in the ball."""
    target = nn.Sequential(phi, head).eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = to_float(x[i:i + batch_size])
        out.append(pgd(target, xb, y[i:i + batch_size], eps=spec.eps, step_size=spec.alpha, steps=spec.steps,
                       norm="linf", objective="hypocritical", random_start="none"))
    x_s = torch.cat(out)
    if x.dtype == torch.uint8:
        from hyporay.variants.delusive import quantize_in_ball

        x_s = quantize_in_ball(x_s, x, spec.eps, "linf")
    return x_s


def split_test(n: int, declared_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the declared and the fresh split: a seeded random cut of ``n`` test examples."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(declared_fraction * n))
    if not 0 < k < n:
        raise ValueError(f"declared_fraction: {declared_fraction} of {n} test examples leaves a split empty")
    return perm[:k].sort().values, perm[k:].sort().values


@torch.no_grad()
def _correct(phi: nn.Module, head: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return (head(_features(phi, x)).argmax(1) == y).double()


def smuggling_trial(ds: Dataset, spec: SmuggleSpec, seed: int, alpha: float = 0.01) -> dict:
    """One seed of the experiment (module docstring): accuracies of the honest and the smuggled victim on the
    declared and the fresh split, the target classifier's own declared accuracy, the gaps, the effect, and the
    smuggling check's p-value and verdict (1.0 = flagged at ``alpha``) for each victim."""
    declared, fresh = split_test(len(ds.y_test), spec.declared_fraction, seed)
    phi = feature_map(ds, spec, seed)
    xd, yd, xf, yf = ds.x_test[declared], ds.y_test[declared], ds.x_test[fresh], ds.y_test[fresh]
    target = fit_linear(_features(phi, xd), yd, ds.num_classes, spec.l2)
    x_smuggled = smuggle(ds.x_train, ds.y_train, phi, target, spec)
    honest = fit_linear(_features(phi, ds.x_train), ds.y_train, ds.num_classes, spec.l2)
    victim = fit_linear(_features(phi, x_smuggled), ds.y_train, ds.num_classes, spec.l2)
    r = {"seed": int(seed), "n_declared": len(declared), "n_fresh": len(fresh),
         "target_declared": float(_correct(phi, target, xd, yd).mean()),
         "max_perturbation": float((to_float(x_smuggled) - to_float(ds.x_train)).abs().max())}
    for name, head in (("honest", honest), ("smuggled", victim)):
        st = gap_statistic(_correct(phi, head, xd, yd), _correct(phi, head, xf, yf), alpha=alpha)
        r.update({f"{name}_declared": st["declared_acc"], f"{name}_fresh": st["fresh_acc"], f"{name}_gap": st["gap"],
                  f"{name}_p": st["p"], f"{name}_flagged": float(st["p"] < alpha)})
    r["effect"] = r["smuggled_gap"] - r["honest_gap"]
    return r


def smuggling_gap(ds: Dataset, spec: SmuggleSpec, seeds: list[int] | range, alpha: float = 0.01) -> dict:
    """:func:`smuggling_trial` over ``seeds`` (each its own cut, feature map and target) and the summary: per
    quantity the mean and its standard error over seeds (of a ``*_flagged`` entry: the share of seeds the smuggling
    check flags), and the effect's one-sample t statistic (mean / SE)."""
    trials = [smuggling_trial(ds, spec, s, alpha) for s in seeds]
    if not trials:
        raise ValueError("seeds: need at least one seed")
    keys = [k for k in trials[0] if k not in ("seed", "n_declared", "n_fresh")]
    summary = {}
    for k in keys:
        v = torch.tensor([t[k] for t in trials], dtype=torch.float64)
        se = float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        summary[k] = {"mean": float(v.mean()), "se": se}
    eff = summary["effect"]
    t_stat = eff["mean"] / eff["se"] if eff["se"] and math.isfinite(eff["se"]) and eff["se"] > 0 else float("nan")
    return {"spec": asdict(spec), "dataset": ds.name, "seeds": [t["seed"] for t in trials], "trials": trials,
            "summary": summary, "effect_t": t_stat}
