"""What the attack methods (``pgd``, ``apgd``) share: argument checks, random starts, the best-point rule,
the early-stop argument and the per-example result. Public names only: each method imports from here and
never from a sibling method."""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hyporay import passes
from hyporay.attacks.context import frozen_eval
from hyporay.attacks.objectives import OBJECTIVES, Objective, make_objective
from hyporay.attacks.threat import THREAT_MODELS, ThreatModel

RANDOM_STARTS = ("auto", "none", "uniform", "gaussian")

# "auto" start per objective, as the authors run them (reference §3): adversarial PGD starts uniform in
# the ball; the hypocritical (and targeted) attack at x + 0.01·N(0,1) (False-Friends); the TRADES
# stability attack at x + 0.001·N(0,1) (official TRADES; KL has zero gradient at x' = x).
AUTO_START = {
    "adversarial": ("uniform", None),
    "hypocritical": ("gaussian", 0.01),
    "targeted": ("gaussian", 0.01),
    "stability": ("gaussian", 0.001),
}

# Set by ``inputs_in_range``: the caller guarantees x in [0,1], so the attacks skip their per-call range check.
_RANGE_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("hyporay_pgd_range_checked", default=False)


@contextlib.contextmanager
def inputs_in_range():
    """Within this block the attacks trust that x lies in [0,1] and skip their per-call check.

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


def check_early_stop(early_stop) -> int | None:
    """``early_stop``: None (run every step) or an integer τ >= 0; ``ValueError`` naming the field otherwise."""
    if early_stop is None:
        return None
    if isinstance(early_stop, bool) or not isinstance(early_stop, int) or early_stop < 0:
        raise ValueError(f"early_stop: must be null (every step) or an integer >= 0 (steps after the first "
                         f"success), got {early_stop!r}")
    return early_stop


def start_point(x: Tensor, eps: float, threat: ThreatModel, kind: str, sigma: float | None,
                generator: torch.Generator | None) -> Tensor:
    """The attack's first point: x itself ("none"), uniform in the ball, or x + σ·N(0,1); in the ball and [0,1]."""
    if kind == "none" or eps == 0:
        return x.clone()
    if kind == "uniform":
        x0 = x + threat.uniform(x, eps, generator)
    else:  # gaussian
        dev = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
        x0 = x + noise.mul_(sigma)
    return threat.project(x0, x, eps)


def better(succ_new: Tensor, score_new: Tensor, succ_old: Tensor, score_old: Tensor) -> Tensor:
    """Per example: success beats failure; among equals the higher objective score wins."""
    return (succ_new & ~succ_old) | ((succ_new == succ_old) & (score_new > score_old))


def merge_best(best, best_succ, best_score, x_new, succ_new, score_new):
    """Keep per example the better of (best, x_new) by ``better``; ``best=None`` starts from x_new.

    Returns (best, best_succ, best_score)."""
    if best is None:
        return x_new.clone(), succ_new, score_new
    take = better(succ_new, score_new, best_succ, best_score)
    shape = (-1,) + (1,) * (x_new.dim() - 1)
    best = torch.where(take.view(shape), x_new, best)
    return best, torch.where(take, succ_new, best_succ), torch.where(take, score_new, best_score)


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
        kind, auto_sigma = AUTO_START[objective]
        sigma = sigma if sigma is not None else auto_sigma
    return obj, kind, 0.01 if sigma is None else float(sigma)


@dataclass
class AttackResult:
    """What an attack returns with ``return_result=True``; every tensor has one entry per example (shape N).

    Attributes:
        x: the returned points (detached; in the ball and [0,1]), exactly what the attack returns otherwise.
        success: whether the returned point succeeds (the objective's success test, eval mode).
        first_success: the step k of the first successful *visited* point (0 = the start, ``steps`` = the
            last iterate), in the restart where the example first succeeded; -1 when no visited point did.
        restart: the restart (0-based) where the example first succeeded; -1 when it never did.
        passes: image-passes (forward + backward) spent on the example over all restarts, at its visited points;
            the stability objective's one clean forward per example is in ``hyporay.passes`` only.
        steps: the attack's steps K.
    """

    x: Tensor
    success: Tensor
    first_success: Tensor
    restart: Tensor
    passes: Tensor
    steps: int

    @property
    def kappa(self) -> Tensor:
        """GAIRAT's κ: steps taken before the first success (``first_success``), K where it never succeeded
        (or only at the last iterate, which no step follows). Integer tensor, values in 0..K."""
        k = self.first_success.clone()
        k[k < 0] = self.steps
        return k.clamp_(max=self.steps)


