"""Evaluation that stops once an example is decided (``eval.attack.early_stop``; ``hyporay.witnesses``): per example
and for every indicator it equals the max over every point today's attacks visit, so it is >= today's rule (final
iterates) and identical to it wherever those final iterates were the attacks' first witnesses; for PGD and APGD,
l_inf and l_2, every objective (adversarial, stability, hypocritical, targeted)."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from hyporay import metrics as M
from hyporay import passes
from hyporay.attacks import AttackSpec

EPS = {"linf": 0.1, "l2": 1.0}
SMALL = {"linf": 0.03, "l2": 0.3}  # bn_cnn conceals about half (l_inf) or 4/5 (l_2) of its mistakes there
LABELS = [0, 3]
KEYS = ("adv", "hyp", "sta", *LABELS)


@pytest.fixture(scope="module")
def batch(digits):
    return digits.x_test[:192], digits.y_test[:192]


@pytest.fixture(scope="module")
def mixed(bn_cnn, digits):
    """Every test point bn_cnn misclassifies, and 150 it gets right: both D+ and D- well populated."""
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        right = bn_cnn.eval()(x).argmax(1) == y
    keep = torch.cat([(~right).nonzero().flatten()[:60], right.nonzero().flatten()[:150]]).sort().values
    return x[keep], y[keep]


def _indicators(pe: M.PerExample) -> dict:
    """Each indicator where it counts: adversarial, hypocritical and stability everywhere; targeted to t on Fig. 3's
    subset (D- with y != t and f(x) != t), False elsewhere."""
    counts = {t: ~pe.correct & (pe.y != t) & (pe.clean_pred != t) for t in pe.targeted}
    return {"adv": pe.adv_success, "hyp": pe.hyp_success, "sta": pe.sta_success,
            **{t: hit & counts[t] for t, hit in pe.targeted.items()}}


def _run(model, x, y, spec, seed=7):
    with passes.counting() as spent:
        pe = M.evaluate_batch(model, x, y, spec, targeted=LABELS, generator=torch.Generator().manual_seed(seed))
    return _indicators(pe), spent.total, M.aggregate(pe)


def _visited_union(model, x, y, spec, seed=7):
    """Today's attacks in today's order from the same generator, recording the prediction at every point they
    visit (none stops: ``decided`` never accepts): the max over all visited points, per example."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = model(x).argmax(1)
    wrong = (clean != y).nonzero().flatten()
    w = {"adv": clean != y, "hyp": clean == y, "sta": torch.zeros_like(clean, dtype=torch.bool),
         **{t: clean == t for t in LABELS}}

    def record(rows):
        def decided(idx, logits):
            full, pred = (idx if rows is None else rows[idx]), logits.argmax(1)
            w["adv"][full] |= pred != y[full]
            w["hyp"][full] |= pred == y[full]
            w["sta"][full] |= pred != clean[full]
            for t in LABELS:
                w[t][full] |= pred == t
            return torch.zeros_like(pred, dtype=torch.bool)
        return decided

    every = dataclasses.replace(spec, early_stop=0)
    plan = [("adversarial", None, None), ("stability", None, None)]
    plan += [("hypocritical", wrong, None)] + [("targeted", wrong, t) for t in LABELS]
    for objective, rows, t in plan:
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        target = None if t is None else torch.full_like(ys, t)
        every.run(model, xs, ys, objective, target=target, generator=gen, decided=record(rows))
    for t in LABELS:  # where it counts, as in _indicators
        w[t] = w[t] & (clean != y) & (y != t) & (clean != t)
    return w


@pytest.mark.parametrize("method,norm", list(itertools.product(("pgd", "apgd"), ("linf", "l2"))))
def test_decided_rule_is_the_max_over_todays_visited_points(bn_cnn, mixed, method, norm):
    x, y = mixed
    spec = AttackSpec(norm=norm, eps=SMALL[norm], steps=8, restarts=2, method=method, random_start="uniform",
                      score="margin" if method == "apgd" else "ce")
    today, today_passes, today_m = _run(bn_cnn, x, y, spec)
    new, new_passes, new_m = _run(bn_cnn, x, y, dataclasses.replace(spec, early_stop=0))
    union = _visited_union(bn_cnn, x, y, spec)
    wrong = today_m[M.N_MISCLASSIFIED]
    assert 10 <= wrong <= len(y) - 10, "the model needs both D+ and D-"
    for name in (M.HYPOCRITICAL_RISK, M.ADVERSARIAL_RISK_CORRECT, M.STABILITY_RISK_MISCLASSIFIED):
        assert 0 < today_m[name] < 1, f"{name} = {today_m[name]}: trivial, it could not show a wrong witness"
    for k in KEYS:
        assert (new[k] | ~today[k]).all(), f"{k}: a witness of today's rule was lost"
        assert torch.equal(new[k], union[k].cpu()), f"{k}: not the max over today's visited points"
    for name in M.RISK_METRICS:
        assert new_m[name] >= today_m[name], name
    assert new_m[M.NATURAL_RISK] == today_m[M.NATURAL_RISK]
    assert new_passes < today_passes, (new_passes, today_passes)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_visited_points_are_todays_final_iterates_of_shorter_runs(natural_mlp, batch, norm):
    """Independent of the early-stop machinery: without a random start PGD's k-th iterate is the final iterate of
    the same attack with k steps, so the decided rule equals the max over K = 1..8 of today's rule."""
    x, y = batch
    spec = AttackSpec(norm=norm, eps=EPS[norm], steps=8, random_start="none")
    new, _, _ = _run(natural_mlp, x, y, dataclasses.replace(spec, early_stop=0))
    shorter = [_run(natural_mlp, x, y, dataclasses.replace(spec, steps=k))[0] for k in range(1, 9)]
    for key in KEYS:
        assert torch.equal(new[key], torch.stack([s[key] for s in shorter]).any(0)), key


def test_rule_is_named_in_the_threat_model_string_and_the_old_rule_stays_available():
    old, new = AttackSpec(eps=0.1), AttackSpec(eps=0.1, early_stop=0)
    assert "early-stop" not in old.describe() and new.describe().endswith("early-stop=0")
    assert old.as_dict()["early_stop"] is None and new.as_dict()["early_stop"] == 0


def test_config_chooses_the_rule_and_names_a_bad_value():
    from hyporay.config import ConfigError, load_config

    assert load_config({}).eval.attack.early_stop is None  # today's rule unless asked
    cfg = load_config({"eval": {"attack": {"early_stop": 0}}, "train": {"attack": {"early_stop": 2}}})
    assert cfg.eval.attack.early_stop == 0 and cfg.train.attack.early_stop == 2
    assert cfg.eval.attack.describe().endswith("early-stop=0")
    with pytest.raises((ConfigError, ValueError), match="early_stop"):
        load_config({"eval": {"attack": {"early_stop": -1}}})
