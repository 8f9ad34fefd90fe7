"""The one PGD engine. Every attack in hyporay is ``pgd`` with a threat model and an objective."""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from hyporay.attacks.context import frozen_eval
from hyporay.attacks.objectives import OBJECTIVES, SCORES, Objective, make_objective
from hyporay.attacks.threat import THREAT_MODELS, ThreatModel

RANDOM_STARTS = ("auto", "none", "uniform", "gaussian")
METHODS = ("pgd", "apgd")  # pgd: this module; apgd: hyporay.attacks.apgd (Croce & Hein 2020)

# "auto" start per objective, as the authors run them (reference §3): adversarial PGD starts uniform in
# the ball; the hypocritical (and targeted) attack at x + 0.01·N(0,1) (False-Friends); the TRADES
# stability attack at x + 0.001·N(0,1) (official TRADES; KL has zero gradient at x' = x).
_AUTO_START = {
    "adversarial": ("uniform", None),
    "hypocritical": ("gaussian", 0.01),
    "targeted": ("gaussian", 0.01),
    "stability": ("gaussian", 0.001),
}


# Set by ``inputs_in_range``: the caller guarantees x in [0,1], so ``pgd`` skips its per-call range check.
_RANGE_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("hyporay_pgd_range_checked", default=False)


@contextlib.contextmanager
def inputs_in_range():
    """Within this block ``pgd`` trusts that x lies in [0,1] and skips its per-call check.

    The check reads x's min and max back to the host: on a GPU that stalls the device at every attack call.
    The trainer enters this block for its epoch; its batches come from data it validated once (uint8, or
    float checked in [0,1] per epoch) through crop/flip, which keep the range.
    """
    token = _RANGE_CHECKED.set(True)
    try:
        yield
    finally:
        _RANGE_CHECKED.reset(token)


def _known(names) -> str:
    return ", ".join(sorted(names))


def check_attack_args(
    *, eps: float, step_size: float | None, steps: int, norm: str, objective: str,
    random_start: str | bool | None, sigma: float | None, restarts: int,
) -> str:
    """Validate attack arguments; raise ``ValueError`` naming the argument. Returns the start kind.

    ``step_size=None`` is not checked: the default ε/4 of ``pgd`` and ``AttackSpec``, or APGD's own step."""
    if norm not in THREAT_MODELS:
        raise ValueError(f"norm: unknown {norm!r}; known: {_known(THREAT_MODELS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: unknown {objective!r}; known: {_known(OBJECTIVES)}")
    numbers = [("eps", eps)] if step_size is None else [("eps", eps), ("step_size", step_size)]
    for name, value in numbers:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name}: must be a number >= 0, got {value!r}")
    for name, value in (("steps", steps), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if random_start is True:
        random_start = "auto"
    elif random_start is False or random_start is None:
        random_start = "none"
    if random_start not in RANDOM_STARTS:
        raise ValueError(f"random_start: unknown {random_start!r}; allowed: {', '.join(RANDOM_STARTS)}")
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or sigma < 0):
        raise ValueError(f"sigma: must be a number >= 0, got {sigma!r}")
    return random_start


def _start(x: Tensor, eps: float, threat: ThreatModel, kind: str, sigma: float | None,
           generator: torch.Generator | None) -> Tensor:
    if kind == "none" or eps == 0:
        return x.clone()
    if kind == "uniform":
        x0 = x + threat.uniform(x, eps, generator)
    else:  # gaussian
        dev = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
        x0 = x + noise.mul_(sigma)
    return threat.project(x0, x, eps)


def _better(succ_new: Tensor, score_new: Tensor, succ_old: Tensor, score_old: Tensor) -> Tensor:
    """Per example: success beats failure; among equals the higher objective score wins."""
    return (succ_new & ~succ_old) | ((succ_new == succ_old) & (score_new > score_old))