class Tally:
    """Per-example bookkeeping behind ``AttackResult``: first successful step, its restart, passes spent."""

    def __init__(self, n: int, device) -> None:
        self.first = torch.full((n,), -1, dtype=torch.long, device=device)
        self.restart = torch.full((n,), -1, dtype=torch.long, device=device)
        self.passes = torch.zeros(n, dtype=torch.long, device=device)

    def visit(self, idx: Tensor | None, succ: Tensor, k: int, r: int) -> None:
        """Record a visited point: step ``k`` of restart ``r`` for examples ``idx`` (None: all) with ``succ``."""
        rows = torch.arange(len(self.first), device=succ.device) if idx is None else idx
        new = rows[succ & (self.first[rows] < 0)]
        self.first[new] = k
        self.restart[new] = r

    def spend(self, idx: Tensor | None, forward: int, backward: int) -> None:
        """Record passes on examples ``idx`` (None: all), here and in ``hyporay.passes``."""
        n = len(self.first) if idx is None else len(idx)
        passes.add(forward=forward * n, backward=backward * n)
        if idx is None:
            self.passes += forward + backward
        else:
            self.passes[idx] += forward + backward

    def result(self, x: Tensor, success: Tensor, steps: int) -> AttackResult:
        return AttackResult(x=x, success=success, first_success=self.first, restart=self.restart,
                            passes=self.passes, steps=steps)


#: ``decided(idx, logits) -> bool mask``: whether the visited points of examples ``idx`` (indices into the batch)
#: with these logits decide them (the attack may stop there); the default is the objective's success test
Decided = Callable[[Tensor, Tensor], Tensor]


def check_active(active: Tensor | None, n: int) -> Tensor | None:
    """``active``: None (every example) or a bool tensor of shape N; ``ValueError`` naming the field otherwise."""
    if active is not None and (active.dtype != torch.bool or tuple(active.shape) != (n,)):
        raise ValueError(f"active: must be a bool tensor of shape ({n},), got {active.dtype} "
                         f"{tuple(active.shape)}")
    return active


def prepare_clean(model, obj: Objective, x: Tensor, active: Tensor | None) -> None:
    """Hand the objective its clean logits (eval mode, no grad), computed for the ``active`` examples only."""
    rows = None if active is None else active.nonzero().flatten()
    with torch.no_grad():
        part = model(x if rows is None else x[rows])
    passes.add(forward=len(part))
    if rows is not None:
        full = part.new_zeros((len(x),) + tuple(part.shape[1:]))
        full[rows] = part
        part = full
    obj.prepare(part)


