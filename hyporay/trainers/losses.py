"""Per-batch training losses: NT, PGD-AT, TRADES, THRM (000 §5.1), RandNoise (001 Table 2). The only thing trainers
differ in.

Each loss is ``fn(model, x, y, ctx) -> (loss, logits)`` (logits of the inputs the CE term saw). The model is in train mode
when called; the inner attack runs in eval mode (the PGD engine sees to that and restores the mode).
KL terms are KL(p(x) || p(x')) with ``batchmean`` reduction, gradients through both sides (the clean
distribution is not detached), as in the official TRADES and False-Friends code.

Passes (``hyporay.passes``): the inner attack records its own; each loss records its forward images, and the same
number of backward passes (the training step backpropagates through every forward of the loss).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyporay import passes
from hyporay.attacks import THREAT_MODELS, AttackSpec


@dataclass
class LossContext:
    """What a per-batch loss needs besides the batch."""

    attack: AttackSpec          # the training attack (threat model, steps, step size, start)
    lam: float = 0.0            # λ of TRADES / THRM
    concat_forward: bool = True  # one forward on cat(x, x') (False-Friends) vs two (official TRADES)
    generator: torch.Generator | None = None


def _forward_pair(model: nn.Module, x: Tensor, x_pert: Tensor, concat: bool) -> tuple[Tensor, Tensor]:
    passes.add(forward=2 * len(x), backward=2 * len(x))
    if concat:  # BatchNorm statistics over 2B examples, as in the False-Friends code
        out = model(torch.cat([x, x_pert]))
        return out[: len(x)], out[len(x):]
    return model(x), model(x_pert)


def kl_batchmean(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) summed over classes, averaged over the batch; p, q = softmax of the logits."""
    log_p = F.log_softmax(logits_p.float(), dim=1)
    log_q = F.log_softmax(logits_q.float(), dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def natural(model, x, y, ctx):
    passes.add(forward=len(x), backward=len(x))
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def pgd_at(model, x, y, ctx):
    x_adv = ctx.attack.run(model, x, y, "adversarial", generator=ctx.generator)
    passes.add(forward=len(x), backward=len(x))
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


def randnoise(model, x, y, ctx):
    """RandNoise (001 Table 2): CE on x' = x + δ, δ uniform in the training attack's ε-ball (l_inf: U[-ε, ε]^d;
    l_2: uniform in the ball), clipped to [0, 1]; one fresh draw per example and batch, no gradient steps."""
    threat = THREAT_MODELS[ctx.attack.norm]
    with torch.no_grad():
        x_noisy = threat.project(x + threat.uniform(x, ctx.attack.eps, ctx.generator), x, ctx.attack.eps)
    passes.add(forward=len(x), backward=len(x))
    logits = model(x_noisy)
    return F.cross_entropy(logits, y), logits


def _regularised(objective: str, model, x, y, ctx):
    """CE(p(x), y) + λ·KL(p(x) || p(x')), x' from the inner attack ``objective``."""
    if ctx.lam == 0:  # λ = 0 is natural training exactly; skip the inner attack
        return natural(model, x, y, ctx)
    x_pert = ctx.attack.run(model, x, y, objective, generator=ctx.generator)
    logits, logits_pert = _forward_pair(model, x, x_pert, ctx.concat_forward)
    return F.cross_entropy(logits, y) + ctx.lam * kl_batchmean(logits, logits_pert), logits


# Plain functions rather than closures made at import time, so that a mutation tool (make mutants) can change
# which inner attack each one uses.
def trades(model, x, y, ctx):
    """TRADES: x' = argmax KL(p(x) || p(x')) (the stability attack)."""
    return _regularised("stability", model, x, y, ctx)


def thrm(model, x, y, ctx):
    """THRM: x' = argmin CE(p(x'), y) (the hypocritical attack)."""
    return _regularised("hypocritical", model, x, y, ctx)


LOSSES: dict[str, Callable] = {"natural": natural, "pgd_at": pgd_at, "trades": trades, "thrm": thrm,
                               "randnoise": randnoise}
#: how many inner-attack passes each loss spends per batch (for cost models): 0 or the attack's steps
ATTACKS_PER_BATCH = {"natural": 0, "pgd_at": 1, "trades": 1, "thrm": 1, "randnoise": 0}
