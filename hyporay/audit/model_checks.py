"""Checks of the model and its evaluation set-up: a degenerate model, batch dependence, a state the audit changed,
gradients an attack cannot follow (masking), and the Theorem 4.4/4.5 identities of the reported metrics."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hyporay import metrics as M
from hyporay.attacks import THREAT_MODELS, AttackSpec, frozen_eval
from hyporay.audit.auditor import Auditor, fmt
from hyporay.audit.report import (CHECK_BATCH, CHECK_DEGENERATE, CHECK_GRADIENT, CHECK_STATE, CHECK_THM44, CHECK_THM45,
                                  FLAG, PASS, CheckResult)


def check_degenerate(a: Auditor) -> CheckResult:
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


def check_batch(a: Auditor, n_single: int, tol: float) -> CheckResult:
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


def check_state(model: nn.Module, before, after) -> CheckResult:
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


def check_gradients(a: Auditor, spec: AttackSpec, tol: float) -> CheckResult:
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


def check_theorems(metrics: dict, tol: float) -> list[CheckResult]:
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
    fig = f"R_sta(D-) - R_hyp(D-) = {fmt(margin, 4)}, decomposition {dec_gap:.2g}"
    reason = "; ".join(bad) or ("decomposition holds; D- empty, the inequality is vacuous" if empty_wrong else
                                f"decomposition holds and R_sta(D-) {r_sta_w:.4f} >= R_hyp(D-) {r_hyp_w:.4f}")
    rows.append(CheckResult(CHECK_THM45, fig, FLAG if bad else PASS, reason, data))
    return rows
