"""The l_inf-distance net (Zhang et al., ICML 2021): certified robust by construction.

A unit is u(h) = ||h - w||_p + b, with no activation (the distance is the nonlinearity). Hidden layers of
width W are followed by a mean shift (a running per-unit mean subtracted: BatchNorm without variance or
scale, which would break the Lipschitz bound); the logits are negated distances to K prototypes,
z_k = -(||h - w_k||_p + b_k). At p = inf every layer is 1-Lipschitz from l_inf to l_inf, so each logit
moves by at most ||x - x'||_inf and a margin z_y - z_j > 2ε certifies. At finite p a layer with d inputs
is d^(1/p)-Lipschitz (||v||_p <= d^(1/p) ||v||_inf), so ``lipschitz_linf`` is exact for every p.

Training anneals p from ``p_start`` (8) to ``p_end`` (1000) geometrically over the first ``anneal`` share of
the epochs, then trains at p = inf (``set_progress``, called by ``hyporay.trainers.Trainer`` before each
epoch). Evaluate and certify at p = inf (the buffer ``p``; a freshly built model is at p = inf).

The registry puts ``Normalize(mean, std)`` in front of every model: it subtracts the mean and divides by a
fixed std, so in pixel units the net is (lipschitz_linf / min(std))-Lipschitz; ``hyporay.certify`` accounts
for that. Memory: a forward at finite p holds an N x out x in tensor per layer (small nets only); p = inf
uses ``torch.cdist`` without it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .registry import register_model

IDENTITY_SHIFT = 10.0  # identity init: weight[i, i mod in] = -10 makes u_i(h) = h_(i mod in) + 10 initially


def _pnorm(d: Tensor, p: float) -> Tensor:
    """||d||_p over the last dim for d >= 0, finite p, rescaled by the max (no overflow at p = 1000)."""
    top = d.amax(-1, keepdim=True)
    scaled = d / top.clamp_min(torch.finfo(d.dtype).tiny)   # in [0,1]
    return top.squeeze(-1) * scaled.pow(p).sum(-1).pow(1.0 / p)


def lp_distance(h: Tensor, w: Tensor, p: float) -> Tensor:
    """||h_n - w_k||_p for h: N x d, w: K x d -> N x K (exact; p = inf via cdist without an N x K x d tensor)."""
    if math.isinf(p):
        return torch.cdist(h.unsqueeze(0), w.unsqueeze(0), p=math.inf)[0]
    return _pnorm((h.unsqueeze(1) - w.unsqueeze(0)).abs(), p)


def distance_interval(lo: Tensor, hi: Tensor, w: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Interval of ||h - w_k||_p over the box lo <= h <= hi (N x d) -> two N x K tensors."""
    lo_, hi_, w_ = lo.unsqueeze(1), hi.unsqueeze(1), w.unsqueeze(0)
    near = torch.maximum(torch.maximum(lo_ - w_, w_ - hi_), torch.zeros_like(lo_ - w_))   # closest |h_i - w_i|
    far = torch.maximum((lo_ - w_).abs(), (hi_ - w_).abs())                               # farthest
    if math.isinf(p):
        return near.amax(-1), far.amax(-1)
    return _pnorm(near, p), _pnorm(far, p)


class MeanShift(nn.Module):
    """Subtract a per-feature mean: the batch mean in training (tracked as a running mean), the running
    mean in eval mode. Never divides, so it keeps every Lipschitz bound. Input N x F."""

    def __init__(self, features: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(features))

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            mean = h.mean(0)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            return h - mean
        return h - self.running_mean


