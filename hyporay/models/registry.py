"""Model registry and the input-normalisation layer shared by every model.

Every model built here takes images in [0, 1] (N x C x H x W, float) and returns logits (N x K).
Normalisation by the dataset's per-channel mean/std happens *inside* the model, so an attack's ε is
always measured in pixel units of the [0, 1] image.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["MODELS", "Normalize", "build_model", "list_models", "model_options", "register_model"]

#: name -> factory ``fn(*, in_shape, num_classes, **kwargs) -> nn.Module`` returning the bare network
#: (it receives normalised inputs); :func:`build_model` puts :class:`Normalize` in front of it.
MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory ``fn(*, in_shape, num_classes, **kwargs) -> nn.Module``.

    The factory builds the bare network for inputs of shape ``in_shape = (C, H, W)``; re-registering
    a name replaces the previous factory (convenient in notebooks).
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Sorted names of the registered models."""
    return sorted(MODELS)


def model_options(name: str) -> list[str] | None:
    """The options (keyword arguments) the factory of ``name`` accepts; None when it takes ``**kwargs``."""
    params = inspect.signature(MODELS[name]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [k for k in params if k not in ("in_shape", "num_classes")]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean/std are buffers of shape 1 x C x 1 x 1.

    Input: N x C x H x W in pixel units ([0, 1]); output: the same shape, normalised.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean_t.numel() != std_t.numel() or not bool((std_t > 0).all()):
            raise ValueError(f"Normalize: need as many means as stds and std > 0, got mean={list(mean)} std={list(std)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def build_model(
    name: str,
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs,
) -> nn.Sequential:
    """Build registered model ``name`` as ``Sequential(normalize=Normalize(mean, std), net=<network>)``.

    Args:
        name: a key of :data:`MODELS` (see :func:`list_models`).
        in_shape: (C, H, W) of one input image.
        num_classes: K, the number of logits.
        mean, std: per-channel statistics of the [0, 1] training images (C values each).
        **kwargs: architecture options of the factory (e.g. ``hidden`` for ``mlp``, ``bn`` for ``cnn``).

    Returns:
        A module mapping N x C x H x W inputs in [0, 1] to N x K logits. ``model.net`` is the bare
        network, ``model.normalize`` the normalisation layer.

    Raises:
        ValueError: one line, for an unknown name, an unknown option, or mean/std not matching C.
    """
    if name not in MODELS:
        raise ValueError(f"model: unknown {name!r}; known: {', '.join(list_models())}")
    fn = MODELS[name]
    allowed = model_options(name)
    if allowed is not None:
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"model {name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(allowed) or '(none)'}")
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) != 3 or len(mean) != in_shape[0] or len(std) != in_shape[0]:
        raise ValueError(f"model {name}: in_shape must be (C, H, W) with len(mean) == len(std) == C, got in_shape={in_shape}, {len(mean)} means, {len(std)} stds")
    try:  # a bad option value (hidden: -5, channels: "x") fails inside the factory or its first forward
        net = fn(in_shape=in_shape, num_classes=int(num_classes), **kwargs)
        model = nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *in_shape))
    except (TypeError, ValueError, RuntimeError, IndexError, OverflowError) as exc:
        raise ValueError(f"model.kwargs: {name} cannot be built with {kwargs or 'its defaults'} for inputs "
                         f"{in_shape} ({_first_line(exc)})") from None
    if tuple(out.shape) != (2, int(num_classes)):
        raise ValueError(f"model {name}: returns shape {tuple(out.shape[1:])} per input, expected ({num_classes},) "
                         "logits")
    return model.train()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