def prepare_attack(x: Tensor, y: Tensor, objective: str, score: str, target: Tensor | None, kind: str,
                   sigma: float | None) -> tuple[Objective, str, float]:
    """Shared input checks of the attacks (``ValueError`` naming the argument); resolves the "auto" start.

    Returns the objective (with its score), the start kind ("none", "uniform" or "gaussian") and sigma.
    """
    if not torch.is_floating_point(x):
        raise ValueError(f"x: must be a floating-point tensor in [0,1], got dtype {x.dtype}")
    if not _RANGE_CHECKED.get() and x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError("x: values must lie in [0,1] (normalisation belongs inside the model)")
    obj = make_objective(objective, score)
    if obj.needs_target and target is None:
        raise ValueError("target: required for objective 'targeted' (int64 labels, shape N)")
    if target is not None and target.shape != y.shape:
        raise ValueError(f"target: must have the shape of y {tuple(y.shape)}, got {tuple(target.shape)}")
    if kind == "auto":
        kind, auto_sigma = _AUTO_START[objective]
        sigma = sigma if sigma is not None else auto_sigma
    return obj, kind, 0.01 if sigma is None else float(sigma)


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
) -> Tensor:
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
        steps: iterations K >= 1.
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

    Returns:
        x' (detached), same shape/dtype as x, with ||x' - x|| <= eps and x' in [0,1] after every step.

    Example:
        >>> x_hyp = pgd(model, x, y, eps=8/255, step_size=2/255, steps=20, objective="hypocritical")
    """
    kind = check_attack_args(eps=eps, step_size=step_size, steps=steps, norm=norm, objective=objective,
                             random_start=random_start, sigma=sigma, restarts=restarts)
    obj, kind, sigma = prepare_attack(x, y, objective, score, target, kind, sigma)
    threat = THREAT_MODELS[norm]
    eps = float(eps)
    step_size = eps / 4 if step_size is None else float(step_size)
    x = x.detach()
    if eps == 0:
        return x.clone()

    track = best_iterate or restarts > 1
    project = threat.projector(x, eps)
    with frozen_eval(model):
        if objective == "stability":
            with torch.no_grad():
                obj.prepare(model(x))
        best = best_succ = best_score = None
        for _ in range(restarts):
            x_adv = _start(x, eps, threat, kind, sigma, generator)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                logits = model(x_adv)
                score = obj.score(logits, y, target)
                (grad,) = torch.autograd.grad(score.sum(), x_adv)
                x_adv = x_adv.detach()
                if best_iterate:
                    best, best_succ, best_score = _merge(best, best_succ, best_score, x_adv,
                                                         obj.success(logits, y, target), score.detach())
                with torch.no_grad():
                    x_adv = project(threat.step(x_adv, grad, step_size, generator))
            if not track:
                return x_adv
            with torch.no_grad():
                logits = model(x_adv)
                best, best_succ, best_score = _merge(best, best_succ, best_score, x_adv,
                                                     obj.success(logits, y, target),
                                                     obj.score(logits, y, target))
    return best


def _merge(best, best_succ, best_score, x_new, succ_new, score_new):
    if best is None:
        return x_new.clone(), succ_new, score_new
    take = _better(succ_new, score_new, best_succ, best_score)
    shape = (-1,) + (1,) * (x_new.dim() - 1)
    best = torch.where(take.view(shape), x_new, best)
    return best, torch.where(take, succ_new, best_succ), torch.where(take, score_new, best_score)


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf",
         objective: str = "adversarial", target: Tensor | None = None) -> Tensor:
    """Single step of size ε from the clean point (FGSM for l_inf, FGM for l_2), for sanity comparisons."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, norm=norm, objective=objective,
               target=target, random_start="none")


@dataclass(frozen=True)
class AttackSpec:
    """A full threat model + attack configuration: what a robustness number must be reported with.

    ``eps`` and ``step_size`` are in pixel units of [0,1] inputs. ``step_size=None`` means ε/4.
    ``method`` is "pgd" or "apgd" (APGD sets its own step: 2ε, halved at checkpoints; it always keeps the
    best iterate, so ``step_size`` and ``best_iterate`` do not apply). ``score`` is "ce" or "margin" (DLR);
    it applies to the adversarial, hypocritical and targeted attacks, the stability attack always ascends KL.
    """

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    random_start: str = "auto"
    best_iterate: bool = False
    method: str = "pgd"
    score: str = "ce"

    def __post_init__(self) -> None:
        check_attack_args(eps=self.eps, step_size=self.alpha, steps=self.steps, norm=self.norm,
                          objective="adversarial", random_start=self.random_start, sigma=None,
                          restarts=self.restarts)
        if self.method not in METHODS:
            raise ValueError(f"method: unknown {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.score not in SCORES:
            raise ValueError(f"score: unknown {self.score!r}; allowed: {', '.join(SCORES)}")

    @property
    def alpha(self) -> float:
        return self.eps / 4 if self.step_size is None else self.step_size

    def run(self, model: nn.Module, x: Tensor, y: Tensor, objective: str, *, target: Tensor | None = None,
            generator: torch.Generator | None = None) -> Tensor:
        """Attack (x in [0,1], y int64 N) with ``objective``; returns x' in the ball and [0,1]."""
        score = "ce" if objective == "stability" else self.score  # stability: KL whatever the score
        if self.method == "apgd":
            from hyporay.attacks.apgd import apgd

            return apgd(model, x, y, eps=self.eps, steps=self.steps, norm=self.norm, objective=objective,
                        score=score, target=target, random_start=self.random_start, restarts=self.restarts,
                        generator=generator)
        return pgd(model, x, y, eps=self.eps, step_size=self.alpha, steps=self.steps, norm=self.norm,
                   objective=objective, target=target, random_start=self.random_start,
                   restarts=self.restarts, best_iterate=self.best_iterate, generator=generator, score=score)

    def describe(self) -> str:
        """One line with everything a reader needs to judge the number, e.g. for table captions."""
        eps255 = self.eps * 255
        step = "2eps-halving" if self.method == "apgd" else f"{self.alpha:.4g}"
        best = self.best_iterate and self.method == "pgd"
        return (f"{self.norm} eps={self.eps:.4g} ({eps255:.3g}/255) steps={self.steps} "
                f"step={step} restarts={self.restarts} start={self.random_start}"
                + (" best-iterate" if best else "") + f" method={self.method} score={self.score}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["step_size"] = self.alpha
        return d
