"""Certified bounds on what any perturbation in an ε-ball can do (pure PyTorch; no Ray, MLflow, Optuna).

An attack's risk is a lower bound; these are upper bounds. A misclassified point is certified
*unconcealable* when for some wrong class j the lower bound of z_j(x') - z_y(x') over the whole ball
(intersected with [0,1]) is > 0: no false friend can make the model predict y there. A correctly
classified point is certified *robust* when z_y - z_j is bounded below by > 0 for every j != y. Hence

    R_hyp(D-) <= 1 - #unconcealable / |D-|,     R_adv(D+) <= 1 - #robust / |D+|.

Methods (``METHODS``), for the registry's feed-forward models (Normalize, Linear, Conv2d, BatchNorm in eval,
ReLU, Flatten, average/max pooling, the residual blocks of resnet18 and wrn28_10):
- "ibp": interval bound propagation, the specification matrix folded into the last layer (cheap, loose);
- "crown-ibp": CROWN backward linear bounds with IBP pre-activation bounds;
- "crown": CROWN with CROWN pre-activation bounds on every unstable ReLU (tighter, costlier);
both CROWN variants take the larger of their bound and IBP's, so they are never looser than "ibp".
For the l_inf-distance net (``linf_dist``) every method gives its own certificate: each logit is
L-Lipschitz in l_inf (L = 1 at p = inf, divided by min(std) for the registry's Normalize), so
z_j - z_y >= (z_j - z_y)(x) - 2 L ε, intersected with interval bounds through the distance layers.
l_2 balls are bounded soundly through the box they fit in and, for CROWN, the dual norm as well.

All bounds are computed on a float64 copy of the model in eval mode (the model itself is not touched).
A certificate needs a margin above ``CERT_TOL`` x (1 + max |logit|), far above float32 round-off of
the model's own forward pass, so a float32 attack cannot contradict it by round-off.

>>> from hyporay.certify import certify
>>> cert = certify(model, x, y, eps=0.1, norm="linf", method="crown")
>>> 1 - cert.unconcealable.sum() / (~cert.correct).sum()   # upper bound of R_hyp(D-)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hyporay.attacks.context import frozen_eval
from hyporay.certify.crown import Region, lower_bounds
from hyporay.certify.graph import NotCertifiable, trace
from hyporay.models.linf_dist import LinfDistNet
from hyporay.models.registry import Normalize

METHODS = ("ibp", "crown-ibp", "crown")
NORMS = ("linf", "l2")
CERT_TOL = 1e-5

__all__ = ["METHODS", "NORMS", "CERT_TOL", "Certificate", "NotCertifiable", "certify", "spec_lower_bounds",
           "margin_lower_bounds", "check_certify_args"]


def check_certify_args(*, eps: float, norm: str, method: str) -> None:
    """``ValueError`` (one line naming the argument) for a bad eps, norm or method."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: must be a finite number >= 0, got {eps!r}")
    if norm not in NORMS:
        raise ValueError(f"norm: unknown {norm!r}; known: {', '.join(NORMS)}")
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; known: {', '.join(METHODS)}")


def _check_inputs(x: Tensor) -> None:
    if not torch.is_floating_point(x):
        raise ValueError(f"x: must be a floating-point tensor in [0,1], got dtype {x.dtype}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError("x: values must lie in [0,1] (normalisation belongs inside the model)")


def _linf_dist_parts(model: nn.Module) -> tuple[Normalize, LinfDistNet] | None:
    """(normalize, net) when ``model`` is the registry's Sequential(normalize, linf_dist net)."""
    if isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], Normalize) \
            and isinstance(model[1], LinfDistNet):
        return model[0], model[1]
    return None


