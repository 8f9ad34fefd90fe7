"""Interval bound propagation (Gowal et al. 2018) over a ``Graph``.

Affine layers map the box's centre c and radius r to (W c + b, |W| r); ReLU and max pooling are monotone
(applied to both ends); a residual sum adds the intervals. Every bound is sound for every input in the
box; tight only for networks trained for it.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hyporay.certify.graph import Graph, Node
from hyporay.models.registry import Normalize


def abs_linear(m: nn.Module, r: Tensor) -> Tensor:
    """|W| r for the linear part of an affine layer ``m`` (r >= 0, N x ... its input shape)."""
    if isinstance(m, nn.Linear):
        return F.linear(r, m.weight.abs())
    if isinstance(m, nn.Conv2d):
        return F.conv2d(r, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = (m.running_var + m.eps).rsqrt()
        if m.weight is not None:
            scale = scale * m.weight
        return r * scale.abs().view(1, -1, *([1] * (r.dim() - 2)))
    if isinstance(m, Normalize):
        return r / m.std
    # average pooling (non-negative weights) and Flatten: the layer itself, without offset
    return m(r)


def affine_interval(m: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    c, r = (hi + lo) / 2, (hi - lo) / 2
    c, r = m(c), abs_linear(m, r)
    return c - r, c + r


def node_interval(node: Node, bounds: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Interval of one node's output from the intervals of its inputs."""
    lo, hi = bounds[node.inputs[0]]
    if node.op == "affine":
        return affine_interval(node.module, lo, hi)
    if node.op == "relu":
        return lo.clamp(min=0), hi.clamp(min=0)
    if node.op == "maxpool":
        return node.module(lo), node.module(hi)
    if node.op == "add":
        lo2, hi2 = bounds[node.inputs[1]]
        return lo + lo2, hi + hi2
    raise AssertionError(node.op)  # pragma: no cover


def interval_bounds(graph: Graph, lo: Tensor, hi: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Intervals of every node for inputs in the box [lo, hi] (N x ...)."""
    bounds = [(lo, hi)]
    for node in graph.nodes[1:]:
        bounds.append(node_interval(node, bounds))
    return bounds


def spec_interval_lower(graph: Graph, bounds: list[tuple[Tensor, Tensor]], C: Tensor) -> Tensor:
    """Lower bound of C z (C: N x M x K, z the logits) from interval bounds, C folded into the last layer.

    When the output node is a Linear layer, C W and C b form one affine map applied to the interval of its
    input (the specification matrix bounds differences directly); otherwise C is applied to the logits'
    interval.
    """
    out = graph.nodes[graph.output]
    if out.op == "affine" and isinstance(out.module, nn.Linear) and len(out.shape) == 1:
        lo, hi = bounds[out.inputs[0]]
        W, b = out.module.weight, out.module.bias
        CW = C @ W                                    # N x M x in
        c, r = (hi + lo) / 2, (hi - lo) / 2
        centre = (CW @ c.unsqueeze(-1)).squeeze(-1)
        if b is not None:
            centre = centre + C @ b
        return centre - (CW.abs() @ r.unsqueeze(-1)).squeeze(-1)
    lo, hi = bounds[graph.output]
    return (C.clamp(min=0) @ lo.unsqueeze(-1) + C.clamp(max=0) @ hi.unsqueeze(-1)).squeeze(-1)


__all__ = ["abs_linear", "affine_interval", "interval_bounds", "node_interval", "spec_interval_lower"]
