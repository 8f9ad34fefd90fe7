"""CROWN-style backward linear bounds (Zhang et al. 2018) over a ``Graph``.

A linear function A·v_t of a node's value is pushed back to the input: affine layers by their transpose
(a vector-Jacobian product, exact because the layer is affine), ReLUs by linear relaxations chosen from
their pre-activation bounds [l, u] (stable active: identity; stable inactive: zero; unstable: upper line
u/(u-l)·(x-l), lower line a·x with a = 1 if u >= -l else 0; lower lines for positive coefficients and
upper lines for negative ones when bounding below), max pooling by a sound relaxation (below: the input
with the largest lower bound; above: that input when it dominates its window, else the largest upper
bound), residual sums by adding the branches' coefficients. At the input, A x + d is minimised over the
box [l0, u0] (the ε-ball clipped to [0,1]) as A⁺ l0 + A⁻ u0 + d, and for l_2 also as A x0 - ε||A||₂ + d
(the larger of two sound bounds).

Pre-activation bounds come from IBP ("crown-ibp") or from CROWN itself on every unstable ReLU input
("crown"), always intersected with IBP's; the final bound is the larger of CROWN's and IBP's, so "crown"
is never looser than "ibp" on the same model. Upper bounds are lower bounds of the negated function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyporay.certify.graph import Graph, Node
from hyporay.certify.ibp import interval_bounds, node_interval, spec_interval_lower

#: largest coefficient tensor (elements) one backward pass may hold; examples are chunked to fit
BUDGET = 1 << 24


@dataclass
class Region:
    """The input set: the ε-ball around ``x`` (l_inf or l_2) intersected with [0,1]; ``lo``/``hi`` its box."""

    x: Tensor
    lo: Tensor
    hi: Tensor
    eps: float
    norm: str

    @classmethod
    def ball(cls, x: Tensor, eps: float, norm: str) -> "Region":
        # l_inf: the box is exactly ball ∩ [0,1]; l_2: the box contains it (used alongside the dual norm)
        return cls(x, (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0), float(eps), norm)

    def sub(self, sl: slice) -> "Region":
        return Region(self.x[sl], self.lo[sl], self.hi[sl], self.eps, self.norm)

    def lower(self, A: Tensor, bias: Tensor) -> Tensor:
        """min over the region of A x + bias; A: n x M x (input shape), bias: n x M -> n x M."""
        Af = A.flatten(2)
        lb = (Af.clamp(min=0) @ self.lo.flatten(1).unsqueeze(-1) +
              Af.clamp(max=0) @ self.hi.flatten(1).unsqueeze(-1)).squeeze(-1)
        if self.norm == "l2":
            dual = (Af @ self.x.flatten(1).unsqueeze(-1)).squeeze(-1) - self.eps * Af.norm(dim=-1)
            lb = torch.maximum(lb, dual)
        return lb + bias


def _affine_backward(node: Node, A: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    m = node.module
    n, M = A.shape[:2]
    if isinstance(m, nn.Flatten):
        return A.reshape(n, M, *in_shape), None
    if isinstance(m, nn.Linear) and len(in_shape) == 1:
        return A @ m.weight, (A @ m.bias if m.bias is not None else None)
    # any other affine layer: the transpose of its linear part is its vector-Jacobian product
    with torch.enable_grad():
        z = torch.zeros((n * M, *in_shape), dtype=A.dtype, device=A.device, requires_grad=True)
        out = m(z)
        (A_in,) = torch.autograd.grad(out, z, grad_outputs=A.reshape(n * M, *out.shape[1:]))
    with torch.no_grad():
        offset = m(torch.zeros((1, *in_shape), dtype=A.dtype, device=A.device))
    bias = (A.flatten(2) * offset.flatten(1).unsqueeze(0)).sum(-1)
    return A_in.view(n, M, *in_shape), bias


def _relu_backward(A: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    active, inactive = lo >= 0, hi <= 0
    unstable = ~active & ~inactive
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    up_slope = torch.where(unstable, hi / width, active.to(A.dtype))
    up_icpt = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
    low_slope = torch.where(unstable, (hi >= -lo).to(A.dtype), active.to(A.dtype))
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    A_in = pos * low_slope.unsqueeze(1) + neg * up_slope.unsqueeze(1)
    bias = (neg * up_icpt.unsqueeze(1)).flatten(2).sum(-1)
    return A_in, bias


def _maxpool_backward(node: Node, A: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    m = node.module
    n, M = A.shape[:2]
    N, C, H, W = lo.shape
    l_star, idx = F.max_pool2d(lo, m.kernel_size, m.stride, m.padding, m.dilation, return_indices=True)
    Ho, Wo = l_star.shape[-2:]
    u_max = F.max_pool2d(hi, m.kernel_size, m.stride, m.padding, m.dilation)
    u_star = hi.flatten(2).gather(2, idx.flatten(2)).view_as(l_star)
    # does the input with the largest lower bound dominate its window (every other upper bound below it)?
    pad = m.padding if isinstance(m.padding, tuple) else (m.padding, m.padding)
    padded = F.pad(hi.reshape(N * C, 1, H, W), (pad[1], pad[1], pad[0], pad[0]), value=-math.inf)
    win = F.unfold(padded, m.kernel_size, dilation=m.dilation, stride=m.stride)      # NC x k x L
    above = (win > l_star.reshape(N * C, 1, Ho * Wo)).sum(1).view_as(l_star)
    dominated = (above == 0) | ((above == 1) & (u_star > l_star))
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    dom = dominated.unsqueeze(1).to(A.dtype)
    coeff = pos + neg * dom                                   # onto the chosen input
    bias = (neg * (1 - dom) * u_max.unsqueeze(1)).flatten(2).sum(-1)
    A_in = torch.zeros((n, M, C, H * W), dtype=A.dtype, device=A.device)
    A_in.scatter_add_(3, idx.reshape(n, 1, C, Ho * Wo).expand(n, M, C, Ho * Wo), coeff.reshape(n, M, C, Ho * Wo))
    return A_in.view(n, M, C, H, W), bias


def backward_lower(graph: Graph, start: int, A: Tensor, bounds: list[tuple[Tensor, Tensor]],
                   region: Region) -> Tensor:
    """Lower bound (n x M) over ``region`` of A·v, v the value of node ``start`` (A: n x M x its shape)."""
    n, M = A.shape[:2]
    acc: dict[int, Tensor] = {start: A}
    bias = torch.zeros((n, M), dtype=A.dtype, device=A.device)
    for i in range(start, 0, -1):
        Ai = acc.pop(i, None)
        if Ai is None:
            continue
        node = graph.nodes[i]
        j = node.inputs[0]
        if node.op == "affine":
            A_in, b = _affine_backward(node, Ai, graph.nodes[j].shape)
        elif node.op == "relu":
            A_in, b = _relu_backward(Ai, *bounds[j])
        elif node.op == "maxpool":
            A_in, b = _maxpool_backward(node, Ai, *bounds[j])
        elif node.op == "add":
            k = node.inputs[1]
            acc[k] = acc[k] + Ai if k in acc else Ai
            A_in, b = Ai, None
        else:  # pragma: no cover
            raise AssertionError(node.op)
        if b is not None:
            bias = bias + b
        acc[j] = acc[j] + A_in if j in acc else A_in
    return region.lower(acc[0], bias)


def _refine(graph: Graph, bounds: list[tuple[Tensor, Tensor]], region: Region, node_id: int
            ) -> tuple[Tensor, Tensor]:
    """CROWN bounds of the unstable entries of node ``node_id`` (intersected with the current ones)."""
    lo, hi = bounds[node_id]
    n = lo.shape[0]
    fl, fh = lo.flatten(1), hi.flatten(1)
    unstable = (fl < 0) & (fh > 0)
    count = unstable.sum(1)
    m = int(count.max()) if n else 0
    if m == 0:
        return lo, hi
    order = unstable.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :m]  # unstable first
    valid = torch.arange(m, device=lo.device).unsqueeze(0) < count.unsqueeze(1)
    E = torch.zeros((n, m, fl.shape[1]), dtype=lo.dtype, device=lo.device)
    E.scatter_(2, order.unsqueeze(-1), valid.unsqueeze(-1).to(lo.dtype))
    A = torch.cat([E, -E], dim=1).view(n, 2 * m, *lo.shape[1:])
    lb = backward_lower(graph, node_id, A, bounds, region)
    cur_l, cur_h = fl.gather(1, order), fh.gather(1, order)
    new_l = torch.where(valid, torch.maximum(cur_l, lb[:, :m]), cur_l)
    new_h = torch.where(valid, torch.minimum(cur_h, -lb[:, m:]), cur_h)
    return fl.scatter(1, order, new_l).view_as(lo), fh.scatter(1, order, new_h).view_as(hi)


def _relu_inputs(graph: Graph) -> set[int]:
    return {node.inputs[0] for node in graph.nodes if node.op == "relu"}


def intermediate_bounds(graph: Graph, region: Region, ibp: list[tuple[Tensor, Tensor]], refine: bool
                        ) -> list[tuple[Tensor, Tensor]]:
    """Bounds of every node: IBP, with every ReLU input refined by CROWN when ``refine`` (in order)."""
    if not refine:
        return ibp
    targets = _relu_inputs(graph)
    bounds = [ibp[0]]
    for i, node in enumerate(graph.nodes[1:], 1):
        lo, hi = node_interval(node, bounds)  # IBP from the refined inputs, never looser than plain IBP
        bounds.append((torch.maximum(lo, ibp[i][0]), torch.minimum(hi, ibp[i][1])))
        if i in targets:
            bounds[i] = _refine(graph, bounds, region, i)
    return bounds


def lower_bounds(graph: Graph, region: Region, C: Tensor, method: str, budget: int = BUDGET) -> Tensor:
    """Lower bounds (N x M) of C z over the region (C: N x M x K, z the logits node); see the module doc."""
    ibp = interval_bounds(graph, region.lo, region.hi)
    if method == "ibp":
        return spec_interval_lower(graph, ibp, C)
    refine = method == "crown"
    rows = C.shape[1]
    if refine:
        for i in _relu_inputs(graph):
            lo, hi = ibp[i]
            rows = max(rows, 2 * int(((lo < 0) & (hi > 0)).flatten(1).sum(1).max()))
    widest = max(math.prod(node.shape) for node in graph.nodes)
    chunk = max(1, budget // max(1, rows * widest))
    out_shape = graph.nodes[graph.output].shape
    parts = []
    for s in range(0, C.shape[0], chunk):
        sl = slice(s, s + chunk)
        sub = region.sub(sl)
        bounds = intermediate_bounds(graph, sub, [(lo[sl], hi[sl]) for lo, hi in ibp], refine)
        c = C[sl]
        lb = backward_lower(graph, graph.output, c.reshape(c.shape[0], c.shape[1], *out_shape), bounds, sub)
        parts.append(torch.maximum(lb, spec_interval_lower(graph, bounds, c)))
    return torch.cat(parts)
