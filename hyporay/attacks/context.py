"""Model-state hygiene for attacks: eval mode and frozen parameters, restored exactly afterwards."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` on every parameter; restore both on exit.

    Each module's own ``training`` flag and each parameter's own ``requires_grad`` flag are recorded and
    put back one by one (not ``model.train(old)``, which would overwrite a deliberately frozen
    sub-module). Freezing the parameters keeps autograd from building weight-gradient graphs during an
    attack, so no gradient ever accumulates in ``param.grad``.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)
