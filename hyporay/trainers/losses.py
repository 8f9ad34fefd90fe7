"""Per-batch training losses: NT, PGD-AT, TRADES, THRM (000 §5.1); RandNoise, FAT and GAIRAT (001 Table 2). The only
thing trainers differ in.

Each loss is ``fn(model, x, y, ctx) -> (loss, logits)`` (logits of the inputs the CE term saw). The model is in train mode
when called; the inner attack runs in eval mode (the PGD engine sees to that and restores the mode).
KL terms are KL(p(x) || p(x')) with ``batchmean`` reduction, gradients through both sides (the clean
distribution is not detached), as in the official TRADES and False-Friends code.

Cheaper inner attacks are ``train.attack`` settings (``AttackSpec``): fewer ``steps`` with a larger ``step_size``, and
``early_stop=τ``, FAT's rule (Zhang et al. 2020): an example leaves the attack τ steps after its first success and
the batch shrinks. The success test is the inner attack's own: PGD-AT misclassified (f(x') != y), TRADES prediction
changed (f(x') != f(x)), THRM right (f(x') == y). For THRM "decided" is therefore the hypocritical indicator: a
misclassified training point is decided once concealed (τ more steps follow), and a correctly classified one is
decided at the start, where its indicator already holds, so it takes exactly τ steps of descent. The mistakes are
what the hypocritical risk is about and they keep the attack until they are concealed; the correct points, whose
indicator no attack can change, pay τ steps for the KL term instead of K. Whether that still trains as good a
front is measured, not assumed: bench/frontier_cost.py.

Passes (``hyporay.passes``): the inner attack records its own; each loss records its forward images, and the same
number of backward passes (the training step backpropagates through every forward of the loss).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

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
    gair_lambda: float = -1.0   # GAIRAT's λ in ω = (1 + tanh(λ + 5(1 - 2κ/K)))/2 (the authors' default -1)
    gair_begin: float = 0.5     # GAIRAT: share of the planned epochs trained unweighted first (authors: 60 of 120)
    epoch: int = 0              # the epoch being trained (0-based); the Trainer sets it
    epochs: int | None = None   # the planned epochs (FAT's τ schedule, GAIRAT's burn-in); the Trainer sets it


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


def fat_tau(epoch: int, epochs: int | None) -> int:
    """FAT's dynamic τ (``FAT.py``'s ``adjust_tau``, 120 epochs): τ = 0 for epochs 1-50, 1 for 51-90, 2 after,
    as shares 50/120 and 90/120 of the planned ``epochs`` (the literal epoch numbers when none is planned).
    ``epoch`` is 0-based."""
    e = epoch + 1
    first, second = (50, 90) if not epochs else (50 / 120 * epochs, 90 / 120 * epochs)
    return 0 if e <= first else 1 if e <= second else 2


def fat(model, x, y, ctx):
    """FAT (Zhang et al., ICML 2020, Eq. 4 with the early-stopped PGD of its Algorithm 1): CE on the point where
    each example's PGD stopped, τ steps after its first misclassified iterate (the full K steps where none is).

    τ is the training attack's ``early_stop`` when set, else FAT's dynamic schedule (:func:`fat_tau`). The one
    early-stop rule of the PGD engine (``pgd(early_stop=τ)``) does the stopping and shrinks the batch."""
    tau = ctx.attack.early_stop if ctx.attack.early_stop is not None else fat_tau(ctx.epoch, ctx.epochs)
    x_adv = replace(ctx.attack, early_stop=tau).run(model, x, y, "adversarial", generator=ctx.generator)
    passes.add(forward=len(x), backward=len(x))
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


def gair_weights(kappa: Tensor, steps: int, lam: float) -> Tensor:
    """GAIRAT's weights (Zhang et al., ICLR 2021, Eq. 6, the Tanh form of ``GAIR.py``), normalised to mean 1:
    ω_i = (1 + tanh(λ + 5·(1 - 2κ_i/K)))/2, then ω_i·N/Σω. κ_i in 0..K: PGD steps before example i is first
    misclassified (K if never). Few steps to a mistake (close to the boundary) weigh more."""
    omega = (1 + torch.tanh(lam + 5 * (1 - 2 * kappa.double() / steps))) / 2
    return (omega * len(omega) / omega.sum()).float()


def gairat_active(epoch: int, epochs: int | None, begin: float) -> bool:
    """Whether GAIRAT reweights in (0-based) ``epoch``: from epoch ``begin·epochs`` rounded half up (1-based) on,
    as ``GAIRAT.py``'s ``(epoch + 1) >= begin_epoch``; always when no epochs are planned or ``begin`` is 0. (Half
    up, not Python's round-half-to-even, which gave 5 epochs one burn-in epoch and 7 epochs three.)"""
    return not epochs or epoch + 1 >= math.floor(begin * epochs + 0.5)


def gairat(model, x, y, ctx):
    """GAIRAT (Zhang et al., ICLR 2021, Eq. 5-6): PGD-AT whose per-example CE on the adversarial point is weighted by
    :func:`gair_weights` of κ from the same PGD run (the engine's ``AttackResult.kappa``); plain mean CE during the
    burn-in (:func:`gairat_active`). The weights are constants (no gradient flows through κ)."""
    res = ctx.attack.run(model, x, y, "adversarial", generator=ctx.generator, return_result=True)
    passes.add(forward=len(x), backward=len(x))
    logits = model(res.x)
    if not gairat_active(ctx.epoch, ctx.epochs, ctx.gair_begin):
        return F.cross_entropy(logits, y), logits
    w = gair_weights(res.kappa, ctx.attack.steps, ctx.gair_lambda).to(logits.device)
    return (F.cross_entropy(logits, y, reduction="none") * w).mean(), logits


REGULARISED = ("trades", "thrm")  # the trainers whose λ weighs a KL term over natural training


def natural_at(lam: float) -> bool:
    """THE rule "λ = 0 is natural training", decided here only: a ``REGULARISED`` trainer at this λ trains exactly
    as natural training does (its loss below skips the inner attack, so no random number is drawn for it), and a
    grid plans such a trial once, as natural training (``hyporay.engine.definition.canonical``)."""
    return lam == 0


def _regularised(objective: str, model, x, y, ctx):
    """CE(p(x), y) + λ·KL(p(x) || p(x')), x' from the inner attack ``objective``."""
    if natural_at(ctx.lam):
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
                               "randnoise": randnoise, "fat": fat, "gairat": gairat}
#: how many inner-attack passes each loss spends per batch (for cost models): 0 or the attack's steps (FAT: at most)
ATTACKS_PER_BATCH = {"natural": 0, "pgd_at": 1, "trades": 1, "thrm": 1, "randnoise": 0, "fat": 1, "gairat": 1}
