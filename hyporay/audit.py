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
- ``certified_bound/*``: attack lower bound <= certified upper bound, per example: no misclassified point
  certified unconcealable (``hyporay.certify``, method ``certify``) was concealed, and no point certified
  robust was broken, by ANY attack the audit ran at the spec's eps and norm. Skipped (with the reason) for
  ``certify="none"`` or a model the certifier does not support.

Accuracy figures follow ``hyporay.metrics``' witness rule (the clean point lies in the ball and counts as a
witness): adversarial accuracy A = share with no witness of a mistake; hypocritical accuracy F = share with
some witness of a correct prediction (the hypocritical attack runs on the misclassified examples only). All
accuracy tolerances are absolute, in units of accuracy over the audited examples (one example = 1/N).

Pure PyTorch: no Ray, MLflow or Optuna. ``hyporay.experiment.audit_checkpoint`` runs it on a saved trial.

>>> report = run_audit(model, x, y, spec=AttackSpec(eps=0.1, steps=20), surrogate=other_model,
...                    tolerances=Tolerances(), steps_grid=(1, 10, 100))
>>> print(report.to_text()); report.passed
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyporay import metrics as M
from hyporay.attacks import THREAT_MODELS, AttackSpec, fgsm, frozen_eval
from hyporay.audit_tolerances import (DEFAULT_EPS_MULTIPLES, DEFAULT_RESTARTS_GRID, DEFAULT_STEPS_GRID,
                                      DEFAULT_SUBSET, Tolerances)

__all__ = ["run_audit", "check_settings", "AuditReport", "CheckResult", "Tolerances", "CHECKS", "PASS", "FLAG",
           "SKIPPED",
           "DEFAULT_EPS_MULTIPLES", "DEFAULT_STEPS_GRID", "DEFAULT_RESTARTS_GRID", "DEFAULT_SUBSET"]

PASS, FLAG, SKIPPED = "pass", "flag", "skipped"

CHECK_DEGENERATE = "model_degenerate"
CHECK_EPS0 = "eps0_clean"
CHECK_BATCH = "batch_independence"
CHECK_STATE = "state_unchanged"
CHECK_CURVE = "curve"
CHECK_STEPS = "convergence_steps"
CHECK_RESTARTS = "convergence_restarts"
CHECK_FGSM = "pgd_vs_fgsm"
CHECK_TRANSFER = "transfer"
CHECK_GRADIENT = "gradient_health"
CHECK_THM44 = "theorem_4_4"
CHECK_THM45 = "theorem_4_5"
CHECK_APGD = "apgd_vs_pgd"
CHECK_CERTIFIED = "certified_bound"
ADV, HYP = "adversarial", "hypocritical"

#: every row of a report, in order (``<check>/<direction>`` for the checks run in both directions)
CHECKS = (CHECK_EPS0, CHECK_BATCH, f"{CHECK_CURVE}/{ADV}", f"{CHECK_CURVE}/{HYP}", f"{CHECK_STEPS}/{ADV}",
          f"{CHECK_STEPS}/{HYP}", f"{CHECK_RESTARTS}/{ADV}", f"{CHECK_RESTARTS}/{HYP}", f"{CHECK_FGSM}/{ADV}",
          f"{CHECK_FGSM}/{HYP}", f"{CHECK_TRANSFER}/{ADV}", f"{CHECK_TRANSFER}/{HYP}", CHECK_GRADIENT,
          CHECK_THM44, CHECK_THM45, f"{CHECK_APGD}/{ADV}", f"{CHECK_APGD}/{HYP}", f"{CHECK_CERTIFIED}/{HYP}",
          f"{CHECK_CERTIFIED}/{ADV}", CHECK_STATE, CHECK_DEGENERATE)

@dataclass
class CheckResult:
    """One row of the audit: ``figure`` is a short human-readable summary, ``data`` every number behind it."""

    check: str
    figure: str
    verdict: str
    reason: str
    data: dict = field(default_factory=dict)


@dataclass
class AuditReport:
    """The audit of one model: rows in ``CHECKS`` order plus the settings they were measured with."""

    rows: list[CheckResult]
    spec: dict
    tolerances: dict
    settings: dict
    metrics: dict
    n_examples: int
    num_classes: int
    seconds: float = 0.0

    @property
    def flagged(self) -> list[CheckResult]:
        return [r for r in self.rows if r.verdict == FLAG]

    @property
    def passed(self) -> bool:
        return not self.flagged

    @property
    def verdict(self) -> str:
        return PASS if self.passed else FLAG

    def row(self, check: str) -> CheckResult:
        for r in self.rows:
            if r.check == check:
                return r
        raise KeyError(f"check: unknown {check!r}; known: {', '.join(r.check for r in self.rows)}")

    def summary_line(self) -> str:
        """``audit: pass`` or ``audit: flag (N checks)``."""
        n = len(self.flagged)
        return "audit: pass" if not n else f"audit: flag ({n} check{'s' if n != 1 else ''})"

    def to_dict(self) -> dict:
        return _finite({"verdict": self.verdict, "n_flagged": len(self.flagged), "n_examples": self.n_examples,
                        "num_classes": self.num_classes, "spec": self.spec, "tolerances": self.tolerances,
                        "settings": self.settings, "metrics": self.metrics, "seconds": self.seconds,
                        "checks": [asdict(r) for r in self.rows]})

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (non-finite numbers as null) with every figure, curves and grids included."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def _cells(self) -> list[tuple[str, str, str]]:
        return [(r.check, r.figure, r.verdict + (f": {r.reason}" if r.reason else "")) for r in self.rows]

    def header(self) -> str:
        return (f"audit of {self.n_examples} examples, K={self.num_classes}, attack: "
                f"{AttackSpec(**self.spec).describe()}")

    def to_text(self) -> str:
        """A plain-text table (check, figure, verdict with reason) and the closing summary line."""
        cells = [("check", "figure", "verdict")] + self._cells()
        w0 = max(len(c[0]) for c in cells)
        w1 = max(len(c[1]) for c in cells)
        lines = [self.header(), ""]
        for i, (a, b, c) in enumerate(cells):
            lines.append(f"{a:<{w0}s}  {b:<{w1}s}  {c}")
            if i == 0:
                lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * 7}")
        lines += ["", self.summary_line()]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = [f"**{esc(self.header())}**", "", "| check | figure | verdict | reason |", "|---|---|---|---|"]
        lines += [f"| {esc(r.check)} | {esc(r.figure)} | {r.verdict} | {esc(r.reason)} |" for r in self.rows]
        lines += ["", f"**{self.summary_line()}**", ""]
        return "\n".join(lines)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, Tensor):
        return _finite(obj.tolist())
    return obj


# --- measurements --------------------------------------------------------------------------------------

@dataclass
class _Outcome:
    """Per-example outcomes of one white-box setting (bool tensors on CPU)."""

    adv_success: Tensor   # a witness with f(x') != y (the clean point included)
    hyp_success: Tensor   # a witness with f(x') == y (the clean point included)

    @property
    def acc_adv(self) -> float:
        return 1.0 - M._mean(self.adv_success)

    @property
    def acc_hyp(self) -> float:
        return M._mean(self.hyp_success)

    def rates(self, correct: Tensor) -> dict:
        """R_adv(D+) and R_hyp(D-) (exact subsets; NaN when empty) beside the accuracies."""
        correct = correct.cpu()
        return {"acc_adv": self.acc_adv, "acc_hyp": self.acc_hyp, "adversarial_risk_correct":
                M._mean(self.adv_success, correct), "hypocritical_risk": M._mean(self.hyp_success, ~correct)}


class _Auditor:
    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int, seed: int):
        self.model, self.x, self.y, self.bs, self.seed = model, x, y, batch_size, seed
        self.cache: dict[tuple, _Outcome] = {}
        self.clean_logits = self.logits(model, x)
        self.clean_pred = self.clean_logits.argmax(1)
        self.correct = self.clean_pred == y.to(self.clean_pred.device)

    def chunks(self, n: int | None = None):
        n = len(self.x) if n is None else n
        for i in range(0, n, self.bs):
            yield slice(i, min(i + self.bs, n))

    @torch.no_grad()
    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        with frozen_eval(model):
            return torch.cat([model(x[s]) for s in self.chunks(len(x))]).float()

    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        return self.logits(model, x).argmax(1)

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.x.device).manual_seed(self.seed)

    def craft(self, model: nn.Module, spec: AttackSpec, objective: str, idx: Tensor | None = None,
              single_step: bool = False) -> Tensor:
        """Attack ``model`` (all examples or those in ``idx``), batch by batch, one seeded generator."""
        x, y = (self.x, self.y) if idx is None else (self.x[idx], self.y[idx])
        gen = self.generator()
        out = []
        for s in self.chunks(len(x)):
            if single_step:
                out.append(fgsm(model, x[s], y[s], eps=spec.eps, norm=spec.norm, objective=objective))
            else:
                out.append(spec.run(model, x[s], y[s], objective, generator=gen))
        return torch.cat(out) if out else x.clone()

    def outcome(self, spec: AttackSpec, *, single_step: bool = False, source: nn.Module | None = None
                ) -> _Outcome:
        """Adversarial attack on every example, hypocritical attack on the misclassified ones, crafted on
        ``source`` (default: the audited model, white-box) and judged by the audited model."""
        key = (spec, single_step, id(source))
        if key in self.cache:
            return self.cache[key]
        src = self.model if source is None else source
        x_adv = self.craft(src, spec, ADV, single_step=single_step)
        adv_success = (self.predict(self.model, x_adv) != self.y) | ~self.correct
        hyp_success = self.correct.clone()
        wrong = (~self.correct).nonzero().flatten()
        if wrong.numel():
            x_hyp = self.craft(src, spec, HYP, wrong, single_step=single_step)
            hyp_success[wrong] = self.predict(self.model, x_hyp) == self.y[wrong]
        out = _Outcome(adv_success.cpu(), hyp_success.cpu())
        self.cache[key] = out
        return out


def _state(model: nn.Module) -> tuple[dict, list[bool], list[bool]]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def _fmt(v: float, digits: int = 3) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _scaled(spec: AttackSpec, mult: float) -> AttackSpec:
    return replace(spec, eps=spec.eps * mult, step_size=spec.alpha * mult)


# --- the checks ----------------------------------------------------------------------------------------

def _check_eps0(a: _Auditor, spec: AttackSpec) -> CheckResult:
    spec0 = replace(spec, eps=0.0)
    x_adv = a.craft(a.model, spec0, ADV)
    wrong = (~a.correct).nonzero().flatten()
    x_hyp = a.craft(a.model, spec0, HYP, wrong)
    moved = max(float((x_adv - a.x).abs().max()) if len(a.x) else 0.0,
                float((x_hyp - a.x[wrong]).abs().max()) if wrong.numel() else 0.0)
    diff_adv = int((a.predict(a.model, x_adv) != a.clean_pred).sum())
    diff_hyp = int((a.predict(a.model, x_hyp) != a.clean_pred[wrong]).sum()) if wrong.numel() else 0
    m = M.evaluate(a.model, [(a.x[s], a.y[s]) for s in a.chunks()], spec0, generator=a.generator())
    acc_clean = M._mean(a.correct)
    gaps = {"acc_adv": m[M.ACC_ADV] - m[M.ACC_CLEAN], "acc_hyp": m[M.ACC_HYP] - m[M.ACC_CLEAN],
            "acc_clean": m[M.ACC_CLEAN] - acc_clean}
    data = {"changed_predictions_adversarial": diff_adv, "changed_predictions_hypocritical": diff_hyp,
            "max_abs_perturbation": moved, "acc_clean": acc_clean, "evaluate_eps0": m, "gaps": gaps}
    bad = []
    if moved != 0.0:
        bad.append(f"inputs moved by {moved:.3g}")
    if diff_adv or diff_hyp:
        bad.append(f"{diff_adv + diff_hyp} predictions changed")
    if any(g != 0 for g in gaps.values()):
        bad.append("evaluate(eps=0): " + ", ".join(f"{k} off by {v:+.4f}" for k, v in gaps.items() if v != 0))
    figure = f"{diff_adv + diff_hyp} changed, A=F=D={_fmt(acc_clean)}" if not bad else \
        f"{diff_adv + diff_hyp} changed, D={_fmt(m[M.ACC_CLEAN])} A={_fmt(m[M.ACC_ADV])} F={_fmt(m[M.ACC_HYP])}"
    return CheckResult(CHECK_EPS0, figure, FLAG if bad else PASS,
                       "; ".join(bad) if bad else "eps=0 gives exactly the clean predictions", data)


def _check_degenerate(a: _Auditor) -> CheckResult:
    nonfinite, constant = M.degeneracy(a.clean_logits)
    classes = int(len(torch.unique(a.clean_pred)))
    data = {"nonfinite_logits": nonfinite, "input_independent": constant, "predicted_classes": classes}
    if nonfinite:
        return CheckResult(CHECK_DEGENERATE, f"{nonfinite} non-finite", FLAG,
                           f"clean logits hold NaN/inf on {nonfinite} examples: no risk of this model means anything",
                           data)
    if constant:
        return CheckResult(CHECK_DEGENERATE, "constant function", FLAG,
                           "the logits do not depend on the input (a constant model is trivially robust and "
                           "unconcealable): no risk of this model means anything", data)
    return CheckResult(CHECK_DEGENERATE, f"{classes} classes predicted", PASS,
                       "finite logits that depend on the input", data)


def _check_batch(a: _Auditor, n_single: int, tol: float) -> CheckResult:
    ref = a.clean_logits
    n = len(a.x)
    data: dict = {"reference_batch_size": a.bs, "n_single": min(n_single, n), "max_abs_logit": float(ref.abs().max())}
    try:
        with torch.no_grad(), frozen_eval(a.model):
            singles = torch.cat([a.model(a.x[i:i + 1]).float() for i in range(min(n_single, n))])
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed)).to(a.x.device)
            odd = max(2, min(a.bs, n) // 3) | 1  # another batch size (odd), other neighbours
            shuffled = torch.empty_like(ref)
            for i in range(0, n, odd):
                idx = perm[i:i + odd]
                shuffled[idx] = a.model(a.x[idx]).float()
    except (RuntimeError, ValueError) as exc:
        msg = str(exc).splitlines()[0][:120]
        data["error"] = msg
        return CheckResult(CHECK_BATCH, "error", FLAG, f"model fails on a batch of another size: {msg}", data)
    d_single = float((singles - ref[:len(singles)]).abs().max()) if len(singles) else 0.0
    d_shuffled = float((shuffled - ref).abs().max())
    pred_changed = int((shuffled.argmax(1) != a.clean_pred).sum()) + \
        int((singles.argmax(1) != a.clean_pred[:len(singles)]).sum())
    data.update({"max_abs_diff_single": d_single, "max_abs_diff_shuffled": d_shuffled, "shuffled_batch_size": odd,
                 "changed_predictions": pred_changed})
    worst = max(d_single, d_shuffled)
    figure = f"max |dlogit| {worst:.2g} (alone {d_single:.2g}, shuffled {d_shuffled:.2g})"
    if worst > tol:
        return CheckResult(CHECK_BATCH, figure, FLAG,
                           f"eval-mode outputs depend on the rest of the batch ({pred_changed} predictions change; "
                           f"tol {tol:g}): BatchNorm in train mode or batch statistics", data)
    return CheckResult(CHECK_BATCH, figure, PASS, f"within {tol:g}", data)


def _check_state(model: nn.Module, before, after) -> CheckResult:
    (s0, m0, g0), (s1, m1, g1) = before, after
    changed, worst = [], 0.0
    for k, v0 in s0.items():
        v1 = s1.get(k)
        if v1 is None or v1.shape != v0.shape:
            changed.append(k)
            continue
        if torch.is_floating_point(v0):
            d = float((v1.double() - v0.double()).abs().max()) if v0.numel() else 0.0
            if d != 0 or bool(v1.isnan().any() != v0.isnan().any()):
                changed.append(k)
                worst = max(worst, d)
        elif not torch.equal(v0, v1):
            changed.append(k)
            worst = max(worst, float((v1.double() - v0.double()).abs().max()))
    modes = sum(a != b for a, b in zip(m0, m1))
    grads = sum(a != b for a, b in zip(g0, g1))
    data = {"changed_tensors": changed, "max_abs_change": worst, "modules_mode_changed": modes,
            "parameters_requires_grad_changed": grads, "n_tensors": len(s0)}
    figure = f"{len(changed)} tensors changed (max {worst:.3g}), {modes} modes"
    if changed or modes or grads:
        what = ", ".join(changed[:3]) + ("..." if len(changed) > 3 else "")
        reason = (f"the audit's attacks changed the model ({what or 'flags'}): a forward pass ran in train mode "
                  "(BatchNorm running statistics) or an attack does not restore the caller's state")
        return CheckResult(CHECK_STATE, figure, FLAG, reason, data)
    return CheckResult(CHECK_STATE, figure, PASS, "parameters, buffers and train/eval flags identical", data)


def _check_curves(a: _Auditor, spec: AttackSpec, mults: Sequence[float], k: int, tol: Tolerances
                  ) -> list[CheckResult]:
    eps = [spec.eps * m for m in mults]
    # best iterate: at a huge eps the scaled step is coarse and the last iterate can overshoot; the curve
    # asks what the attack can reach with a budget, not where its last step happened to land
    outs = [a.outcome(replace(_scaled(spec, m), best_iterate=True)) for m in mults]
    acc_adv = [o.acc_adv for o in outs]
    acc_hyp = [o.acc_hyp for o in outs]
    chance = 1.0 / k
    rows = []
    # adversarial: non-increasing, at chance or below at the largest eps
    rise = [(acc_adv[i + 1] - acc_adv[i], i) for i in range(len(outs) - 1)]
    worst_rise, at = max(rise, default=(0.0, 0))
    data = {"eps_multiples": list(mults), "eps": eps, "acc_adv": acc_adv, "chance": chance,
            "largest_rise": worst_rise, "best_iterate": True,
            "adversarial_risk_correct": [o.rates(a.correct)["adversarial_risk_correct"] for o in outs]}
    bad = []
    if worst_rise > tol.curve:
        bad.append(f"accuracy rises by {worst_rise:.3f} from eps {eps[at]:.4g} to {eps[at + 1]:.4g}")
    if acc_adv[-1] > chance + tol.chance:
        bad.append(f"at eps {eps[-1]:.4g} accuracy {acc_adv[-1]:.3f} stays above chance {chance:.3f}: the attack "
                   "cannot break the model even with a huge budget (masked gradients?)")
    fig = " ".join(_fmt(v, 2) for v in acc_adv)
    rows.append(CheckResult(f"{CHECK_CURVE}/{ADV}", f"A: {fig}", FLAG if bad else PASS,
                            "; ".join(bad) or f"non-increasing, {acc_adv[-1]:.3f} <= chance {chance:.3f} at eps "
                                             f"{eps[-1]:.4g}", data))
    # hypocritical: non-decreasing, toward 100%
    fall = [(acc_hyp[i] - acc_hyp[i + 1], i) for i in range(len(outs) - 1)]
    worst_fall, at = max(fall, default=(0.0, 0))
    data = {"eps_multiples": list(mults), "eps": eps, "acc_hyp": acc_hyp, "largest_fall": worst_fall,
            "best_iterate": True,
            "hypocritical_risk": [o.rates(a.correct)["hypocritical_risk"] for o in outs]}
    bad = []
    if worst_fall > tol.curve:
        bad.append(f"accuracy falls by {worst_fall:.3f} from eps {eps[at]:.4g} to {eps[at + 1]:.4g}")
    if acc_hyp[-1] < 1.0 - tol.hyp_top:
        bad.append(f"at eps {eps[-1]:.4g} accuracy {acc_hyp[-1]:.3f} does not reach 1 (tol {tol.hyp_top:g}): the "
                   "attack cannot conceal mistakes even with a huge budget (masked gradients?)")
    fig = " ".join(_fmt(v, 2) for v in acc_hyp)
    rows.append(CheckResult(f"{CHECK_CURVE}/{HYP}", f"F: {fig}", FLAG if bad else PASS,
                            "; ".join(bad) or f"non-decreasing, {acc_hyp[-1]:.3f} at eps {eps[-1]:.4g}", data))
    return rows


def _check_grid(a: _Auditor, check: str, kind: str, specs: list[tuple[int, AttackSpec]], tol: float
                ) -> list[CheckResult]:
    values = [v for v, _ in specs]
    outs = [a.outcome(s) for _, s in specs]
    rows = []
    for direction, accs, sign in ((ADV, [o.acc_adv for o in outs], 1.0), (HYP, [o.acc_hyp for o in outs], -1.0)):
        name = f"{check}/{direction}"
        sym = "A" if direction == ADV else "F"
        data = {kind: values, "acc": accs, "figure": "acc_adv" if direction == ADV else "acc_hyp",
                "rates": [o.rates(a.correct) for o in outs]}
        figure = f"{sym}: " + " ".join(f"{v}:{_fmt(acc, 3)}" for v, acc in zip(values, accs))
        if len(values) < 2:
            rows.append(CheckResult(name, figure, SKIPPED, f"needs at least two {kind} settings", data))
            continue
        last_change = abs(accs[-1] - accs[-2])
        # the model's gain from a stronger attack: adversarial accuracy up, hypocritical accuracy down
        gains = [(sign * (accs[i + 1] - accs[i]), i) for i in range(len(accs) - 1)]
        gain, at = max(gains)
        data.update({"last_change": last_change, "largest_model_gain": gain})
        bad = []
        if last_change > tol:
            bad.append(f"not converged: {sym} moves {last_change:.3f} from {values[-2]} to {values[-1]} {kind} "
                       f"(tol {tol:g})")
        if gain > tol:
            bad.append(f"more {kind} ({values[at]} -> {values[at + 1]}) weaken the attack by {gain:.3f}: unstable "
                       "attack or masked gradients")
        rows.append(CheckResult(name, figure, FLAG if bad else PASS,
                                "; ".join(bad) or f"converged: {last_change:.3f} change from {values[-2]} to "
                                                  f"{values[-1]} {kind}", data))
    return rows


def _check_fgsm(a: _Auditor, spec: AttackSpec, tol: float) -> list[CheckResult]:
    pgd_o, fgsm_o = a.outcome(spec), a.outcome(spec, single_step=True)
    rows = []
    gap = pgd_o.acc_adv - fgsm_o.acc_adv  # > 0: PGD weaker
    data = {"acc_adv_pgd": pgd_o.acc_adv, "acc_adv_fgsm": fgsm_o.acc_adv, "pgd_weaker_by": gap}
    fig = f"A: PGD {_fmt(pgd_o.acc_adv)} vs FGSM {_fmt(fgsm_o.acc_adv)}"
    rows.append(CheckResult(f"{CHECK_FGSM}/{ADV}", fig, FLAG if gap > tol else PASS,
                            f"PGD weaker than a single step by {gap:.3f} (tol {tol:g}): iterative attack broken or "
                            "gradients masked" if gap > tol else "PGD at least as strong as FGSM", data))
    gap = fgsm_o.acc_hyp - pgd_o.acc_hyp  # > 0: PGD conceals fewer mistakes
    data = {"acc_hyp_pgd": pgd_o.acc_hyp, "acc_hyp_fgsm": fgsm_o.acc_hyp, "pgd_weaker_by": gap}
    fig = f"F: PGD {_fmt(pgd_o.acc_hyp)} vs FGSM {_fmt(fgsm_o.acc_hyp)}"
    rows.append(CheckResult(f"{CHECK_FGSM}/{HYP}", fig, FLAG if gap > tol else PASS,
                            f"PGD conceals fewer mistakes than a single step by {gap:.3f} (tol {tol:g})"
                            if gap > tol else "PGD at least as strong as FGSM", data))
    return rows


def _check_transfer(a: _Auditor, spec: AttackSpec, surrogate: nn.Module | None, tol: float,
                    skip_reason: str | None) -> list[CheckResult]:
    names = (f"{CHECK_TRANSFER}/{ADV}", f"{CHECK_TRANSFER}/{HYP}")
    if surrogate is None:
        why = skip_reason or "no surrogate model given"
        return [CheckResult(n, "-", SKIPPED, why, {}) for n in names]
    wb, tr = a.outcome(spec), a.outcome(spec, source=surrogate)
    wrong = ~a.correct.cpu()
    sur_acc = float((a.predict(surrogate, a.x) == a.y).float().mean())
    common = {"surrogate_acc_clean": sur_acc}
    rows = []
    gap = wb.acc_adv - tr.acc_adv  # > 0: transfer stronger than white-box
    data = {**common, "acc_adv_whitebox": wb.acc_adv, "acc_adv_transfer": tr.acc_adv, "transfer_stronger_by": gap,
            "success_whitebox_on_correct": M._mean(wb.adv_success, ~wrong),
            "success_transfer_on_correct": M._mean(tr.adv_success, ~wrong)}
    fig = f"A: white-box {_fmt(wb.acc_adv)} vs transfer {_fmt(tr.acc_adv)}"
    rows.append(CheckResult(names[0], fig, FLAG if gap > tol else PASS,
                            f"examples crafted on the surrogate beat the white-box attack by {gap:.3f} (tol {tol:g}): "
                            "gradients masked or white-box attack broken" if gap > tol
                            else "white-box at least as strong as transfer", data))
    gap = tr.acc_hyp - wb.acc_hyp
    data = {**common, "acc_hyp_whitebox": wb.acc_hyp, "acc_hyp_transfer": tr.acc_hyp, "transfer_stronger_by": gap,
            "success_whitebox_on_misclassified": M._mean(wb.hyp_success, wrong),
            "success_transfer_on_misclassified": M._mean(tr.hyp_success, wrong)}
    fig = f"F: white-box {_fmt(wb.acc_hyp)} vs transfer {_fmt(tr.acc_hyp)}"
    rows.append(CheckResult(names[1], fig, FLAG if gap > tol else PASS,
                            f"the surrogate conceals more mistakes than the white-box attack by {gap:.3f} "
                            f"(tol {tol:g})" if gap > tol else "white-box at least as strong as transfer", data))
    return rows


def _check_gradients(a: _Auditor, spec: AttackSpec, tol: float) -> CheckResult:
    threat = THREAT_MODELS[spec.norm]
    gen = a.generator()
    counts = {"clean": [0, 0, 0, 0], "random_start": [0, 0, 0, 0]}  # zero, nan, inf, bad
    mean_norm = {"clean": 0.0, "random_start": 0.0}
    with frozen_eval(a.model):
        for s in a.chunks():
            x = a.x[s]
            starts = {"clean": x, "random_start": threat.project(x + threat.uniform(x, spec.eps, gen), x, spec.eps)}
            for where, xi in starts.items():
                xi = xi.detach().clone().requires_grad_(True)
                loss = F.cross_entropy(a.model(xi).float(), a.y[s], reduction="sum")
                (g,) = torch.autograd.grad(loss, xi)
                g = g.flatten(1)
                zero = (g == 0).all(1)
                nan = g.isnan().any(1)
                inf = g.isinf().any(1)
                c = counts[where]
                c[0] += int(zero.sum()); c[1] += int(nan.sum()); c[2] += int(inf.sum())
                c[3] += int((zero | nan | inf).sum())
                mean_norm[where] += float(g.nan_to_num(0, 0, 0).norm(dim=1).sum())
    n = len(a.x)
    data = {where: {"zero": c[0], "nan": c[1], "inf": c[2], "bad": c[3], "n": n,
                    "mean_grad_l2": mean_norm[where] / max(n, 1)} for where, c in counts.items()}
    bad = sum(c[3] for c in counts.values())
    share = bad / (2 * n) if n else math.nan
    tot = [sum(c[i] for c in counts.values()) for i in range(3)]
    data.update({"share_bad": share, "n_inputs": 2 * n})
    figure = f"{share:.3f} bad (zero {tot[0]}, NaN {tot[1]}, Inf {tot[2]} of {2 * n})"
    if share > tol:
        return CheckResult(CHECK_GRADIENT, figure, FLAG,
                           f"{share:.1%} of inputs have a zero, NaN or Inf input gradient (tol {tol:g}): gradient "
                           "masking (non-differentiable input processing, saturation) makes PGD blind", data)
    return CheckResult(CHECK_GRADIENT, figure, PASS, f"within {tol:g}", data)


def _check_theorems(metrics: dict, tol: float) -> list[CheckResult]:
    r_nat = metrics[M.NATURAL_RISK]
    r_hyp_all, r_hyp_w = metrics[M.HYPOCRITICAL_RISK_ALL], metrics[M.HYPOCRITICAL_RISK]
    r_sta, r_sta_w = metrics[M.STABILITY_RISK], metrics[M.STABILITY_RISK_MISCLASSIFIED]
    r_adv_c = metrics[M.ADVERSARIAL_RISK_CORRECT]
    empty_wrong = metrics[M.N_MISCLASSIFIED] == 0
    empty_right = metrics[M.N_MISCLASSIFIED] == metrics[M.N_EXAMPLES]
    rows = []
    # Theorem 4.4: R_hyp(D) = 1 - (1 - R_hyp(D-)) R_nat  (the product term is 0 when D- is empty)
    rhs = 1.0 - ((1.0 - r_hyp_w) * r_nat if not empty_wrong else 0.0)
    gap = abs(r_hyp_all - rhs)
    data = {"R_hyp(D)": r_hyp_all, "R_hyp(D-)": r_hyp_w, "R_nat": r_nat, "rhs": rhs, "abs_diff": gap}
    ok = gap <= tol
    rows.append(CheckResult(CHECK_THM44, f"|R_hyp(D) - rhs| = {gap:.2g}", PASS if ok else FLAG,
                            f"R_hyp(D) = 1 - (1 - R_hyp(D-)) R_nat = {rhs:.4f}" + (" (D- empty)" if empty_wrong else "")
                            if ok else f"R_hyp(D) {r_hyp_all:.4f} != {rhs:.4f}: metrics inconsistent", data))
    # Theorem 4.5: decomposition of R_sta(D) and R_sta(D-) >= R_hyp(D-)
    term_c = (1.0 - r_nat) * r_adv_c if not empty_right else 0.0
    term_w = r_nat * r_sta_w if not empty_wrong else 0.0
    dec_gap = abs(r_sta - (term_c + term_w))
    margin = r_sta_w - r_hyp_w if not empty_wrong else math.nan
    data = {"R_sta(D)": r_sta, "R_adv(D+)": r_adv_c, "R_sta(D-)": r_sta_w, "R_hyp(D-)": r_hyp_w, "R_nat": r_nat,
            "decomposition_abs_diff": dec_gap, "R_sta(D-) - R_hyp(D-)": margin}
    bad = []
    if dec_gap > tol:
        bad.append(f"R_sta(D) {r_sta:.4f} != (1-R_nat) R_adv(D+) + R_nat R_sta(D-) = {term_c + term_w:.4f}")
    if not empty_wrong and margin < -tol:
        bad.append(f"R_sta(D-) {r_sta_w:.4f} < R_hyp(D-) {r_hyp_w:.4f}")
    fig = f"R_sta(D-) - R_hyp(D-) = {_fmt(margin, 4)}, decomposition {dec_gap:.2g}"
    reason = "; ".join(bad) or ("decomposition holds; D- empty, the inequality is vacuous" if empty_wrong else
                                f"decomposition holds and R_sta(D-) {r_sta_w:.4f} >= R_hyp(D-) {r_hyp_w:.4f}")
    rows.append(CheckResult(CHECK_THM45, fig, FLAG if bad else PASS, reason, data))
    return rows


def _check_apgd(a: _Auditor, spec: AttackSpec, tol: float) -> list[CheckResult]:
    other = replace(spec, method="apgd" if spec.method == "pgd" else "pgd")
    mine, theirs = a.outcome(spec), a.outcome(other)
    me, it = spec.method.upper(), other.method.upper()
    why = (f"the audited PGD missed them: report {it} (or more PGD steps)" if spec.method == "pgd" else
           "the audited APGD is weaker than plain PGD: broken attack or masked gradients")
    rows = []
    for direction, sym, mine_acc, their_acc, sign, what in (
            (ADV, "A", mine.acc_adv, theirs.acc_adv, 1.0, "finds more adversarial examples"),
            (HYP, "F", mine.acc_hyp, theirs.acc_hyp, -1.0, "conceals more mistakes")):
        gap = sign * (mine_acc - their_acc)  # > 0: the other method is stronger
        data = {"method": spec.method, "other": other.method, f"acc_{direction[:3]}_{spec.method}": mine_acc,
                f"acc_{direction[:3]}_{other.method}": their_acc, "other_stronger_by": gap,
                "rates": {spec.method: mine.rates(a.correct), other.method: theirs.rates(a.correct)}}
        fig = f"{sym}: {me} {_fmt(mine_acc)} vs {it} {_fmt(their_acc)}"
        bad = gap > tol
        rows.append(CheckResult(f"{CHECK_APGD}/{direction}", fig, FLAG if bad else PASS,
                                f"{it} {what} than the audited {me} by {gap:.3f} (tol {tol:g}): {why}" if bad
                                else f"{it} {what} by at most {max(gap, 0.0) + 0.0:.3f} (tol {tol:g})", data))
    return rows


def _check_certified(a: _Auditor, spec: AttackSpec, certify, tol: float) -> list[CheckResult]:
    from hyporay.certify import NotCertifiable
    from hyporay.certify import certify as certify_fn

    names = (f"{CHECK_CERTIFIED}/{HYP}", f"{CHECK_CERTIFIED}/{ADV}")
    if certify is None or certify == "none":
        return [CheckResult(n, "-", SKIPPED, "certification switched off (certify none)", {}) for n in names]
    method = certify if isinstance(certify, str) else getattr(certify, "__name__", "custom")
    parts = []
    try:
        for s in a.chunks():
            x, y = a.x[s], a.y[s]
            parts.append(certify_fn(a.model, x, y, eps=spec.eps, norm=spec.norm, method=certify)
                         if isinstance(certify, str) else certify(a.model, x, y, spec.eps, spec.norm))
    except NotCertifiable as exc:
        return [CheckResult(n, "-", SKIPPED, str(exc), {}) for n in names]
    unconcealable = torch.cat([c.unconcealable for c in parts]).cpu()
    robust = torch.cat([c.robust for c in parts]).cpu()
    # every attack the audit ran in this ball (white-box settings, FGSM, transfer) is a witness
    same_ball = [o for (sp, _single, _src), o in a.cache.items() if sp.eps == spec.eps and sp.norm == spec.norm]
    hyp_hit = torch.stack([o.hyp_success for o in same_ball]).any(0)
    adv_hit = torch.stack([o.adv_success for o in same_ball]).any(0)
    correct = a.correct.cpu()
    n = len(correct)
    rows = []
    for name, hit, cert, subset, label, what in (
            (names[0], hyp_hit, unconcealable, ~correct, "R_hyp(D-)", "certified unconcealable but concealed"),
            (names[1], adv_hit, robust, correct, "R_adv(D+)", "certified robust but broken")):
        lower, upper = M._mean(hit, subset), 1.0 - M._mean(cert, subset)
        clash = int((cert & hit).sum())
        data = {"method": method, "attack_lower": lower, "certified_upper": upper, "contradictions": clash,
                "certified": int(cert.sum()), "subset": int(subset.sum()), "attacks_used": len(same_ball)}
        fig = f"{label} in [{_fmt(lower)}, {_fmt(upper)}] ({method})"
        bad = clash / n > tol
        rows.append(CheckResult(name, fig, FLAG if bad else PASS,
                                f"{clash} point(s) {what} by an attack (tol {tol:g}): the certificate is unsound or "
                                "an attack left the ball" if bad else
                                f"no point {what}; lower <= upper over {len(same_ball)} attack settings", data))
    return rows


# --- the entry point -----------------------------------------------------------------------------------

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
    before = _state(model)
    a = _Auditor(model, x.detach(), y, batch_size, seed)
    k = int(a.clean_logits.shape[1])
    rows: dict[str, CheckResult] = {}

    def add(results):
        for r in results if isinstance(results, list) else [results]:
            rows[r.check] = r
            say(f"  {r.check:<34s} {r.verdict:<7s} {r.figure}")

    add(_check_degenerate(a))
    add(_check_batch(a, n_single, tol.batch_logit))
    add(_check_eps0(a, spec))
    add(_check_gradients(a, spec, tol.gradient))
    metrics = M.evaluate(model, [(a.x[s], a.y[s]) for s in a.chunks()], spec, generator=a.generator())
    add(_check_theorems(metrics, tol.identity))
    add(_check_fgsm(a, spec, tol.fgsm))
    add(_check_transfer(a, spec, surrogate, tol.transfer, transfer_skip_reason))
    add(_check_curves(a, spec, list(eps_multiples), k, tol))
    add(_check_grid(a, CHECK_STEPS, "steps",
                    [(int(s), replace(spec, steps=int(s), restarts=1)) for s in steps_grid], tol.convergence))
    add(_check_grid(a, CHECK_RESTARTS, "restarts",
                    [(int(r), replace(spec, restarts=int(r))) for r in restarts_grid], tol.convergence))
    add(_check_apgd(a, spec, tol.apgd))
    add(_check_certified(a, spec, certify, tol.certified))
    add(_check_state(model, before, _state(model)))
    settings = {"certify": certify if isinstance(certify, str) or certify is None else "custom",
                "eps_multiples": list(eps_multiples), "steps_grid": [int(s) for s in steps_grid],
                "restarts_grid": [int(r) for r in restarts_grid], "batch_size": batch_size, "n_single": n_single,
                "seed": seed, "transfer": surrogate is not None}
    return AuditReport(rows=[rows[c] for c in CHECKS], spec=spec.as_dict(), tolerances=asdict(tol),
                       settings=settings, metrics=metrics, n_examples=len(x), num_classes=k,
                       seconds=time.perf_counter() - start)