class LinfDist(nn.Module):
    """``out`` units ||h - w_k||_p (+ b_k); identity initialisation when in <= out (``identity``)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, identity: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if identity and in_features <= out_features:
            with torch.no_grad():
                idx = torch.arange(out_features)
                self.weight[idx, idx % in_features] = -IDENTITY_SHIFT

    def forward(self, h: Tensor, p: float) -> Tensor:
        d = lp_distance(h, self.weight, p)
        return d if self.bias is None else d + self.bias

    def interval(self, lo: Tensor, hi: Tensor, p: float) -> tuple[Tensor, Tensor]:
        dl, dh = distance_interval(lo, hi, self.weight, p)
        return (dl, dh) if self.bias is None else (dl + self.bias, dh + self.bias)


class LinfDistNet(nn.Module):
    """Flatten -> ``depth`` x [LinfDist(width) -> MeanShift] -> LinfDist(K) negated: N x C x H x W -> N x K."""

    def __init__(self, in_features: int, num_classes: int, *, width: int = 128, depth: int = 4,
                 p_start: float = 8.0, p_end: float = 1000.0, anneal: float = 0.9) -> None:
        super().__init__()
        if depth < 0 or width < 1:
            raise ValueError(f"model linf_dist: need width >= 1 and depth >= 0, got width={width}, depth={depth}")
        if not (1 <= p_start <= p_end) or not 0 <= anneal <= 1:
            raise ValueError(f"model linf_dist: need 1 <= p_start <= p_end and 0 <= anneal <= 1, got p_start="
                             f"{p_start}, p_end={p_end}, anneal={anneal}")
        self.flatten = nn.Flatten()
        widths = [in_features] + [width] * depth
        self.layers = nn.ModuleList(LinfDist(a, b, bias=False, identity=True) for a, b in zip(widths, widths[1:]))
        self.shifts = nn.ModuleList(MeanShift(width) for _ in range(depth))
        self.head = LinfDist(widths[-1], num_classes, bias=True, identity=False)
        self.p_start, self.p_end, self.anneal = float(p_start), float(p_end), float(anneal)
        self.register_buffer("p", torch.tensor(math.inf))

    def forward(self, x: Tensor) -> Tensor:
        p = float(self.p)
        h = self.flatten(x)
        for layer, shift in zip(self.layers, self.shifts):
            h = shift(layer(h, p))
        return -self.head(h, p)

    def set_progress(self, epoch: int, epochs: int) -> None:
        """p for training epoch ``epoch`` (0-based) of ``epochs``: p_start * (p_end/p_start)^(epoch/E_a) for
        epoch < E_a = min(epochs - 1, ceil(anneal * epochs)), then inf (the last epoch always at inf)."""
        n_anneal = min(epochs - 1, math.ceil(self.anneal * epochs))
        if epoch >= n_anneal:
            p = math.inf
        else:
            p = self.p_start * (self.p_end / self.p_start) ** (epoch / n_anneal)
        self.p.fill_(p)

    def lipschitz_linf(self) -> float:
        """Lipschitz constant of every logit w.r.t. the l_inf norm of the (normalised) input: prod d^(1/p)."""
        p = float(self.p)
        if math.isinf(p):
            return 1.0
        return math.prod(layer.weight.shape[1] ** (1.0 / p) for layer in [*self.layers, self.head])

    def logit_interval(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Interval bounds (IBP) of the logits for (normalised) inputs in the box [lo, hi], eval mode."""
        p = float(self.p)
        lo, hi = self.flatten(lo), self.flatten(hi)
        for layer, shift in zip(self.layers, self.shifts):
            lo, hi = layer.interval(lo, hi, p)
            lo, hi = lo - shift.running_mean, hi - shift.running_mean
        zl, zh = self.head.interval(lo, hi, p)
        return -zh, -zl


@register_model("linf_dist")
def linf_dist(*, in_shape: tuple[int, int, int], num_classes: int, width: int = 128, depth: int = 4,
              p_start: float = 8.0, p_end: float = 1000.0, anneal: float = 0.9) -> LinfDistNet:
    """l_inf-distance net on flattened inputs: ``depth`` hidden distance layers of ``width`` units and a
    distance head of K units; p annealed from ``p_start`` to ``p_end`` over the first ``anneal`` share of
    the epochs, then inf."""
    c, h, w = in_shape
    return LinfDistNet(c * h * w, num_classes, width=int(width), depth=int(depth), p_start=p_start,
                       p_end=p_end, anneal=anneal)
