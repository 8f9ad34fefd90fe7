"""A model as a small computation graph of certifiable operations (pure PyTorch).

Bounds are propagated over a DAG of nodes rather than over ``model.forward``: node 0 is the input, every
other node is one operation on earlier nodes, in topological (creation) order:

- ``affine``: Linear, Conv2d (zero padding), BatchNorm1d/2d in eval mode with running statistics, the
  registry's ``Normalize``, AvgPool2d, AdaptiveAvgPool2d, Flatten;
- ``relu``; ``maxpool`` (MaxPool2d, ceil_mode off);
- ``add``: the sum of two nodes (a residual connection).

``trace`` knows ``nn.Sequential`` and the residual blocks of the registry (ResNet-18's ``BasicBlock``,
WideResNet's ``WideBlock``); Dropout and Identity are the identity in eval mode. Anything else raises
``NotCertifiable`` naming the layer. After tracing, ``Graph.check`` re-runs the graph on real inputs and
refuses a model whose own ``forward`` computes something else (a custom forward the tracer cannot see).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hyporay.models.registry import Normalize


class NotCertifiable(ValueError):
    """The model contains a layer the bound propagation does not support (one line naming it)."""


AFFINE_TYPES = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, Normalize, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d, nn.Flatten)
IDENTITY_TYPES = (nn.Identity, nn.Dropout)


@dataclass
class Node:
    op: str                      # "input" | "affine" | "relu" | "maxpool" | "add"
    inputs: tuple[int, ...]
    module: nn.Module | None = None
    shape: tuple[int, ...] = ()  # per-example output shape, set by Graph.forward


def model_name(model: nn.Module) -> str:
    """A short name for messages: the bare network's class (registry models wrap it as ``model.net``)."""
    return type(getattr(model, "net", model)).__name__


class Graph:
    """The certifiable computation of a model: ``nodes`` in topological order, ``output`` the logits node."""

    def __init__(self) -> None:
        self.nodes: list[Node] = [Node("input", ())]
        self.output = 0

    def add(self, op: str, inputs: tuple[int, ...], module: nn.Module | None = None) -> int:
        self.nodes.append(Node(op, inputs, module))
        return len(self.nodes) - 1

    def forward(self, x: Tensor) -> list[Tensor]:
        """Values of every node for inputs x (N x ...); records each node's per-example shape."""
        vals: list[Tensor] = [x]
        self.nodes[0].shape = tuple(x.shape[1:])
        for node in self.nodes[1:]:
            a = vals[node.inputs[0]]
            if node.op == "affine" or node.op == "maxpool":
                v = node.module(a)
            elif node.op == "relu":
                v = torch.relu(a)
            elif node.op == "add":
                v = a + vals[node.inputs[1]]
            else:  # pragma: no cover - the tracer creates no other op
                raise AssertionError(node.op)
            node.shape = tuple(v.shape[1:])
            vals.append(v)
        return vals

    def check(self, model: nn.Module, x: Tensor, name: str) -> None:
        """Refuse the model unless the graph reproduces ``model(x)`` (same dtype, round-off only)."""
        with torch.no_grad():
            want = model(x)
            got = self.forward(x)[self.output]
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-6, atol=1e-6 * (1 + float(want.abs().max()))):
            raise NotCertifiable(f"model {name} is not certifiable: its forward pass is not the traced chain of "
                                 "layers (a custom forward?)")


def _check_module(m: nn.Module, name: str) -> None:
    bad = None
    if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        bad = f"Conv2d with padding_mode={m.padding_mode!r}"
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_mean is None:
        bad = f"{type(m).__name__} without running statistics"
    elif isinstance(m, nn.MaxPool2d) and m.ceil_mode:
        bad = "MaxPool2d with ceil_mode=True"
    if bad:
        raise NotCertifiable(f"model {name} is not certifiable: {bad}")


def _trace(g: Graph, m: nn.Module, inp: int, name: str) -> int:
    from hyporay.models.resnet import BasicBlock, ResNet
    from hyporay.models.wideresnet import WideBlock, WideResNet

    if isinstance(m, nn.Sequential):
        for child in m:
            inp = _trace(g, child, inp, name)
        return inp
    if isinstance(m, IDENTITY_TYPES):
        return inp
    if isinstance(m, AFFINE_TYPES):
        _check_module(m, name)
        return g.add("affine", (inp,), m)
    if isinstance(m, nn.ReLU):
        return g.add("relu", (inp,))
    if isinstance(m, nn.MaxPool2d):
        _check_module(m, name)
        return g.add("maxpool", (inp,), m)
    if isinstance(m, BasicBlock):  # relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))
        h = inp
        for child in (m.conv1, m.bn1, nn.ReLU(), m.conv2, m.bn2):
            h = _trace(g, child, h, name)
        s = _trace(g, m.shortcut, inp, name)
        return g.add("relu", (g.add("add", (h, s)),))
    if isinstance(m, ResNet):
        h = _trace(g, m.layers, _trace(g, m.stem, inp, name), name)
        for child in (nn.AdaptiveAvgPool2d(1), nn.Flatten(), m.fc):
            h = _trace(g, child, h, name)
        return h
    if isinstance(m, WideBlock):  # o = relu(bn1(x)); conv2(relu(bn2(conv1(o)))) + (x or shortcut(o))
        o = _trace(g, m.bn1, inp, name)
        o = g.add("relu", (o,))
        skip = inp if m.shortcut is None else _trace(g, m.shortcut, o, name)
        h = o
        for child in (m.conv1, m.bn2, nn.ReLU(), m.conv2):
            h = _trace(g, child, h, name)
        return g.add("add", (h, skip))
    if isinstance(m, WideResNet):
        h = _trace(g, m.blocks, _trace(g, m.conv1, inp, name), name)
        h = g.add("relu", (_trace(g, m.bn, h, name),))
        for child in (nn.AdaptiveAvgPool2d(1), nn.Flatten(), m.fc):
            h = _trace(g, child, h, name)
        return h
    raise NotCertifiable(f"model {name} is not certifiable: {type(m).__name__}")


def trace(model: nn.Module, x: Tensor, *, name: str | None = None, dtype: torch.dtype = torch.float64
          ) -> tuple[Graph, nn.Module]:
    """Trace a copy of ``model`` (eval mode, frozen, in ``dtype``) into a ``Graph`` checked on inputs ``x``.

    Returns the graph (node shapes recorded) and the copy it refers to; ``model`` itself is untouched.
    """
    name = name or model_name(model)
    twin = copy.deepcopy(model).to(dtype).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    g = Graph()
    g.output = _trace(g, twin, 0, name)
    g.check(twin, x.to(dtype), name)
    return g, twin
