"""``run_audit``: every check on one model and its test examples, in report order."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

from torch import Tensor, nn

from hyporay import metrics as M
from hyporay.attacks import AttackSpec
from hyporay.audit import attack_checks as A
from hyporay.audit import model_checks as C
from hyporay.audit.smuggling import check_smuggling
from hyporay.audit.auditor import Auditor, model_state
from hyporay.audit.report import CHECK_RESTARTS, CHECK_STEPS, CHECKS, AuditReport, CheckResult
from hyporay.audit.tolerances import DEFAULT_EPS_MULTIPLES, DEFAULT_RESTARTS_GRID, DEFAULT_STEPS_GRID, Tolerances


def check_settings(*, eps_multiples: Sequence[float] = DEFAULT_EPS_MULTIPLES,
                   steps_grid: Sequence[int] = DEFAULT_STEPS_GRID, restarts_grid: Sequence[int] = DEFAULT_RESTARTS_GRID,
                   batch_size: int = 512, n_single: int = 64, certify: str | Callable | None = "crown-ibp",
                   **_ignored) -> None:
    """Validate ``run_audit``'s settings (before any expensive work); ``ValueError`` naming the setting."""
    for name, grid in (("eps_multiples", eps_multiples), ("steps_grid", steps_grid),
                       ("restarts_grid", restarts_grid)):
        grid = list(grid)
        if not grid or any(not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0) for v in grid) \
                or grid != sorted(grid):
            raise ValueError(f"{name}: must be a non-empty ascending list of numbers >= 0, got {grid}")
    for name, grid in (("steps_grid", steps_grid), ("restarts_grid", restarts_grid)):
        if any(int(v) != v or v < 1 for v in grid):
            raise ValueError(f"{name}: values must be integers >= 1, got {list(grid)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if n_single < 0:
        raise ValueError(f"n_single: must be >= 0, got {n_single}")
    from hyporay.certify import METHODS as CERTIFY_METHODS

    if isinstance(certify, str) and certify not in ("none", *CERTIFY_METHODS):
        raise ValueError(f"certify: unknown {certify!r}; known: none, {', '.join(CERTIFY_METHODS)}")


def run_audit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    spec: AttackSpec,
    surrogate: nn.Module | None,
    tolerances: Tolerances | None = None,
    eps_multiples: Sequence[float] = DEFAULT_EPS_MULTIPLES,
    steps_grid: Sequence[int] = DEFAULT_STEPS_GRID,
    restarts_grid: Sequence[int] = DEFAULT_RESTARTS_GRID,
    batch_size: int = 512,
    n_single: int = 64,
    seed: int = 0,
    transfer_skip_reason: str | None = None,
    log: Callable[[str], None] | None = None,
    certify: str | Callable | None = "crown-ibp",
    fresh: tuple[Tensor, Tensor] | None = None,
    declared: tuple[Tensor, Tensor] | None = None,
    fresh_skip_reason: str = "no fresh split given (--fresh FILE)",
) -> AuditReport:
    """Audit the evaluation of ``model`` under ``spec`` on (x, y); returns every check as a row.

    Args:
        model: classifier, N x C x H x W inputs in [0,1] -> N x K logits (normalisation inside). Its
            parameters, buffers and train/eval flags must be left exactly as found (checked).
        x: test inputs in [0,1], float, N x C x H x W, on the model's device. y: int64 labels, shape N.
        spec: the evaluation attack being audited (norm, eps in pixel units, steps, step, restarts, start).
        surrogate: an independently trained model on the same data (another seed or architecture) whose
            adversarial/hypocritical examples are transferred to ``model``; None skips the transfer check
            (verdict "skipped", reason ``transfer_skip_reason``).
        tolerances: ``Tolerances()`` by default (documented there).
        eps_multiples: the accuracy-vs-eps curve at eps x multiple (step size scaled alike), ascending;
            the largest should be "huge" (default up to 16 x eps).
        steps_grid: convergence in steps (1 restart), ascending (default 1, 10, 100, 1000).
        restarts_grid: convergence in restarts (the spec's steps), ascending (default 1, 5, 10).
        batch_size: examples per attack batch (also the reference batch of the batch-independence check).
        n_single: examples evaluated alone in the batch-independence check.
        seed: seed of every attack's random start (each setting starts from the same draws).
        log: called with one line per finished check group (progress).
        certify: the certifier of the ``certified_bound`` check: "ibp", "crown-ibp" (default: CROWN bounds at the
            cost of a few forward passes), "crown" (tighter; slow on conv nets), "none" (skip), or a callable
            ``(model, x, y, eps, norm) -> hyporay.certify.Certificate``.
        fresh: (x, y) of a fresh split from the test distribution, never seen by the model's author: runs the
            ``smuggling_gap`` check (declared minus fresh accuracy, one-sided z test at ``tolerances.smuggling``);
            None skips it (reason ``fresh_skip_reason``). declared: the declared test split it is compared with
            (default: the audited x, y). Either may be uint8 or float in [0, 1], on the model's device.

    Returns:
        ``AuditReport``: rows in ``CHECKS`` order, the hyporay.metrics of ``spec``, settings and tolerances.
    """
    tol = tolerances or Tolerances()
    check_settings(eps_multiples=eps_multiples, steps_grid=steps_grid, restarts_grid=restarts_grid,
                   batch_size=batch_size, n_single=n_single, certify=certify)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"x, y: need the same non-zero number of examples, got {len(x)} and {len(y)}")
    start = time.perf_counter()
    say = log or (lambda _msg: None)
    before = model_state(model)
    a = Auditor(model, x.detach(), y, batch_size, seed)
    k = int(a.clean_logits.shape[1])
    rows: dict[str, CheckResult] = {}

    def add(results):
        for r in results if isinstance(results, list) else [results]:
            rows[r.check] = r
            say(f"  {r.check:<34s} {r.verdict:<7s} {r.figure}")

    add(C.check_degenerate(a))
    add(C.check_batch(a, n_single, tol.batch_logit))
    add(A.check_eps0(a, spec))
    add(C.check_gradients(a, spec, tol.gradient))
    metrics = M.evaluate(model, [(a.x[s], a.y[s]) for s in a.chunks()], spec, generator=a.generator())
    add(C.check_theorems(metrics, tol.identity))
    add(A.check_fgsm(a, spec, tol.fgsm))
    add(A.check_transfer(a, spec, surrogate, tol.transfer, transfer_skip_reason))
    add(A.check_curves(a, spec, list(eps_multiples), k, tol))
    add(A.check_grid(a, CHECK_STEPS, "steps",
                    [(int(s), replace(spec, steps=int(s), restarts=1)) for s in steps_grid], tol.convergence))
    add(A.check_grid(a, CHECK_RESTARTS, "restarts",
                    [(int(r), replace(spec, restarts=int(r))) for r in restarts_grid], tol.convergence))
    add(A.check_apgd(a, spec, tol.apgd))
    add(A.check_certified(a, spec, certify, tol.certified))
    add(check_smuggling(model, declared if declared is not None else (a.x, a.y), fresh, alpha=tol.smuggling,
                        skip_reason=fresh_skip_reason, batch_size=batch_size))
    add(C.check_state(model, before, model_state(model)))
    settings = {"certify": certify if isinstance(certify, str) or certify is None else "custom",
                "eps_multiples": list(eps_multiples), "steps_grid": [int(s) for s in steps_grid],
                "restarts_grid": [int(r) for r in restarts_grid], "batch_size": batch_size, "n_single": n_single,
                "seed": seed, "transfer": surrogate is not None, "fresh": fresh is not None}
    return AuditReport(rows=[rows[c] for c in CHECKS], spec=spec.as_dict(), tolerances=asdict(tol),
                       settings=settings, metrics=metrics, n_examples=len(x), num_classes=k,
                       seconds=time.perf_counter() - start)
