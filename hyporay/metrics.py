"""Exact risks of a classifier under the adversarial, hypocritical and stability threat models.

Every risk is a supremum over the ε-ball of a per-example indicator (reference §1):
    R_adv = E[max 1(f(x') != y)],  R_hyp = E[max 1(f(x') = y)],  R_sta = E[max 1(f(x') != f(x))].
An attack only finds *witnesses* x' of such events, so each indicator is lower-bounded by the max over
all points we evaluated for that example: the clean point x itself (it lies in the ball) and every
attack's output. Using the same witnesses for every risk makes the paper's identities hold exactly:
Theorem 4.4  R_hyp(D) = 1 - (1 - R_hyp(D-)) * R_nat, and Theorem 4.5's R_sta(D-) >= R_hyp(D-).
Subset risks (D+ correct, D- misclassified) are computed on the exact per-example subsets, never via
the (F - D) / (100 - D) shortcut. A subset that is empty gives NaN.

The metric names below are the single source of truth for trials, MLflow, frontiers and reports.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hyporay import passes
from hyporay.attacks import AttackSpec, frozen_eval
from hyporay.witnesses import until_decided

ACC_CLEAN = "acc_clean"                        # D: clean accuracy
ACC_ADV = "acc_adv"                            # A: 1 - R_adv(D)
ACC_HYP = "acc_hyp"                            # F: R_hyp(D)
NATURAL_RISK = "natural_risk"                  # R_nat = 1 - D (x-axis of the trade-off frontier)
ADVERSARIAL_RISK = "adversarial_risk"          # R_adv(D)
ADVERSARIAL_RISK_CORRECT = "adversarial_risk_correct"  # R_adv(D+)
HYPOCRITICAL_RISK_ALL = "hypocritical_risk_all"        # R_hyp(D)
HYPOCRITICAL_RISK = "hypocritical_risk"        # R_hyp(D-): the false friend's success rate (y-axis)
STABILITY_RISK = "stability_risk"              # R_sta(D)
STABILITY_RISK_MISCLASSIFIED = "stability_risk_misclassified"  # R_sta(D-)
N_EXAMPLES = "n_examples"
N_MISCLASSIFIED = "n_misclassified"
# A model whose clean logits are non-finite, or do not depend on the input at all (a diverged net whose ReLUs
# all died outputs its last bias), is trivially "unconcealable" and "robust": its attack-based numbers mean
# nothing. ``degenerate`` = 1 then, and those numbers are NaN (never shown as results).
DEGENERATE = "degenerate"
NONFINITE_LOGITS = "nonfinite_logits"          # test examples whose clean logits hold a NaN/inf
PREDICTED_CLASSES = "predicted_classes"        # distinct clean predictions on the test set
TARGETED_PREFIX = "targeted_success_"  # + label: success toward that label on D- (Fig. 3), see aggregate
TARGETED_MEAN = "targeted_success_mean"        # mean over labels of the above
# Certified UPPER bounds (hyporay.certify, eval.certify): the attack's risk is a lower bound, these bracket it
HYPOCRITICAL_RISK_CERTIFIED_UPPER = "hypocritical_risk_certified_upper"  # 1 - #unconcealable / |D-| >= R_hyp(D-)
ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER = "adversarial_risk_correct_certified_upper"  # 1 - #robust / |D+|
CERTIFIED_METRICS = (HYPOCRITICAL_RISK_CERTIFIED_UPPER, ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER)

RISK_METRICS = (NATURAL_RISK, ADVERSARIAL_RISK, ADVERSARIAL_RISK_CORRECT, HYPOCRITICAL_RISK_ALL,
                HYPOCRITICAL_RISK, STABILITY_RISK, STABILITY_RISK_MISCLASSIFIED)
ACCURACY_METRICS = (ACC_CLEAN, ACC_ADV, ACC_HYP)
# Image-passes (hyporay.passes: forward + backward, attacks included) a trial spent: training so far and in the
# last epoch; evaluation so far and in the last evaluation (the convergence grids included).
TRAIN_PASSES, TRAIN_PASSES_EPOCH = "train_passes", "train_passes_epoch"
EVAL_PASSES, EVAL_PASSES_EPOCH = "eval_passes", "eval_passes_epoch"
PASS_METRICS = (TRAIN_PASSES, TRAIN_PASSES_EPOCH, EVAL_PASSES, EVAL_PASSES_EPOCH)

CORE_METRICS = ACCURACY_METRICS + RISK_METRICS + (N_EXAMPLES, N_MISCLASSIFIED, DEGENERATE)
HEALTH_METRICS = (DEGENERATE, NONFINITE_LOGITS, PREDICTED_CLASSES)


# Attack-convergence grids (eval.steps_grid / eval.restarts_grid): the final model re-evaluated with K steps
# (1 restart) or R restarts (the eval attack's steps); these metrics are kept per setting.
SETTING_KINDS = ("steps", "restarts")
SETTING_METRICS = (ACC_ADV, ACC_HYP, HYPOCRITICAL_RISK, ADVERSARIAL_RISK)


def targeted_metric(label: int) -> str:
    return f"{TARGETED_PREFIX}{label}"


def at_setting(kind: str, value: int, metric: str) -> str:
    """Name of ``metric`` measured with an attack setting: ``at_setting("steps", 100, "acc_adv")`` ->
    ``"steps_100/acc_adv"``. ``kind`` is "steps" or "restarts"."""
    if kind not in SETTING_KINDS:
        raise ValueError(f"kind: unknown {kind!r}; known: {', '.join(SETTING_KINDS)}")
    return f"{kind}_{int(value)}/{metric}"


def parse_setting(name: str) -> tuple[str, int, str] | None:
    """Inverse of ``at_setting``: ``"steps_100/acc_adv"`` -> ``("steps", 100, "acc_adv")``; None otherwise."""
    head, sep, metric = name.partition("/")
    kind, _, value = head.rpartition("_")
    if not sep or kind not in SETTING_KINDS or not value.isdigit() or not metric:
        return None
    return kind, int(value), metric


@dataclass
class PerExample:
    """Per-example outcomes (bool tensors of shape N, on CPU) behind the aggregate metrics."""

    y: Tensor
    clean_pred: Tensor
    adv_success: Tensor      # some witness x' with f(x') != y
    hyp_success: Tensor      # some witness x' with f(x') == y
    sta_success: Tensor      # some witness x' with f(x') != f(x)
    targeted: dict[int, Tensor] = field(default_factory=dict)  # label -> witness with f(x') == label
    clean_logits: Tensor | None = None  # N x K float32 (degeneracy check); None: not recorded

    @property
    def correct(self) -> Tensor:
        return self.clean_pred == self.y


def share(mask: Tensor, subset: Tensor | None = None) -> float:
    """Exact share of True in ``mask`` (over ``subset``): integer counts, one float64 division."""
    if subset is not None:
        mask = mask[subset]
    n = mask.numel()
    return int(mask.sum()) / n if n else math.nan


def degeneracy(clean_logits: Tensor) -> tuple[int, bool]:
    """(examples with a non-finite clean logit, whether the logits are the same for every input).

    ``clean_logits``: N x K. Input-independent means every row equals the first within 1e-6 of the logits'
    scale: the function is constant, so no perturbation can change any prediction.
    """
    finite = torch.isfinite(clean_logits).all(1)
    nonfinite = int((~finite).sum())
    if nonfinite or len(clean_logits) < 2:
        return nonfinite, False
    spread = float((clean_logits - clean_logits[0]).abs().max())
    return 0, spread <= 1e-6 * (1.0 + float(clean_logits.abs().max()))


def aggregate(pe: PerExample) -> dict[str, float]:
    """Turn per-example outcomes into the named metrics (exact subset values).

    A degenerate model (``degeneracy``: non-finite or input-independent clean logits) gets ``degenerate = 1``
    and NaN for every attack-based number (and for D / R_nat too when its logits are non-finite).
    """
    correct = pe.correct
    wrong = ~correct
    out = {
        N_EXAMPLES: float(correct.numel()),
        N_MISCLASSIFIED: float(wrong.sum()),
        ACC_CLEAN: share(correct),
        NATURAL_RISK: share(wrong),
        ADVERSARIAL_RISK: share(pe.adv_success),
        ADVERSARIAL_RISK_CORRECT: share(pe.adv_success, correct),
        HYPOCRITICAL_RISK_ALL: share(pe.hyp_success),
        HYPOCRITICAL_RISK: share(pe.hyp_success, wrong),
        STABILITY_RISK: share(pe.sta_success),
        STABILITY_RISK_MISCLASSIFIED: share(pe.sta_success, wrong),
    }
    out[ACC_ADV] = share(~pe.adv_success)
    out[ACC_HYP] = out[HYPOCRITICAL_RISK_ALL]
    rates = []
    for label, succ in sorted(pe.targeted.items()):
        # Fig. 3: among misclassified points that the attack must move to the label (neither their
        # true label nor their clean prediction is the target), the share it reaches.
        rate = share(succ, wrong & (pe.y != label) & (pe.clean_pred != label))
        out[targeted_metric(label)] = rate
        if not math.isnan(rate):
            rates.append(rate)
    if pe.targeted:
        out[TARGETED_MEAN] = sum(rates) / len(rates) if rates else math.nan
    out[PREDICTED_CLASSES] = float(len(torch.unique(pe.clean_pred)))
    out[DEGENERATE] = 0.0
    if pe.clean_logits is not None:
        nonfinite, constant = degeneracy(pe.clean_logits)
        out[NONFINITE_LOGITS] = float(nonfinite)
        if nonfinite or constant:
            kept = {N_EXAMPLES, PREDICTED_CLASSES, NONFINITE_LOGITS}
            if not nonfinite:  # a constant function still has a well-defined clean error
                kept |= {ACC_CLEAN, NATURAL_RISK, N_MISCLASSIFIED}
            out = {k: (v if k in kept else math.nan) for k, v in out.items()}
            out[DEGENERATE] = 1.0
    return out


def meaningful(metrics: dict) -> bool:
    """Whether a trial's risks are results: not degenerate and R_nat/R_hyp(D-) present (a model without mistakes
    has R_hyp(D-) = NaN: nothing to conceal, and no point on the natural-vs-hypocritical plane either)."""
    return not metrics.get(DEGENERATE) and all(
        isinstance(metrics.get(k), (int, float)) and not math.isnan(float(metrics[k]))
        for k in (NATURAL_RISK, HYPOCRITICAL_RISK))


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor) -> Tensor:
    passes.add(forward=len(x))
    return model(x).argmax(1)


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor) -> Tensor:
    passes.add(forward=len(x))
    return model(x).float()


def evaluate_batch(model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, *,
                   targeted: bool | Iterable[int] = False, num_classes: int | None = None,
                   generator: torch.Generator | None = None) -> PerExample:
    """Attack one batch (x in [0,1], N x C x H x W; y int64 N) and return per-example outcomes.

    Runs the adversarial and stability attacks on every example and the hypocritical attack (and
    targeted attacks, if asked) on the misclassified ones only: on D+ the hypocritical indicator is 1
    by definition (x itself is a witness), so attacking them would not change any metric.

    Two rules, by ``spec.early_stop``: None (today's) takes each attack's final iterate as the witness; an
    integer stops each example once it is decided, every visited point a witness (``hyporay.witnesses``:
    every risk >= today's on the same model and generator, fewer passes).
    """
    if spec.early_stop is not None:
        with frozen_eval(model):
            w = until_decided(model, x, y, spec, _target_labels(targeted, num_classes), generator)
        return PerExample(y=y.cpu(), clean_pred=w["clean_pred"].cpu(), adv_success=w["adv"].cpu(),
                          hyp_success=w["hyp"].cpu(), sta_success=w["sta"].cpu(),
                          targeted={t: v.cpu() for t, v in w["targeted"].items()},
                          clean_logits=w["clean_logits"].cpu())
    with frozen_eval(model):
        clean_logits = _logits(model, x)
        clean_pred = clean_logits.argmax(1)
        correct = clean_pred == y
        wrong_idx = (~correct).nonzero().flatten()

        x_adv = spec.run(model, x, y, "adversarial", generator=generator)
        x_sta = spec.run(model, x, y, "stability", generator=generator)
        adv_pred, sta_pred = _predict(model, x_adv), _predict(model, x_sta)
        hyp_pred_w = clean_pred[wrong_idx]
        if wrong_idx.numel():
            x_hyp_w = spec.run(model, x[wrong_idx], y[wrong_idx], "hypocritical", generator=generator)
            hyp_pred_w = _predict(model, x_hyp_w)

        # Every evaluated point is a witness for every indicator.
        preds = [clean_pred, adv_pred, sta_pred]
        hyp_pred = clean_pred.clone()
        hyp_pred[wrong_idx] = hyp_pred_w
        preds.append(hyp_pred)
        tgt: dict[int, Tensor] = {}
        labels = _target_labels(targeted, num_classes)
        for label in labels:
            hit = torch.zeros_like(correct)
            for p in preds:
                hit |= p == label
            if wrong_idx.numel():
                xw, yw = x[wrong_idx], y[wrong_idx]
                t = torch.full_like(yw, label)
                hit[wrong_idx] |= _predict(model, spec.run(model, xw, yw, "targeted", target=t,
                                                           generator=generator)) == label
            tgt[label] = hit.cpu()

    stacked = torch.stack(preds)
    adv_success = (stacked != y).any(0)
    hyp_success = (stacked == y).any(0)
    sta_success = (stacked != clean_pred).any(0)
    return PerExample(y=y.cpu(), clean_pred=clean_pred.cpu(), adv_success=adv_success.cpu(),
                      hyp_success=hyp_success.cpu(), sta_success=sta_success.cpu(), targeted=tgt,
                      clean_logits=clean_logits.cpu())


def _target_labels(targeted: bool | Iterable[int], num_classes: int | None) -> list[int]:
    if targeted is False:
        return []
    if targeted is True:
        if num_classes is None:
            raise ValueError("num_classes: required when targeted=True (per-label success rates)")
        return list(range(num_classes))
    return [int(t) for t in targeted]


def _concat(parts: list[PerExample]) -> PerExample:
    labels = parts[0].targeted.keys()
    return PerExample(
        y=torch.cat([p.y for p in parts]),
        clean_pred=torch.cat([p.clean_pred for p in parts]),
        adv_success=torch.cat([p.adv_success for p in parts]),
        hyp_success=torch.cat([p.hyp_success for p in parts]),
        sta_success=torch.cat([p.sta_success for p in parts]),
        targeted={k: torch.cat([p.targeted[k] for p in parts]) for k in labels},
        clean_logits=None if any(p.clean_logits is None for p in parts)
        else torch.cat([p.clean_logits for p in parts]),
    )


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], spec: AttackSpec, *,
             targeted: bool | Iterable[int] = False, num_classes: int | None = None,
             device: torch.device | str | None = None, generator: torch.Generator | None = None,
             return_per_example: bool = False):
    """Evaluate ``model`` over ``batches`` of (x in [0,1], y) under ``spec``; all risks on the same examples.

    Returns a dict of the metric names above (floats; NaN for an empty subset), plus the per-example
    outcomes when ``return_per_example`` is set. The model's train/eval mode is restored afterwards.
    ``device`` defaults to the model's parameters' device.
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    parts = []
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        parts.append(evaluate_batch(model, x, y, spec, targeted=targeted, num_classes=num_classes,
                                    generator=generator))
    if not parts:
        raise ValueError("batches: no examples to evaluate")
    pe = _concat(parts)
    metrics = aggregate(pe)
    return (metrics, pe) if return_per_example else metrics


def certified_risks(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, eps: float, norm: str = "linf",
                    method: str = "crown", device: torch.device | str | None = None) -> dict[str, float]:
    """Certified upper bounds of R_hyp(D-) and R_adv(D+) over ``batches`` of (x in [0,1], y) (hyporay.certify).

    ``HYPOCRITICAL_RISK_CERTIFIED_UPPER`` = 1 - (#misclassified points certified unconcealable) / |D-| and
    ``ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER`` = 1 - (#correct points certified robust) / |D+| (NaN for an
    empty subset), at radius ``eps`` (pixel units) in ``norm`` with ``method`` ("ibp", "crown-ibp", "crown").
    Every attack's R_hyp(D-) / R_adv(D+) on the same points is <= these. The model is left as found.
    """
    from hyporay.certify import certify

    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    correct, unconcealable, robust = [], [], []
    for x, y in batches:
        cert = certify(model, x.to(device), y.to(device), eps=eps, norm=norm, method=method)
        correct.append(cert.correct.cpu())
        unconcealable.append(cert.unconcealable.cpu())
        robust.append(cert.robust.cpu())
    if not correct:
        raise ValueError("batches: no examples to certify")
    correct_t = torch.cat(correct)
    return {HYPOCRITICAL_RISK_CERTIFIED_UPPER: 1.0 - share(torch.cat(unconcealable), ~correct_t),
            ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER: 1.0 - share(torch.cat(robust), correct_t)}
