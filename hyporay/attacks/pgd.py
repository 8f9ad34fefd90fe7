"""The one PGD engine. Every attack in hyporay is ``pgd`` with a threat model and an objective.

Two rules for how long an example is attacked (``early_stop``):

- ``None`` (the default, and the rule of the paper's code): every example runs every step of every restart.
- an integer τ >= 0: an example stops τ steps after its first successful visited point and leaves the batch
  (the batch shrinks, so later steps cost less); restarts run only on the examples no earlier restart broke.
  τ = 0 is AutoAttack's per-example exit (evaluation); τ >= 1 is FAT's rule (Zhang et al. 2020, training).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hyporay import passes
from hyporay.attacks.common import (AttackResult, Decided, StopRule, Tally, check_active, check_attack_args,
                                    check_early_stop, merge_best, prepare_attack, prepare_clean, start_point,
                                    unmoved)
from hyporay.attacks.context import frozen_eval
from hyporay.attacks.threat import THREAT_MODELS, ThreatModel


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float | None,
    steps: int,
    norm: str = "linf",
    objective: str = "adversarial",
    target: Tensor | None = None,
    random_start: str | bool | None = "auto",
    sigma: float | None = None,
    restarts: int = 1,
    best_iterate: bool = False,
    generator: torch.Generator | None = None,
    score: str = "ce",
    early_stop: int | None = None,
    return_result: bool = False,
    active: Tensor | None = None,
    decided: Decided | None = None,
) -> Tensor | AttackResult:
    """Projected gradient descent/ascent inside an ε-ball; returns the perturbed batch x'.

    Args:
        model: classifier mapping N x C x H x W inputs in [0,1] to N x K logits (normalisation inside).
            It runs in eval mode with frozen parameters during the attack; every module's train/eval
            flag and every parameter's ``requires_grad`` are restored afterwards, and no gradient
            accumulates in ``param.grad``.
        x: clean inputs, float, N x ..., values in [0,1].
        y: true labels, int64, shape N.
        eps: radius of the ball in pixel units (e.g. 8/255), >= 0. eps = 0 returns x exactly.
        step_size: step length α per iteration (pixel units; l_inf: α·sign(∇), l_2: α·∇/||∇||₂); None
            means ε/4, as in ``AttackSpec``.
        steps: iterations K >= 1. The visited points are x_0 (the start) .. x_K (the last iterate).
        norm: "linf" or "l2".
        objective: "adversarial" (ascend CE toward misclassification), "hypocritical" (descend CE toward
            the TRUE label), "stability" (ascend KL(p(x) || p(x')), TRADES), "targeted" (descend CE
            toward ``target``).
        target: int64 labels, shape N; required by (and only used by) "targeted".
        random_start: "auto" (uniform for adversarial, x + σ·N(0,1) with σ = 0.01 for hypocritical and
            targeted, σ = 0.001 for stability), "none", "uniform" (in the ball), "gaussian" (``sigma``).
            True means "auto", False/None mean "none". Every start is projected into the ball and [0,1].
        sigma: standard deviation of a gaussian start (default: the objective's "auto" value, else 0.01).
        restarts: independent starts; per example the successful one is kept (adversarial: wrong
            prediction; hypocritical: right; targeted: the target; stability: prediction changed), ties
            broken by the higher objective score. Restart 1 uses the same draws as a single-start run
            with the same generator, so more restarts never help the model.
        best_iterate: return per example the best iterate seen (same rule) instead of the last one.
        generator: optional ``torch.Generator`` for reproducible random starts.
        score: "ce" (the objective's loss: cross-entropy, KL for stability) or "margin" (DLR margin of
            Croce & Hein 2020; adversarial, hypocritical and targeted only).
        early_stop: None: every example runs all steps of all restarts (returns as described above).
            An integer τ >= 0: success is tested at every visited point x_0 .. x_K; an example stops at
            x_{k+τ}, k its first successful visited point (or at x_K, whichever comes first), and leaves
            the batch; a restart runs only on the examples that no earlier restart made succeed. Returned
            per example:
              - τ = 0: its first successful visited point; where no visited point of any restart
                succeeded, the best visited point over all restarts (higher score);
              - τ >= 1 (FAT): the iterate at which it stopped, x_{k+τ} or x_K, successful or not; where it
                never succeeded, the last iterate x_K (the best visited point with ``best_iterate``),
                restarts merged by score. With one restart, no ``best_iterate``, no ``decided`` and no
                result asked for, the last iterate is returned without a forward there (FAT in training).
            Each step reads which examples are done back to the host (the batch is compacted).
            Until an example's first success its trajectory is the one ``early_stop=None`` takes (same
            start, same steps), so τ = 0 succeeds on every example where ``early_stop=None`` does.
        return_result: return an ``AttackResult`` (x', per-example success, first successful step, restart,
            passes spent) instead of x'. Without early stop this adds one forward on the last iterate
            when nothing else needs it.
        active: with early stop only: a bool mask (shape N) of the examples to attack; the others are returned
            as x and cost nothing. Random starts are still drawn for the whole batch, so an example's
            trajectory (and the generator's state afterwards) does not depend on which others are attacked.
        decided: with early stop only: ``decided(idx, logits) -> bool mask``, called at every visited point of
            the examples ``idx`` (indices into the batch) still in it; an example stops τ steps after the first
            point it accepts (default: the objective's success test). ``first_success`` then records that
            point; where none was accepted, the best visited point is returned (success, then score).

    Returns:
        x' (detached), same shape/dtype as x, with ||x' - x|| <= eps and x' in [0,1] after every step;
        or an ``AttackResult`` holding it (``return_result``).

    Every forward and backward is recorded in ``hyporay.passes`` (image-passes; a backward counts every
    example of the batch it runs through).

    Example:
        >>> x_hyp = pgd(model, x, y, eps=8/255, step_size=2/255, steps=20, objective="hypocritical")
        >>> res = pgd(model, x, y, eps=8/255, step_size=2/255, steps=10, early_stop=0, return_result=True)
        >>> res.kappa   # GAIRAT's κ: steps before the first success, K if none
    """
    kind = check_attack_args(eps=eps, step_size=step_size, steps=steps, norm=norm, objective=objective,
                             random_start=random_start, sigma=sigma, restarts=restarts)
    tau = check_early_stop(early_stop)
    check_active(active, len(x))
    if tau is None and (active is not None or decided is not None):
        raise ValueError("active, decided: need early_stop (an integer >= 0)")
    obj, kind, sigma = prepare_attack(x, y, objective, score, target, kind, sigma)
    threat = THREAT_MODELS[norm]
    eps = float(eps)
    step_size = eps / 4 if step_size is None else float(step_size)
    x = x.detach()
    if eps == 0:
        return unmoved(model, obj, x, y, target, steps, active) if return_result else x.clone()
    kw = dict(threat=threat, eps=eps, step_size=step_size, steps=steps, kind=kind, sigma=sigma, restarts=restarts,
              best_iterate=best_iterate, generator=generator, tau=tau, want=return_result)
    # gradients w.r.t. the input also when the caller is inside torch.no_grad() (a notebook's evaluation)
    with frozen_eval(model), torch.enable_grad():
        if objective == "stability":
            prepare_clean(model, obj, x, active)
        if tau is None:
            x_out, info = _every_step(model, obj, x, y, target, **kw)
        else:
            x_out, info = _stop_early(model, obj, x, y, target, active=active, decided=decided, **kw)
    return info if return_result else x_out


def _every_step(model, obj, x, y, target, *, threat, eps, step_size, steps, kind, sigma, restarts,
                best_iterate, generator, tau, want):  # noqa: ARG001  (tau: None here)
    """``early_stop=None``: all steps of all restarts for every example (the paper's rule)."""
    track = best_iterate or restarts > 1
    project = threat.projector(x, eps)
    tally = Tally(len(x), x.device) if want else None
    best = best_succ = best_score = None
    for r in range(restarts):
        x_adv = start_point(x, eps, threat, kind, sigma, generator)
        for k in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            score = obj.score(logits, y, target)
            (grad,) = torch.autograd.grad(score.sum(), x_adv)
            passes.add(forward=len(x), backward=len(x))
            x_adv = x_adv.detach()
            if want:
                tally.passes += 2
                tally.visit(None, obj.success(logits, y, target), k, r)
            if best_iterate:
                best, best_succ, best_score = merge_best(best, best_succ, best_score, x_adv,
                                                         obj.success(logits, y, target), score.detach())
            with torch.no_grad():
                x_adv = project(threat.step(x_adv, grad, step_size, generator))
        if not track and not want:
            return x_adv, None
        with torch.no_grad():
            logits = model(x_adv)
            passes.add(forward=len(x))
            succ = obj.success(logits, y, target)
            if want:
                tally.passes += 1
                tally.visit(None, succ, steps, r)
            if not track:
                return x_adv, tally.result(x_adv, succ, steps)
            best, best_succ, best_score = merge_best(best, best_succ, best_score, x_adv, succ,
                                                     obj.score(logits, y, target))
    return best, (tally.result(best, best_succ, steps) if want else None)


def _stop_early(model, obj, x, y, target, *, threat, eps, step_size, steps, kind, sigma, restarts,
                best_iterate, generator, tau, want, active, decided):
    """``early_stop=τ``: each example stops τ steps after its first success; the batch shrinks (see ``pgd``)."""
    rule = StopRule(x, tau=tau, keep_best=tau == 0 or best_iterate, steps=steps, active=active, decided=decided)
    # FAT's rule in training: the last iterate is returned whatever it holds, so it needs no forward
    unread_end = tau >= 1 and not best_iterate and restarts == 1 and not want and decided is None
    for r in range(restarts):
        # drawn for the whole batch, as without early stop: an example's start does not depend on the others
        x_start = start_point(x, eps, threat, kind, sigma, generator)
        idx = rule.rows(r)
        if not idx.numel():
            continue
        xc, x_adv, yc = x[idx], x_start[idx], y[idx]
        tc, oc = None if target is None else target[idx], obj.subset(idx)
        project = threat.projector(xc, eps)
        first = rule.fresh(idx)
        for k in range(steps + 1):
            last = k == steps
            if last and unread_end:
                rule.leave(idx, x_adv)
                break
            x_adv.requires_grad_(not last)
            logits = model(x_adv)
            score = oc.score(logits, yc, tc)
            x_now = x_adv.detach()
            first, go = rule.visit(idx, first, k, r, last, x_now, logits.detach(), score.detach(),
                                   oc.success(logits, yc, tc))
            if last or not bool(go.any()):
                break
            (grad,) = torch.autograd.grad(score.sum(), x_adv)
            rule.tally.spend(idx, 0, 1)
            if not bool(go.all()):
                idx, xc, yc, x_now, grad, first = idx[go], xc[go], yc[go], x_now[go], grad[go], first[go]
                tc = None if tc is None else tc[go]
                oc, project = obj.subset(idx), threat.projector(xc, eps)
            with torch.no_grad():
                x_adv = project(threat.step(x_now.clone(), grad, step_size, generator))
    return rule.finish()


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
         objective: str = "adversarial", target: Tensor | None = None) -> Tensor:
    """Single step of size ε from the clean point (FGSM for l_inf, FGM for l_2), for sanity comparisons."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, norm=norm, objective=objective,
               target=target, random_start="none")
