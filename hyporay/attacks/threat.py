"""Threat models: an ε-ball in pixel space, defined by its step, projection and random start.

All tensors are N x C x H x W (or any N x ...), in [0, 1]; ε and step sizes are in pixel units
(8/255 for CIFAR's usual l_inf budget). Adding a threat model means one small subclass and one
entry in ``THREAT_MODELS``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_TINY = 1e-12


def _per_example_norm(t: Tensor) -> Tensor:
    """l_2 norm of each example, shaped N x 1 x 1 ... for broadcasting."""
    return t.flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (t.dim() - 1)))


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def _rand(like: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.rand(like.shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


class ThreatModel:
    """An ε-ball around the clean input. Subclasses define ``step``, ``project_delta``, ``uniform``."""

    name: str = ""

    def step(self, x_adv: Tensor, grad: Tensor, step_size: float, generator: torch.Generator | None) -> Tensor:
        """One ascent step of size ``step_size`` along ``grad`` (the ascent direction), in place."""
        raise NotImplementedError

    def project_delta(self, delta: Tensor, eps: float) -> Tensor:
        """Project the perturbation onto the ε-ball, in place."""
        raise NotImplementedError

    def uniform(self, x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
        """A perturbation drawn uniformly from the ε-ball (shape of x)."""
        raise NotImplementedError

    def project(self, x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
        """Project ``x_adv`` onto the ε-ball around ``x`` and then into [0,1]; returns a new tensor.

        The box [0,1] is convex and contains x, so clamping after the ball projection keeps the point
        inside the ball (clamping moves every coordinate toward x's side of the box).
        """
        delta = self.project_delta(x_adv - x, eps)
        return (x + delta).clamp_(0.0, 1.0)

    def projector(self, x: Tensor, eps: float):
        """A function z -> projection of z onto (ε-ball around x) ∩ [0,1]; may work in place on z.

        The engine calls it once per attack, so a threat model can precompute what every step reuses.
        """
        return lambda z: self.project(z, x, eps)

    def norm(self, delta: Tensor) -> Tensor:
        """Per-example size of a perturbation in this threat model's norm (shape N)."""
        raise NotImplementedError


class LinfBall(ThreatModel):
    """l_inf ball: sign-gradient steps, coordinate-wise clipping, uniform start in [-ε, ε]^d."""

    name = "linf"

    def step(self, x_adv, grad, step_size, generator):
        return x_adv.add_(grad.sign_(), alpha=step_size)

    def project_delta(self, delta, eps):
        return delta.clamp_(-eps, eps)

    def projector(self, x, eps):
        # (l_inf ball) ∩ [0,1] is a box: one in-place clamp to precomputed bounds per step.
        lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
        return lambda z: z.clamp_(lo, hi)

    def uniform(self, x, eps, generator):
        return _rand(x, generator).mul_(2 * eps).sub_(eps)

    def norm(self, delta):
        return delta.flatten(1).abs().amax(dim=1)


class L2Ball(ThreatModel):
    """l_2 ball: normalised-gradient steps, renorm projection, uniform start in the ball.

    A zero gradient (a flat loss, e.g. KL at x' = x exactly) gives a zero step rather than a division by
    zero; the stability attack's "auto" start (x + 0.001·N(0,1)) is what moves it off such a point, as the
    official TRADES start does.
    """

    name = "l2"

    def step(self, x_adv, grad, step_size, generator):
        direction = F.normalize(grad.flatten(1), dim=1, eps=_TINY).view_as(grad)
        return x_adv.add_(direction, alpha=step_size)

    def project_delta(self, delta, eps):
        return delta.renorm_(2, 0, eps)

    def projector(self, x, eps):
        # renorm rescales each example's perturbation to l_2 norm <= eps in one kernel
        return lambda z: z.sub_(x).renorm_(2, 0, eps).add_(x).clamp_(0.0, 1.0)

    def uniform(self, x, eps, generator):
        direction = _randn(x, generator)
        direction = direction / _per_example_norm(direction)
        d = x[0].numel()
        radius = _rand(x.new_empty(x.shape[0]), generator).pow_(1.0 / d).mul_(eps)
        return direction * radius.view(-1, *([1] * (x.dim() - 1)))

    def norm(self, delta):
        return delta.flatten(1).norm(dim=1)


THREAT_MODELS: dict[str, ThreatModel] = {"linf": LinfBall(), "l2": L2Ball()}
