"""Exact risk metrics on real digits models: the paper's identities and independent recomputation."""
from __future__ import annotations

import math

import pytest
import torch

from hyporay import metrics as M
from hyporay.attacks import AttackSpec, pgd
from hyporay.data import iterate_batches

SPEC = AttackSpec(norm="linf", eps=0.1, steps=20, step_size=0.025)


def _eval(model, ds, spec=SPEC, **kw):
    batches = iterate_batches(ds.x_test, ds.y_test, 200, shuffle=False)
    return M.evaluate(model, batches, spec, generator=torch.Generator().manual_seed(0), **kw)


@pytest.fixture(scope="module")
def natural(natural_mlp, digits):
    return _eval(natural_mlp, digits, return_per_example=True)


def test_metric_names_are_defined_once_and_present(natural):
    metrics, _ = natural
    for name in M.CORE_METRICS:
        assert name in metrics and isinstance(metrics[name], float)


def test_theorem_4_4_holds_exactly(natural, naive_mlp, digits):
    for m in (natural[0], _eval(naive_mlp, digits)):
        lhs = m[M.HYPOCRITICAL_RISK_ALL]
        rhs = 1 - (1 - m[M.HYPOCRITICAL_RISK]) * m[M.NATURAL_RISK]
        assert lhs == pytest.approx(rhs, abs=1e-12)


def test_theorem_4_5_identity_and_inequality(natural, naive_mlp, digits):
    for m in (natural[0], _eval(naive_mlp, digits)):
        r_nat = m[M.NATURAL_RISK]
        rhs = (1 - r_nat) * m[M.ADVERSARIAL_RISK_CORRECT] + r_nat * m[M.STABILITY_RISK_MISCLASSIFIED]
        assert m[M.STABILITY_RISK] == pytest.approx(rhs, abs=1e-12)
        assert m[M.STABILITY_RISK_MISCLASSIFIED] >= m[M.HYPOCRITICAL_RISK]


def test_subset_values_match_an_independent_recomputation(natural_mlp, digits, natural):
    """Recompute R_nat and R_hyp(D-) from raw pgd calls: the exact subset value, not (F-D)/(1-D)."""
    metrics, pe = natural
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        wrong = natural_mlp(x).argmax(1) != y
    assert metrics[M.NATURAL_RISK] == pytest.approx(float(wrong.float().mean()))
    assert metrics[M.N_MISCLASSIFIED] == float(wrong.sum())
    x_hyp = pgd(natural_mlp, x[wrong], y[wrong], eps=0.1, step_size=0.025, steps=20,
                objective="hypocritical", generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        direct = float((natural_mlp(x_hyp).argmax(1) == y[wrong]).float().mean())
    # different random starts: equal up to a couple of examples
    assert metrics[M.HYPOCRITICAL_RISK] == pytest.approx(direct, abs=3 / int(wrong.sum()))
    assert torch.equal(pe.correct, ~wrong)
    assert metrics[M.ACC_HYP] == pytest.approx(float(pe.hyp_success.float().mean()))


def test_natural_model_conceals_most_mistakes(natural):
    m, _ = natural
    assert m[M.ACC_CLEAN] > 0.9
    assert m[M.HYPOCRITICAL_RISK] > 0.8  # the false friend hides most errors
    assert m[M.ACC_HYP] > m[M.ACC_CLEAN]
    assert m[M.ACC_ADV] < m[M.ACC_CLEAN] - 0.3


def test_substandard_naive_model_looks_far_better_than_it_is(naive_mlp, digits):
    m = _eval(naive_mlp, digits)
    assert m[M.ACC_CLEAN] < 0.3
    assert m[M.ACC_HYP] > 2 * m[M.ACC_CLEAN] + 0.15


def test_eps_zero_gives_clean_accuracy_everywhere(natural_mlp, digits):
    m = _eval(natural_mlp, digits, AttackSpec(eps=0.0, steps=5))
    assert m[M.ACC_ADV] == m[M.ACC_CLEAN] == m[M.ACC_HYP]
    assert m[M.HYPOCRITICAL_RISK] == 0.0 and m[M.ADVERSARIAL_RISK_CORRECT] == 0.0


def test_hypocritical_beats_fixed_targets_on_mistakes(natural_mlp, digits):
    """Claim 5 (Fig. 3): on a trained model's mistakes the true label is the easiest target by far."""
    m = _eval(natural_mlp, digits, AttackSpec(eps=0.05, steps=10, step_size=0.0125), targeted=True,
              num_classes=10)
    rates = [m[M.targeted_metric(k)] for k in range(10)]
    assert all(0.0 <= r <= 1.0 for r in rates)
    assert m[M.HYPOCRITICAL_RISK] > m[M.TARGETED_MEAN] + 0.1


def test_empty_subset_is_nan_not_zero(natural_mlp, digits):
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        right = natural_mlp(x).argmax(1) == y
    m = M.evaluate(natural_mlp, [(x[right][:50], y[right][:50])], SPEC)
    assert m[M.NATURAL_RISK] == 0.0
    assert math.isnan(m[M.HYPOCRITICAL_RISK])
    assert m[M.HYPOCRITICAL_RISK_ALL] == 1.0


def test_model_mode_restored_after_evaluation(bn_cnn, digits):
    bn_cnn.train()
    try:
        _eval(bn_cnn, digits, AttackSpec(eps=0.1, steps=2))
        assert all(m.training for m in bn_cnn.modules())
    finally:
        bn_cnn.eval()
