"""APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness ..."): step-size-free PGD.

The same threat models (``hyporay.attacks.threat``) and objectives (``hyporay.attacks.objectives``) as
``hyporay.attacks.pgd``; only the iteration differs:

- the step size starts at 2ε and is halved, per example, at checkpoints w_j = ceil(p_j N)
  (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) when (a) the score increased in
  fewer than ρ = 0.75 of the steps since the last checkpoint, or (b) the step was not halved at the last
  checkpoint and the best score has not changed since; a halving restarts the example from its best point
  (its momentum is dropped there);
- a step z = P(x_k + η·d(∇)) (d: sign for l_inf, ∇/||∇||₂ for l_2) is followed by the momentum step
  x_{k+1} = P(x_k + α(z - x_k) + (1 - α)(x_k - x_{k-1})), α = 0.75 (α = 1 on the first step);
- the best iterate is kept per example (success first, then the higher score: the rule of ``pgd``'s
  ``best_iterate``), and restarts keep per example the best of all restarts.

Budget: ``steps`` gradient evaluations and ``steps + 1`` forward passes per restart, exactly what ``pgd``
spends with ``best_iterate=True``, so PGD-K and APGD-K compare at equal cost. No early stop: the score
keeps improving after success (TRADES/THRM training can use the attack too).

>>> from hyporay.attacks.apgd import apgd
>>> x_hyp = apgd(model, x, y, eps=0.1, steps=20, objective="hypocritical", score="margin")
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hyporay.attacks.context import frozen_eval
from hyporay import passes
from hyporay.attacks.common import (Decided, StopRule, Tally, check_active, check_attack_args, check_early_stop,
                                    merge_best, prepare_attack, prepare_clean, start_point, unmoved)
from hyporay.attacks.threat import THREAT_MODELS

#: APGD's constants (paper and authors' code)
P1, P_DECAY, P_MIN = 0.22, 0.03, 0.06
RHO, ALPHA = 0.75, 0.75


def checkpoints(steps: int) -> list[int]:
    """Iteration counts w_j = ceil(p_j · steps), 0 < w_j < steps, at which the step size may be halved."""
    p = [0.0, P1]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - P_DECAY, P_MIN))
    return sorted({w for w in (math.ceil(pj * steps - 1e-9) for pj in p[1:]) if 0 < w < steps})


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    norm: str = "linf",
    objective: str = "adversarial",
    score: str = "ce",
    target: Tensor | None = None,
    random_start: str | bool | None = "auto",
    sigma: float | None = None,
    restarts: int = 1,
    rho: float = RHO,
    momentum: float = ALPHA,
    generator: torch.Generator | None = None,
    early_stop: int | None = None,
    return_result: bool = False,
    active: Tensor | None = None,
    decided: Decided | None = None,
):
    """Auto-PGD inside an ε-ball; returns per example the best point found.

    Args:
        model: classifier mapping N x C x H x W inputs in [0,1] to N x K logits (normalisation inside).
            It runs in eval mode with frozen parameters; every module's train/eval flag and every
            parameter's ``requires_grad`` are restored afterwards; no gradient lands in ``param.grad``.
        x: clean inputs, float, N x ..., values in [0,1].
        y: true labels, int64, shape N.
        eps: radius of the ball in pixel units (e.g. 8/255), >= 0. eps = 0 returns x exactly (a copy).
        steps: iterations N >= 1 (gradient evaluations per restart).
        norm: "linf" or "l2".
        objective: "adversarial", "hypocritical" (toward the TRUE label), "stability" (KL, TRADES) or
            "targeted" (toward ``target``), as in ``hyporay.attacks.pgd``.
        score: "ce" (the objective's loss; KL for stability) or "margin" (DLR; not for stability).
        target: int64 labels, shape N; required by (and only used by) "targeted".
        random_start, sigma: the start, exactly as in ``pgd`` ("auto": uniform in the ball for
            adversarial, x + 0.01·N(0,1) for hypocritical/targeted, x + 0.001·N(0,1) for stability).
        restarts: independent starts; per example the best is kept (success, then score). Restart 1 uses
            the same draws as a single-start run with the same generator, so more restarts never help
            the model.
        rho: share of improving steps below which a checkpoint halves the step (0.75).
        momentum: α of the momentum step (0.75).
        generator: optional ``torch.Generator`` for reproducible random starts.
        early_stop, return_result, active, decided: as in ``pgd``. With early stop the visited points are
            x_0 .. x_N of each restart; an example leaves the batch τ steps after its first successful (or
            ``decided``-accepted) point, which (τ = 0) is returned; where none was, the best visited point.
            Up to its stop an example's iterates are those without early stop (its step size, momentum and
            checkpoints are its own), so τ = 0 succeeds wherever ``early_stop=None`` does.

    Returns:
        x' (detached), same shape/dtype as x, with ||x' - x|| <= eps and x' in [0,1]; or an ``AttackResult``
        holding it (``return_result``).
    """
    kind = check_attack_args(eps=eps, step_size=None, steps=steps, norm=norm, objective=objective,
                             random_start=random_start, sigma=sigma, restarts=restarts)
    for name, value in (("rho", rho), ("momentum", momentum)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")
    tau = check_early_stop(early_stop)
    check_active(active, len(x))
    if tau is None and (active is not None or decided is not None):
        raise ValueError("active, decided: need early_stop (an integer >= 0)")
    obj, kind, sigma = prepare_attack(x, y, objective, score, target, kind, sigma)
    threat = THREAT_MODELS[norm]
    eps = float(eps)
    x = x.detach()
    if eps == 0:
        return unmoved(model, obj, x, y, target, steps, active) if return_result else x.clone()
    marks = set(checkpoints(steps))
    shape = (-1,) + (1,) * (x.dim() - 1)
    rule = None if tau is None else StopRule(x, tau=tau, keep_best=True, steps=steps, active=active,
                                             decided=decided)
    tally = rule.tally if rule is not None else Tally(len(x), x.device) if return_result else None

    def forward(oc, z: Tensor, yc: Tensor, tc: Tensor | None, need_grad: bool):
        z = z.detach().requires_grad_(need_grad)
        logits = model(z)
        return logits.detach(), oc.score(logits, yc, tc), z

    def gradient(s: Tensor, z: Tensor, idx: Tensor | None) -> Tensor:
        (g,) = torch.autograd.grad(s.sum(), z)
        if tally is not None:
            tally.spend(idx, 0, 1)
        else:
            passes.add(backward=len(z))
        return g

    def direction(g: Tensor) -> Tensor:
        # the threat model's unit ascent step from 0: sign(g) for l_inf, g/||g||_2 for l_2
        return threat.step(torch.zeros_like(g), g.clone(), 1.0, generator)

    best = best_succ = best_score = None
    # gradients w.r.t. the input also when the caller is inside torch.no_grad() (a notebook's evaluation)
    with frozen_eval(model), torch.enable_grad():
        if objective == "stability":
            prepare_clean(model, obj, x, active)
        for r in range(restarts):
            # drawn for the whole batch, with or without early stop: an example's start never depends on others
            x_start = start_point(x, eps, threat, kind, sigma, generator)
            idx, xc, x_k, yc, tc, oc = None, x, x_start, y, target, obj
            if rule is not None:
                idx = rule.rows(r)
                if not idx.numel():
                    continue
                xc, x_k, yc, tc, oc = x[idx], x_start[idx], y[idx], None if target is None else target[idx], \
                    obj.subset(idx)
                first = rule.fresh(idx)
            project = threat.projector(xc, eps)
            for k in range(steps + 1):  # the visited point x_k; x_0 is the start
                if k > 0:
                    with torch.no_grad():
                        a = 1.0 if k == 1 else momentum
                        z = project(x_k + eta.view(shape) * direction(grad))
                        x_next = project(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev))
                    x_prev, x_k = x_k, x_next
                need = k < steps
                logits, s, zg = forward(oc, x_k, yc, tc, need)
                f_new, succ = s.detach(), oc.success(logits, yc, tc)
                go = None
                if rule is None:
                    if tally is not None:
                        tally.spend(None, 1, 0)
                        tally.visit(None, succ, k, r)
                    else:
                        passes.add(forward=len(x_k))
                    best, best_succ, best_score = merge_best(best, best_succ, best_score, x_k, succ, f_new)
                else:
                    first, go = rule.visit(idx, first, k, r, not need, x_k, logits, f_new, succ)
                    if not need or not bool(go.any()):
                        break
                grad = gradient(s, zg, idx) if need else None
                if k == 0:
                    f_k = f_new
                    # the point with the highest score so far: where a halving restarts from
                    x_max, f_max, g_max = x_k.clone(), f_k.clone(), grad.clone()
                    eta = torch.full((len(x_k),), 2 * eps, dtype=x.dtype, device=x.device)
                    x_prev = x_k.clone()
                    increases = torch.zeros(len(x_k), dtype=torch.long, device=x.device)
                    last_mark, f_max_at_mark = 0, f_max.clone()
                    halved_at_mark = torch.ones(len(x_k), dtype=torch.bool, device=x.device)
                else:
                    increases += (f_new > f_k).long()
                    f_k = f_new
                    up = f_k > f_max
                    if grad is not None:
                        g_max = torch.where(up.view(shape), grad, g_max)
                    x_max = torch.where(up.view(shape), x_k, x_max)
                    f_max = torch.where(up, f_k, f_max)
                    if k in marks:  # a checkpoint after k iterations
                        span = k - last_mark
                        cond_a = increases.double() < rho * span
                        cond_b = ~halved_at_mark & (f_max <= f_max_at_mark)
                        halve = cond_a | cond_b
                        eta = torch.where(halve, eta / 2, eta)
                        h = halve.view(shape)
                        x_k = torch.where(h, x_max, x_k)
                        x_prev = torch.where(h, x_max, x_prev)  # no momentum into a restart from the best point
                        grad = torch.where(h, g_max, grad)
                        f_k = torch.where(halve, f_max, f_k)
                        halved_at_mark, f_max_at_mark, last_mark = halve, f_max.clone(), k
                        increases.zero_()
                if go is not None and not bool(go.all()):  # early stop: the batch shrinks to who goes on
                    idx, xc, yc, first, x_k, x_prev, f_k, grad, x_max, f_max, g_max, eta, increases, \
                        f_max_at_mark, halved_at_mark = (t[go] for t in (
                            idx, xc, yc, first, x_k, x_prev, f_k, grad, x_max, f_max, g_max, eta, increases,
                            f_max_at_mark, halved_at_mark))
                    tc = None if tc is None else tc[go]
                    oc, project = obj.subset(idx), threat.projector(xc, eps)
    if rule is not None:
        x_out, info = rule.finish()
        return info if return_result else x_out
    return tally.result(best, best_succ, steps) if return_result else best