class StopRule:
    """The per-example early stop both methods share (``early_stop=τ``; see ``pgd``).

    The method calls ``rows(r)`` at each restart for the examples to attack, ``visit`` at every visited point
    of those still in the batch (it returns which continue), and ``finish`` for (x', ``AttackResult``).
    """

    def __init__(self, x: Tensor, *, tau: int, keep_best: bool, steps: int, active: Tensor | None = None,
                 decided: Decided | None = None) -> None:
        n, dev = len(x), x.device
        self.tau, self.keep_best, self.steps, self.decided = tau, keep_best, steps, decided
        self.todo = torch.ones(n, dtype=torch.bool, device=dev) if active is None else active
        self.tally = Tally(n, dev)
        self.out, self.out_succ = x.clone(), torch.zeros(n, dtype=torch.bool, device=dev)
        # where no restart succeeds: the best visited point (keep_best) or the last iterates, higher score
        self.fb, self.fb_score = x.clone(), torch.full((n,), float("-inf"), device=dev)
        self.fb_seen = torch.zeros(n, dtype=torch.bool, device=dev)
        self.fb_succ = torch.zeros(n, dtype=torch.bool, device=dev)
        self.left = torch.zeros(n, dtype=torch.bool, device=dev)  # left at x_K unchecked (``leave``)

    def rows(self, r: int) -> Tensor:
        """The examples restart ``r`` attacks: the active ones no earlier restart decided."""
        return (self.todo & (self.tally.first < 0)).nonzero().flatten()

    def fresh(self, idx: Tensor) -> Tensor:
        return torch.full((len(idx),), -1, dtype=torch.long, device=idx.device)

    def visit(self, idx: Tensor, first: Tensor, k: int, r: int, last: bool, x_now: Tensor, logits: Tensor,
              score: Tensor, succ: Tensor) -> tuple[Tensor, Tensor]:
        """Visited point ``k`` of restart ``r`` of examples ``idx`` (one forward each); returns the updated
        first-decided steps and the mask of examples that go on."""
        decided = succ if self.decided is None else self.decided(idx, logits)
        self.tally.spend(idx, 1, 0)
        self.tally.visit(idx, decided, k, r)
        first = torch.where(decided & (first < 0), torch.full_like(first, k), first)
        if self.keep_best or last:
            miss = first < 0
            self._fallback(idx[miss], x_now[miss], score[miss], succ[miss])
        stop = torch.ones_like(decided) if last else (first >= 0) & (k - first >= self.tau)
        done = stop & (first >= 0)
        rows = idx[done]
        self.out[rows], self.out_succ[rows] = x_now[done], succ[done]
        return first, ~stop

    def leave(self, idx: Tensor, x_now: Tensor) -> None:
        """Examples ``idx`` leave at their last iterate without a forward there (its success is not read): where
        nothing but that point would be returned (FAT's rule, one restart, no result asked for)."""
        self.out[idx] = x_now
        self.left[idx] = True

    def _fallback(self, idx: Tensor, z: Tensor, s: Tensor, succ: Tensor) -> None:
        s = s.to(self.fb_score.dtype)
        take = ~self.fb_seen[idx] | better(succ, s, self.fb_succ[idx], self.fb_score[idx])
        rows = idx[take]
        self.fb[rows], self.fb_score[rows], self.fb_succ[rows] = z[take], s[take], succ[take]
        self.fb_seen[rows] = True

    def finish(self) -> tuple[Tensor, AttackResult]:
        never = self.todo & (self.tally.first < 0) & ~self.left
        self.out[never], self.out_succ[never] = self.fb[never], self.fb_succ[never]
        return self.out, self.tally.result(self.out, self.out_succ, self.steps)


def unmoved(model, obj: Objective, x: Tensor, y: Tensor, target: Tensor | None, steps: int,
             active: Tensor | None) -> AttackResult:
    """``return_result`` at eps = 0: x itself, with its success read from one forward (of the active examples)."""
    tally = Tally(len(x), x.device)
    rows = torch.arange(len(x), device=x.device) if active is None else active.nonzero().flatten()
    succ = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    with frozen_eval(model), torch.no_grad():
        logits = model(x[rows])
        tally.spend(rows, 1, 0)
        if obj.name == "stability":
            obj.prepare(logits)
        succ[rows] = obj.success(logits, y[rows], None if target is None else target[rows])
    tally.visit(rows, succ[rows], 0, 0)
    return tally.result(x.clone(), succ, steps)


def skip_starts(x: Tensor, *, eps: float, norm: str, objective: str, random_start: str | bool | None,
                restarts: int, generator: torch.Generator | None, sigma: float | None = None) -> None:
    """Advance ``generator`` exactly as ``pgd`` or ``apgd`` on the batch ``x`` with these settings would: each
    draws one start per restart for the whole batch, and nothing else (no model call, no pass)."""
    kind = check_attack_args(eps=eps, step_size=None, steps=1, norm=norm, objective=objective,
                             random_start=random_start, sigma=sigma, restarts=restarts)
    if kind == "auto":
        kind, auto_sigma = AUTO_START[objective]
        sigma = sigma if sigma is not None else auto_sigma
    sigma = 0.01 if sigma is None else float(sigma)
    for _ in range(restarts):
        start_point(x, float(eps), THREAT_MODELS[norm], kind, sigma, generator)
