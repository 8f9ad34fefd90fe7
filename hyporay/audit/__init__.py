"""Trustworthy evaluation: the evaluation checkpoints of a robustness number, run as automatic checks.

A robustness or hypocritical-risk number is only as good as the attack behind it (seed 002 lists how
published defences were "robust" only against weak evaluations). ``run_audit`` attacks a model on a batch
of test examples in many ways and turns each checkpoint into a row ``(check, figure, verdict, reason)``;
the verdict is ``pass``, ``flag`` (the number should not be trusted: the reason says why) or ``skipped``
(only when a check was switched off by the caller, e.g. no surrogate for the transfer check).

Checks (names in ``CHECKS``; every figure is measured on the audited examples, never assumed):

- ``model_degenerate``: the model's clean logits are finite and depend on the input. A diverged net (NaN
  weights, or every ReLU dead so it outputs its last bias) is trivially "robust" and "unconcealable": every
  number below would be meaningless (``hyporay.metrics`` reports them as NaN).
- ``eps0_clean``: PGD with eps = 0 (adversarial and hypocritical, and ``hyporay.metrics.evaluate``) gives
  exactly the clean predictions and accuracies.
- ``batch_independence``: eval-mode logits of each example alone and in shuffled batches of another size
  equal those in the reference batches (max abs logit difference). Flags BatchNorm in train mode, an
  attack that ignores ``eval()``, batch-statistics layers.
- ``state_unchanged``: parameters, buffers (BatchNorm running statistics) and train/eval flags are
  identical before and after the whole audit (an attack run in train mode updates running statistics).
- ``curve/adversarial``, ``curve/hypocritical``: accuracy vs eps (``eps_multiples`` x the spec's eps, step
  scaled alike, best iterate kept so a coarse step at a huge eps cannot overshoot): adversarial accuracy
  non-increasing and at chance (1/K) or below at the largest eps;
  hypocritical accuracy non-decreasing and reaching 100% at the largest eps.
- ``convergence_steps/*``, ``convergence_restarts/*``: the attack with ``steps_grid`` steps (1 restart)
  and ``restarts_grid`` restarts (the spec's steps): the figure at the last two settings within a
  tolerance (else "not converged"), and more steps/restarts never help the model beyond the tolerance.
- ``pgd_vs_fgsm/*``: the spec's PGD is never weaker than a single step of size eps (FGSM / FGM).
- ``transfer/*``: examples crafted (same spec) on an independently trained surrogate must not beat the
  white-box attack: transfer accuracy >= white-box accuracy - tol (adversarial), transfer hypocritical
  accuracy <= white-box hypocritical accuracy + tol.
- ``gradient_health``: share of inputs (the clean points and one random point of the eps-ball each) whose
  CE input gradient is all zero or holds a NaN/Inf.
- ``theorem_4_4``: R_hyp(D) = 1 - (1 - R_hyp(D-)) R_nat on ``hyporay.metrics.evaluate``'s metrics.
- ``theorem_4_5``: R_sta(D) = (1 - R_nat) R_adv(D+) + R_nat R_sta(D-) and R_sta(D-) >= R_hyp(D-).
- ``apgd_vs_pgd/*``: the other method (APGD when the spec is PGD, PGD when it is APGD; same eps, steps,
  restarts, score) must not find more adversarial examples / conceal more mistakes than the audited attack
  beyond the tolerance: else PGD missed them (report APGD) or APGD is weaker than PGD (broken).
- ``smuggling_gap``: only with a fresh split (``hyporay audit --fresh FILE``): the declared test split's accuracy
  minus the fresh split's, flagged when a one-sided z test puts it beyond the noise of drawing the splits
  (``hyporay.audit.smuggling``; 004's smuggled training sets). Skipped without a fresh split.
- ``certified_bound/*``: attack lower bound <= certified upper bound, per example: no misclassified point
  certified unconcealable (``hyporay.certify``, method ``certify``) was concealed, and no point certified
  robust was broken, by ANY attack the audit ran at the spec's eps and norm. Skipped (with the reason) for
  ``certify="none"`` or a model the certifier does not support.

Accuracy figures follow ``hyporay.metrics``' witness rule (the clean point lies in the ball and counts as a
witness): adversarial accuracy A = share with no witness of a mistake; hypocritical accuracy F = share with
some witness of a correct prediction (the hypocritical attack runs on the misclassified examples only). All
accuracy tolerances are absolute, in units of accuracy over the audited examples (one example = 1/N).

Pure PyTorch: no Ray, MLflow or Optuna. ``audit_checkpoint`` runs it on a saved trial (``hyporay audit``).

Layout: ``report`` (rows, report, check names; torch-free), ``tolerances`` (torch-free, for --help), ``auditor``
(the measurements), ``model_checks`` and ``attack_checks`` (one function per check), ``run`` (``run_audit``),
``checkpoint`` (a saved trial, its surrogate).

>>> report = run_audit(model, x, y, spec=AttackSpec(eps=0.1, steps=20), surrogate=other_model,
...                    tolerances=Tolerances(), steps_grid=(1, 10, 100))
>>> print(report.to_text()); report.passed
"""
from __future__ import annotations

import importlib

from hyporay.audit.report import (ADV, CHECK_APGD, CHECK_BATCH, CHECK_CERTIFIED, CHECK_CURVE, CHECK_DEGENERATE,
                                  CHECK_EPS0, CHECK_FGSM, CHECK_GRADIENT, CHECK_RESTARTS, CHECK_SMUGGLING, CHECK_STATE,
                                  CHECK_STEPS, CHECK_THM44, CHECK_THM45, CHECK_TRANSFER, CHECKS, FLAG, HYP, PASS,
                                  SKIPPED, AuditReport, CheckResult)
from hyporay.audit.tolerances import (DEFAULT_EPS_MULTIPLES, DEFAULT_RESTARTS_GRID, DEFAULT_STEPS_GRID,
                                      DEFAULT_SUBSET, Tolerances)

# the torch side loads on first use: ``hyporay --help`` and the report's readers need none of it
_LAZY = {"run_audit": "hyporay.audit.run", "check_settings": "hyporay.audit.run",
         "check_smuggling": "hyporay.audit.smuggling", "gap_statistic": "hyporay.audit.smuggling",
         "audit_checkpoint": "hyporay.audit.checkpoint", "train_surrogate": "hyporay.audit.checkpoint"}

__all__ = ["run_audit", "check_settings", "check_smuggling", "gap_statistic", "audit_checkpoint", "train_surrogate",
           "AuditReport", "CheckResult", "Tolerances", "CHECKS", "PASS", "FLAG", "SKIPPED", "DEFAULT_EPS_MULTIPLES",
           "DEFAULT_STEPS_GRID", "DEFAULT_RESTARTS_GRID", "DEFAULT_SUBSET", "ADV", "HYP", "CHECK_APGD", "CHECK_BATCH",
           "CHECK_CERTIFIED", "CHECK_CURVE", "CHECK_DEGENERATE", "CHECK_EPS0", "CHECK_FGSM", "CHECK_GRADIENT",
           "CHECK_RESTARTS", "CHECK_SMUGGLING", "CHECK_STATE", "CHECK_STEPS", "CHECK_THM44", "CHECK_THM45",
           "CHECK_TRANSFER"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hyporay.audit' has no attribute {name!r}")