def _linf_dist_lower(model: nn.Module, x: Tensor, C: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    import copy

    twin = copy.deepcopy(model).to(dtype).eval()
    normalize, net = _linf_dist_parts(twin)
    xd = x.to(dtype)
    with torch.no_grad():
        z = twin(xd)
        # Lipschitz certificate: each logit moves by at most L ||x - x'||_inf, and ||.||_inf <= ||.||_2
        lip = net.lipschitz_linf() / float(normalize.std.min())
        lip_lb = (C @ z.unsqueeze(-1)).squeeze(-1) - C.abs().sum(-1) * lip * eps
        region = Region.ball(xd, eps, "linf")
        lo = (region.lo - normalize.mean) / normalize.std
        hi = (region.hi - normalize.mean) / normalize.std
        zl, zh = net.logit_interval(lo, hi)
        ibp_lb = (C.clamp(min=0) @ zl.unsqueeze(-1) + C.clamp(max=0) @ zh.unsqueeze(-1)).squeeze(-1)
    return torch.maximum(lip_lb, ibp_lb)


def spec_lower_bounds(model: nn.Module, x: Tensor, C: Tensor, *, eps: float, norm: str = "linf",
                      method: str = "crown", dtype: torch.dtype = torch.float64, name: str | None = None
                      ) -> Tensor:
    """Lower bounds of C z(x') over {x' : ||x' - x|| <= eps} ∩ [0,1]^d, per example and row of C.

    Args:
        model: N x C x H x W inputs in [0,1] -> N x K logits (normalisation inside); copied, never changed.
        x: clean inputs in [0,1], N x ...; eps: radius in pixel units; norm: "linf" or "l2".
        C: specification matrices, N x M x K (rows such as e_j - e_y bound logit differences directly).
        method: "ibp", "crown-ibp" or "crown" (module doc).
        dtype: the precision of the bound computation (float64 by default).
        name: the model's name in messages (default: its class).

    Returns:
        N x M lower bounds (``dtype``): for every x' in the region, (C z(x'))_m >= bound_m.

    Raises:
        NotCertifiable (a ValueError): "model X is not certifiable: <layer>" for unsupported layers.
    """
    check_certify_args(eps=eps, norm=norm, method=method)
    _check_inputs(x)
    if C.dim() != 3 or C.shape[0] != x.shape[0]:
        raise ValueError(f"C: must be N x M x K with N = {x.shape[0]}, got shape {tuple(C.shape)}")
    C = C.to(dtype)
    if _linf_dist_parts(model) is not None:
        return _linf_dist_lower(model, x, C, float(eps), dtype)
    graph, _ = trace(model, x, name=name, dtype=dtype)
    return lower_bounds(graph, Region.ball(x.to(dtype), float(eps), norm), C, method)


def _difference_spec(y: Tensor, k: int, sign: Tensor, dtype: torch.dtype) -> Tensor:
    """N x (K-1) x K rows sign_n (e_j - e_y) for j != y_n."""
    n = y.shape[0]
    eye = torch.eye(k, dtype=dtype, device=y.device)
    rows = eye.unsqueeze(0) - eye[y].unsqueeze(1)                      # N x K x K: row j = e_j - e_y
    keep = torch.arange(k, device=y.device).unsqueeze(0) != y.unsqueeze(1)
    return rows[keep].view(n, k - 1, k) * sign.to(dtype).view(n, 1, 1)


def margin_lower_bounds(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
                        method: str = "crown", dtype: torch.dtype = torch.float64) -> Tensor:
    """N x K lower bounds of z_j(x') - z_y(x') over the region (column y: 0); see ``spec_lower_bounds``."""
    with torch.no_grad(), frozen_eval(model):
        k = model(x[:1]).shape[1]
    C = _difference_spec(y, k, torch.ones_like(y), dtype)
    lb = spec_lower_bounds(model, x, C, eps=eps, norm=norm, method=method, dtype=dtype)
    out = torch.zeros((x.shape[0], k), dtype=dtype, device=x.device)
    keep = torch.arange(k, device=y.device).unsqueeze(0) != y.unsqueeze(1)
    out[keep] = lb.flatten()
    return out


@dataclass
class Certificate:
    """Per-example certificates (tensors of shape N on the inputs' device).

    ``correct``: the model's clean prediction is y. ``margin``: for a misclassified point the best lower
    bound of z_j - z_y over wrong classes j (> tol: unconcealable); for a correct point the worst lower
    bound of z_y - z_j (> tol: robust). ``certified`` = margin > tol. Units: logits.
    """

    correct: Tensor
    margin: Tensor
    tol: Tensor
    method: str
    eps: float
    norm: str

    @property
    def certified(self) -> Tensor:
        return self.margin > self.tol

    @property
    def unconcealable(self) -> Tensor:
        """Misclassified points no perturbation in the ball can make correct."""
        return self.certified & ~self.correct

    @property
    def robust(self) -> Tensor:
        """Correctly classified points no perturbation in the ball can make wrong."""
        return self.certified & self.correct


def certify(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf", method: str = "crown",
            dtype: torch.dtype = torch.float64, name: str | None = None) -> Certificate:
    """Certify every example of a batch: unconcealable mistakes on D-, robust points on D+.

    Args:
        model: N x C x H x W inputs in [0,1] -> N x K logits; its mode and parameters are left as found.
        x: clean inputs in [0,1], N x C x H x W; y: int64 labels, shape N.
        eps: radius in pixel units (l_inf: the box [x - eps, x + eps] ∩ [0,1]); norm: "linf" or "l2".
        method: "ibp", "crown-ibp" or "crown".

    Returns:
        ``Certificate`` with ``unconcealable`` (bool N, only on misclassified points) and ``robust``
        (bool N, only on correct points).
    """
    check_certify_args(eps=eps, norm=norm, method=method)
    _check_inputs(x)
    if y.shape != x.shape[:1]:
        raise ValueError(f"y: must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    with torch.no_grad(), frozen_eval(model):
        logits = model(x)
    k = logits.shape[1]
    correct = logits.argmax(1) == y
    sign = torch.where(correct, -1, 1)   # D-: z_j - z_y (some j > 0); D+: z_y - z_j (every j > 0)
    C = _difference_spec(y, k, sign, dtype)
    lb = spec_lower_bounds(model, x, C, eps=eps, norm=norm, method=method, dtype=dtype, name=name)
    margin = torch.where(correct, lb.amin(1), lb.amax(1)) if k > 1 else torch.full_like(lb[:, 0], -math.inf)
    tol = CERT_TOL * (1 + logits.detach().abs().amax(1).to(dtype))
    return Certificate(correct=correct, margin=margin, tol=tol, method=method, eps=float(eps), norm=norm)
