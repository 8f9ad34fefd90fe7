"""Checks of the attack's strength: eps = 0 changes nothing, accuracy vs eps, convergence in steps and restarts, PGD
vs a single step, white-box vs transfer, PGD vs APGD, and attack lower bound <= certified upper bound."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from hyporay import metrics as M
from hyporay.attacks import AttackSpec
from hyporay.audit.auditor import Auditor, fmt, scaled
from hyporay.audit.report import (ADV, CHECK_APGD, CHECK_CERTIFIED, CHECK_CURVE, CHECK_EPS0, CHECK_FGSM, CHECK_TRANSFER,
                                  FLAG, HYP, PASS, SKIPPED, CheckResult)
from hyporay.audit.tolerances import Tolerances


def check_eps0(a: Auditor, spec: AttackSpec) -> CheckResult:
    spec0 = replace(spec, eps=0.0)
    x_adv = a.craft(a.model, spec0, ADV)
    wrong = (~a.correct).nonzero().flatten()
    x_hyp = a.craft(a.model, spec0, HYP, wrong)
    moved = max(float((x_adv - a.x).abs().max()) if len(a.x) else 0.0,
                float((x_hyp - a.x[wrong]).abs().max()) if wrong.numel() else 0.0)
    diff_adv = int((a.predict(a.model, x_adv) != a.clean_pred).sum())
    diff_hyp = int((a.predict(a.model, x_hyp) != a.clean_pred[wrong]).sum()) if wrong.numel() else 0
    m = M.evaluate(a.model, [(a.x[s], a.y[s]) for s in a.chunks()], spec0, generator=a.generator())
    acc_clean = M.share(a.correct)
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
    figure = f"{diff_adv + diff_hyp} changed, A=F=D={fmt(acc_clean)}" if not bad else \
        f"{diff_adv + diff_hyp} changed, D={fmt(m[M.ACC_CLEAN])} A={fmt(m[M.ACC_ADV])} F={fmt(m[M.ACC_HYP])}"
    return CheckResult(CHECK_EPS0, figure, FLAG if bad else PASS,
                       "; ".join(bad) if bad else "eps=0 gives exactly the clean predictions", data)


def check_curves(a: Auditor, spec: AttackSpec, mults: Sequence[float], k: int, tol: Tolerances
                  ) -> list[CheckResult]:
    eps = [spec.eps * m for m in mults]
    # best iterate: at a huge eps the scaled step is coarse and the last iterate can overshoot; the curve
    # asks what the attack can reach with a budget, not where its last step happened to land
    outs = [a.outcome(replace(scaled(spec, m), best_iterate=True)) for m in mults]
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
    fig = " ".join(fmt(v, 2) for v in acc_adv)
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
    fig = " ".join(fmt(v, 2) for v in acc_hyp)
    rows.append(CheckResult(f"{CHECK_CURVE}/{HYP}", f"F: {fig}", FLAG if bad else PASS,
                            "; ".join(bad) or f"non-decreasing, {acc_hyp[-1]:.3f} at eps {eps[-1]:.4g}", data))
    return rows


def check_grid(a: Auditor, check: str, kind: str, specs: list[tuple[int, AttackSpec]], tol: float
                ) -> list[CheckResult]:
    values = [v for v, _ in specs]
    outs = [a.outcome(s) for _, s in specs]
    rows = []
    for direction, accs, sign in ((ADV, [o.acc_adv for o in outs], 1.0), (HYP, [o.acc_hyp for o in outs], -1.0)):
        name = f"{check}/{direction}"
        sym = "A" if direction == ADV else "F"
        data = {kind: values, "acc": accs, "figure": "acc_adv" if direction == ADV else "acc_hyp",
                "rates": [o.rates(a.correct) for o in outs]}
        figure = f"{sym}: " + " ".join(f"{v}:{fmt(acc, 3)}" for v, acc in zip(values, accs))
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


def check_fgsm(a: Auditor, spec: AttackSpec, tol: float) -> list[CheckResult]:
    pgd_o, fgsm_o = a.outcome(spec), a.outcome(spec, single_step=True)
    rows = []
    gap = pgd_o.acc_adv - fgsm_o.acc_adv  # > 0: PGD weaker
    data = {"acc_adv_pgd": pgd_o.acc_adv, "acc_adv_fgsm": fgsm_o.acc_adv, "pgd_weaker_by": gap}
    fig = f"A: PGD {fmt(pgd_o.acc_adv)} vs FGSM {fmt(fgsm_o.acc_adv)}"
    rows.append(CheckResult(f"{CHECK_FGSM}/{ADV}", fig, FLAG if gap > tol else PASS,
                            f"PGD weaker than a single step by {gap:.3f} (tol {tol:g}): iterative attack broken or "
                            "gradients masked" if gap > tol else "PGD at least as strong as FGSM", data))
    gap = fgsm_o.acc_hyp - pgd_o.acc_hyp  # > 0: PGD conceals fewer mistakes
    data = {"acc_hyp_pgd": pgd_o.acc_hyp, "acc_hyp_fgsm": fgsm_o.acc_hyp, "pgd_weaker_by": gap}
    fig = f"F: PGD {fmt(pgd_o.acc_hyp)} vs FGSM {fmt(fgsm_o.acc_hyp)}"
    rows.append(CheckResult(f"{CHECK_FGSM}/{HYP}", fig, FLAG if gap > tol else PASS,
                            f"PGD conceals fewer mistakes than a single step by {gap:.3f} (tol {tol:g})"
                            if gap > tol else "PGD at least as strong as FGSM", data))
    return rows


def check_transfer(a: Auditor, spec: AttackSpec, surrogate: nn.Module | None, tol: float,
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
            "success_whitebox_on_correct": M.share(wb.adv_success, ~wrong),
            "success_transfer_on_correct": M.share(tr.adv_success, ~wrong)}
    fig = f"A: white-box {fmt(wb.acc_adv)} vs transfer {fmt(tr.acc_adv)}"
    rows.append(CheckResult(names[0], fig, FLAG if gap > tol else PASS,
                            f"examples crafted on the surrogate beat the white-box attack by {gap:.3f} (tol {tol:g}): "
                            "gradients masked or white-box attack broken" if gap > tol
                            else "white-box at least as strong as transfer", data))
    gap = tr.acc_hyp - wb.acc_hyp
    data = {**common, "acc_hyp_whitebox": wb.acc_hyp, "acc_hyp_transfer": tr.acc_hyp, "transfer_stronger_by": gap,
            "success_whitebox_on_misclassified": M.share(wb.hyp_success, wrong),
            "success_transfer_on_misclassified": M.share(tr.hyp_success, wrong)}
    fig = f"F: white-box {fmt(wb.acc_hyp)} vs transfer {fmt(tr.acc_hyp)}"
    rows.append(CheckResult(names[1], fig, FLAG if gap > tol else PASS,
                            f"the surrogate conceals more mistakes than the white-box attack by {gap:.3f} "
                            f"(tol {tol:g})" if gap > tol else "white-box at least as strong as transfer", data))
    return rows


def check_apgd(a: Auditor, spec: AttackSpec, tol: float) -> list[CheckResult]:
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
        fig = f"{sym}: {me} {fmt(mine_acc)} vs {it} {fmt(their_acc)}"
        bad = gap > tol
        rows.append(CheckResult(f"{CHECK_APGD}/{direction}", fig, FLAG if bad else PASS,
                                f"{it} {what} than the audited {me} by {gap:.3f} (tol {tol:g}): {why}" if bad
                                else f"{it} {what} by at most {max(gap, 0.0) + 0.0:.3f} (tol {tol:g})", data))
    return rows


def check_certified(a: Auditor, spec: AttackSpec, certify, tol: float) -> list[CheckResult]:
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
        lower, upper = M.share(hit, subset), 1.0 - M.share(cert, subset)
        clash = int((cert & hit).sum())
        data = {"method": method, "attack_lower": lower, "certified_upper": upper, "contradictions": clash,
                "certified": int(cert.sum()), "subset": int(subset.sum()), "attacks_used": len(same_ball)}
        fig = f"{label} in [{fmt(lower)}, {fmt(upper)}] ({method})"
        bad = clash / n > tol
        rows.append(CheckResult(name, fig, FLAG if bad else PASS,
                                f"{clash} point(s) {what} by an attack (tol {tol:g}): the certificate is unsound or "
                                "an attack left the ball" if bad else
                                f"no point {what}; lower <= upper over {len(same_ball)} attack settings", data))
    return rows
