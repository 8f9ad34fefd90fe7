"""Threat models: an ε-ball in pixel space, defined by its step, projection and random start.

All tensors are N x C x H x W (or any N x ...), in [0, 1]; ε and step sizes are in pixel units
(8/255 for CIFAR's usual l_inf budget). Adding a threat model means one small subclass and one
entry in ``THREAT_MODELS``.
"""
from __future__ import annotations

import torch
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

    A zero gradient (flat loss, e.g. KL at x' = x) is replaced by a random direction, as official
    TRADES does, so the attack can leave a flat point instead of dividing by zero.
    """

    name = "l2"

    def step(self, x_adv, grad, step_size, generator):
        norms = grad.flatten(1).norm(dim=1)
        zero = norms <= _TINY
        if bool(zero.any()):
            grad[zero] = _randn(grad[zero], generator)
            norms = grad.flatten(1).norm(dim=1)
        scale = (step_size / norms.clamp_min_(_TINY)).view(-1, *([1] * (grad.dim() - 1)))
        return x_adv.addcmul_(grad, scale)

    def project_delta(self, delta, eps):
        factor = (eps / _per_example_norm(delta)).clamp_(max=1.0)
        return delta.mul_(factor)

    def projector(self, x, eps):
        def project(z):
            delta = z.sub_(x)
            factor = (eps / _per_example_norm(delta)).clamp_(max=1.0)
            return delta.mul_(factor).add_(x).clamp_(0.0, 1.0)
        return project

    def uniform(self, x, eps, generator):
        direction = _randn(x, generator)
        direction = direction / _per_example_norm(direction)
        d = x[0].numel()
        radius = _rand(x.new_empty(x.shape[0]), generator).pow_(1.0 / d).mul_(eps)
        return direction * radius.view(-1, *([1] * (x.dim() - 1)))

    def norm(self, delta):
        return delta.flatten(1).norm(dim=1)


THREAT_MODELS: dict[str, ThreatModel] = {"linf": LinfBall(), "l2": L2Ball()}
