"""Exact risk metrics on real digits models: the paper's identities and independent recomputation."""
from __future__ import annotations

import dataclasses
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


# no start noise: every attack is a deterministic function of its batch, so direct calls reproduce it exactly
EXACT = AttackSpec(norm="linf", eps=0.1, steps=20, step_size=0.025, random_start="none")
BATCH = 200
LABELS = range(10)


def _direct(model, ds):
    """Per-example outcomes written out from the definitions (reference §1) with direct ``pgd`` calls on the
    same batches as ``evaluate``: every evaluated point (the clean x, which lies in the ball, and each
    attack's output) is a witness for every indicator. Also returns the hypocritical attack's own successes
    on D- (without the other witnesses)."""
    out = {k: [] for k in ("y", "clean", "adv", "hyp", "sta", "hyp_attack_only", "wrong")}
    tgt = {k: [] for k in LABELS}
    kw = dict(eps=EXACT.eps, step_size=EXACT.alpha, steps=EXACT.steps, norm=EXACT.norm, random_start="none")
    for x, y in iterate_batches(ds.x_test, ds.y_test, BATCH, shuffle=False):
        with torch.no_grad():
            clean = model(x).argmax(1)
        wrong = clean != y
        adv = _pred(model, pgd(model, x, y, objective="adversarial", **kw))
        sta = _pred(model, pgd(model, x, y, objective="stability", **kw))
        hyp = clean.clone()
        hyp[wrong] = _pred(model, pgd(model, x[wrong], y[wrong], objective="hypocritical", **kw))
        witnesses = [clean, adv, sta, hyp]
        out["y"].append(y)
        out["clean"].append(clean)
        out["wrong"].append(wrong)
        out["adv"].append(torch.stack([w != y for w in witnesses]).any(0))
        out["hyp"].append(torch.stack([w == y for w in witnesses]).any(0))
        out["sta"].append(torch.stack([w != clean for w in witnesses]).any(0))
        out["hyp_attack_only"].append((hyp == y) & wrong)
        for k in LABELS:
            hit = torch.stack([w == k for w in witnesses]).any(0)
            t = torch.full_like(y[wrong], k)
            hit[wrong] |= _pred(model, pgd(model, x[wrong], y[wrong], objective="targeted", target=t, **kw)) == k
            tgt[k].append(hit)
    out = {k: torch.cat(v) for k, v in out.items()}
    out["targeted"] = {k: torch.cat(v) for k, v in tgt.items()}
    return out


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.fixture(scope="module", params=["natural", "naive"])
def exact(request, natural_mlp, naive_mlp, digits):
    model = {"natural": natural_mlp, "naive": naive_mlp}[request.param]
    batches = iterate_batches(digits.x_test, digits.y_test, BATCH, shuffle=False)
    metrics, pe = M.evaluate(model, batches, EXACT, targeted=list(LABELS), return_per_example=True)
    return request.param, metrics, pe, _direct(model, digits)


def test_per_example_outcomes_equal_direct_attack_calls(exact):
    """Guards against evaluate() running the wrong attack for a risk, on the wrong subset, or mixing up
    witnesses or labels: with no start noise, its per-example outcomes equal those of direct pgd calls
    exactly (this replaces a check that allowed 3 examples' slack)."""
    _, _, pe, d = exact
    assert torch.equal(pe.y, d["y"]) and torch.equal(pe.clean_pred, d["clean"])
    assert torch.equal(pe.adv_success, d["adv"])
    assert torch.equal(pe.hyp_success, d["hyp"])
    assert torch.equal(pe.sta_success, d["sta"])
    assert sorted(pe.targeted) == list(LABELS)
    for k in LABELS:
        assert torch.equal(pe.targeted[k], d["targeted"][k]), k


def test_aggregates_are_exact_counts_on_the_right_subsets(exact):
    """Guards against a risk computed on the wrong subset (D instead of D-, D- instead of D+), the
    (F - D)/(1 - D) shortcut, or an off-by-one in a count: every aggregate equals its integer count over its
    subset divided by the subset's size, exactly (evaluate's metrics are aggregate() of its outcomes)."""
    _, metrics, pe, d = exact
    m = M.aggregate(pe)
    assert m.keys() == metrics.keys()
    assert all(m[k] == metrics[k] or (math.isnan(m[k]) and math.isnan(metrics[k])) for k in m)
    wrong, right = d["wrong"], ~d["wrong"]
    n, nw = len(wrong), int(wrong.sum())

    def share(mask, subset):
        return int((mask & subset).sum()) / int(subset.sum()) if int(subset.sum()) else math.nan

    everyone = torch.ones_like(wrong)
    expected = {
        M.N_EXAMPLES: float(n), M.N_MISCLASSIFIED: float(nw), M.NATURAL_RISK: nw / n, M.ACC_CLEAN: (n - nw) / n,
        M.ADVERSARIAL_RISK: share(d["adv"], everyone), M.ACC_ADV: int((~d["adv"]).sum()) / n,
        M.ADVERSARIAL_RISK_CORRECT: share(d["adv"], right), M.HYPOCRITICAL_RISK_ALL: share(d["hyp"], everyone),
        M.ACC_HYP: share(d["hyp"], everyone), M.HYPOCRITICAL_RISK: share(d["hyp"], wrong),
        M.STABILITY_RISK: share(d["sta"], everyone), M.STABILITY_RISK_MISCLASSIFIED: share(d["sta"], wrong),
    }
    for k in LABELS:  # Fig. 3: misclassified points whose true label and clean prediction are not k
        expected[M.targeted_metric(k)] = share(d["targeted"][k], wrong & (d["y"] != k) & (d["clean"] != k))
    rates = [r for r in (expected[M.targeted_metric(k)] for k in LABELS) if not math.isnan(r)]
    expected[M.TARGETED_MEAN] = sum(rates) / len(rates)
    for name, value in expected.items():
        assert m[name] == value or (math.isnan(m[name]) and math.isnan(value)), name


def test_theorem_4_4_holds_and_the_attack_found_the_witnesses(exact):
    """Theorem 4.4, R_hyp(D) = 1 - (1 - R_hyp(D-)) R_nat, follows from how the clean point is counted, so on
    its own it cannot fail (a no-op hypocritical attack satisfies it). This test also requires the
    hypocritical attack to have found its own witnesses on D- and the components to equal the direct
    recomputation."""
    name, m, _, d = exact
    rhs = 1 - (1 - m[M.HYPOCRITICAL_RISK]) * m[M.NATURAL_RISK]
    assert m[M.HYPOCRITICAL_RISK_ALL] == pytest.approx(rhs, abs=1e-12)
    wrong = d["wrong"]
    assert m[M.HYPOCRITICAL_RISK] == int(d["hyp"][wrong].sum()) / int(wrong.sum())
    assert m[M.HYPOCRITICAL_RISK_ALL] == int(d["hyp"].sum()) / len(wrong)
    by_attack = int(d["hyp_attack_only"].sum()) / int(wrong.sum())
    # measured: natural 11/11, naive 0.36 of its 486 mistakes; a no-op attack gives 0
    assert by_attack > {"natural": 0.8, "naive": 0.2}[name], by_attack
    assert m[M.HYPOCRITICAL_RISK] >= by_attack


def test_theorem_4_5_holds_and_its_parts_come_from_real_attacks(exact):
    """Theorem 4.5: R_sta(D) = (1 - R_nat) R_adv(D+) + R_nat R_sta(D-), and R_sta(D-) >= R_hyp(D-). Like 4.4
    the identity holds by construction; this test also requires the adversarial attack to break a real share of
    D+ and the components to equal the direct recomputation."""
    name, m, _, d = exact
    r_nat = m[M.NATURAL_RISK]
    rhs = (1 - r_nat) * m[M.ADVERSARIAL_RISK_CORRECT] + r_nat * m[M.STABILITY_RISK_MISCLASSIFIED]
    assert m[M.STABILITY_RISK] == pytest.approx(rhs, abs=1e-12)
    assert m[M.STABILITY_RISK_MISCLASSIFIED] >= m[M.HYPOCRITICAL_RISK]
    right = ~d["wrong"]
    assert m[M.ADVERSARIAL_RISK_CORRECT] == int(d["adv"][right].sum()) / int(right.sum())
    assert m[M.STABILITY_RISK] == int(d["sta"].sum()) / len(right)
    assert m[M.ADVERSARIAL_RISK_CORRECT] > 0.3  # measured: natural 0.47, naive 1.0; a no-op attack gives 0


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
    m = M.evaluate(natural_mlp, [(x[right][:50], y[right][:50])], SPEC, targeted=[0, 1])
    assert m[M.NATURAL_RISK] == 0.0
    assert math.isnan(m[M.HYPOCRITICAL_RISK])
    assert math.isnan(m[M.STABILITY_RISK_MISCLASSIFIED])
    assert math.isnan(m[M.targeted_metric(0)]) and math.isnan(m[M.TARGETED_MEAN])
    assert m[M.HYPOCRITICAL_RISK_ALL] == 1.0


def test_model_mode_restored_after_evaluation(bn_cnn, digits):
    bn_cnn.train()
    try:
        _eval(bn_cnn, digits, AttackSpec(eps=0.1, steps=2))
        assert all(m.training for m in bn_cnn.modules())
    finally:
        bn_cnn.eval()


def test_evaluation_draws_only_from_its_generator(naive_mlp, digits):
    """Guards reproducible evaluation: every attack's random start inside evaluate() comes from the generator
    passed in, never from the global RNG. With step size 0 each attack's output is its random start, so on the
    near-chance Naive model the outcomes of every risk depend on the draws: the same seed gives the same
    per-example outcomes whatever the global RNG did, another seed other outcomes."""
    spec = AttackSpec(eps=0.3, steps=1, step_size=0.0, random_start="uniform")
    x, y = digits.x_test[:300], digits.y_test[:300]

    def run(global_seed, seed):
        torch.manual_seed(global_seed)
        _, pe = M.evaluate(naive_mlp, [(x, y)], spec, targeted=[3], generator=torch.Generator().manual_seed(seed),
                           return_per_example=True)
        return torch.stack([pe.adv_success, pe.hyp_success, pe.sta_success, pe.targeted[3]])

    a, b, c = run(1, 0), run(2, 0), run(1, 1)
    assert torch.equal(a, b)
    for i in range(4):  # each attack's own draws matter
        assert not torch.equal(a[i], c[i]), i


def test_evaluate_batch_runs_no_targeted_attack_unless_asked(natural_mlp, digits):
    pe = M.evaluate_batch(natural_mlp, digits.x_test[:50], digits.y_test[:50], AttackSpec(eps=0.1, steps=2))
    assert pe.targeted == {}


def test_the_clean_point_is_a_witness_whatever_the_attacks_return(natural_mlp, digits):
    """Guards the witness rule (the clean x lies in the ball): a misclassified point counts for R_adv and a
    correct one for R_hyp even when no attack output says so. The "attacks" here return, for every example, a
    test input the model classifies as the example's true label (a prototype of its class)."""
    x, y = digits.x_test[:200], digits.y_test[:200]
    with torch.no_grad():
        pred = natural_mlp(digits.x_test).argmax(1)
    right = (pred == digits.y_test).nonzero().flatten()
    proto = {int(digits.y_test[i]): digits.x_test[i] for i in right.flip(0)}
    assert sorted(proto) == list(range(10))

    @dataclasses.dataclass(frozen=True)
    class Prototypes(AttackSpec):
        def run(self, model, x, y, objective, *, target=None, generator=None):
            return torch.stack([proto[int(label)] for label in y])

    pe = M.evaluate_batch(natural_mlp, x, y, Prototypes(eps=0.1, steps=1))
    wrong = pe.clean_pred != pe.y
    assert wrong.any() and (~wrong).any()
    assert pe.adv_success[wrong].all()     # x itself is a mistake, whatever the attacks found
    assert not pe.adv_success[~wrong].any()  # every other witness is classified y
    assert pe.hyp_success.all()
    assert torch.equal(pe.sta_success, wrong)  # the prototypes' prediction differs from f(x) exactly on D-


def test_evaluate_errors_name_the_argument(natural_mlp, digits):
    with pytest.raises(ValueError, match=r"^batches: no examples to evaluate$"):
        M.evaluate(natural_mlp, [], SPEC)
    with pytest.raises(ValueError, match=r"^num_classes: required when targeted=True \(per-label success rates\)$"):
        M.evaluate(natural_mlp, [(digits.x_test[:5], digits.y_test[:5])], SPEC, targeted=True)


def test_a_model_without_parameters_is_evaluated_on_the_cpu(digits):
    """evaluate() puts batches on the model's device, the CPU for a model with no parameters."""
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randn(64, 10, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            return x.flatten(1) @ self.w

    m = M.evaluate(Fixed(), [(digits.x_test[:50], digits.y_test[:50])], AttackSpec(eps=0.1, steps=2))
    assert m[M.N_EXAMPLES] == 50.0


def test_setting_names_reject_unknown_kinds_listing_the_known():
    with pytest.raises(ValueError, match=r"^kind: unknown 'epochs'; known: steps, restarts$"):
        M.at_setting("epochs", 3, M.ACC_ADV)


def test_certified_risks_count_the_certificates_over_all_batches(natural_mlp, digits):
    """The certified upper bounds are 1 - (certified points of the subset) / |subset|, counted over every batch."""
    from hyporay.certify import certify

    x, y = digits.x_test[:300], digits.y_test[:300]
    got = M.certified_risks(natural_mlp, iterate_batches(x, y, 128, shuffle=False), eps=0.05, method="crown")
    cert = certify(natural_mlp, x, y, eps=0.05, method="crown")
    wrong, right = ~cert.correct, cert.correct
    assert 0 < int(cert.unconcealable.sum()) < int(wrong.sum()) and 0 < int(cert.robust.sum()) < int(right.sum())
    assert got[M.HYPOCRITICAL_RISK_CERTIFIED_UPPER] == pytest.approx(
        1 - int((cert.unconcealable & wrong).sum()) / int(wrong.sum()), abs=1e-12)
    assert got[M.ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER] == pytest.approx(
        1 - int((cert.robust & right).sum()) / int(right.sum()), abs=1e-12)
    with pytest.raises(ValueError, match="^batches: no examples to certify$"):
        M.certified_risks(natural_mlp, [], eps=0.02)
    assert M.certified_risks(natural_mlp, [(x, y)], eps=0.05) == got  # "crown" is the default method

    # the norm and the method reach certify (and here each of them changes the numbers)
    def bounds(eps, norm, method):
        c = certify(natural_mlp, x, y, eps=eps, norm=norm, method=method)
        return 1 - int(c.unconcealable.sum()) / int(wrong.sum()), 1 - int(c.robust.sum()) / int(right.sum())

    for eps, norm, method, other in ((0.1, "l2", "crown", (0.1, "linf", "crown")),
                                     (0.01, "linf", "ibp", (0.01, "linf", "crown"))):
        m = M.certified_risks(natural_mlp, [(x, y)], eps=eps, norm=norm, method=method)
        want = bounds(eps, norm, method)
        assert (m[M.HYPOCRITICAL_RISK_CERTIFIED_UPPER], m[M.ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER]) == \
            pytest.approx(want, abs=1e-12)
        assert want != bounds(*other)

    # a model without parameters is certified on the CPU
    flat = M.certified_risks(torch.nn.Sequential(torch.nn.Flatten()), [(x[:20], y[:20])], eps=0.01)
    assert set(flat) == {M.HYPOCRITICAL_RISK_CERTIFIED_UPPER, M.ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER}


def test_outcomes_without_clean_logits_concatenate_without_a_degeneracy_check():
    def part(n, logits):
        b = torch.zeros(n, dtype=torch.bool)
        return M.PerExample(y=torch.zeros(n, dtype=torch.long), clean_pred=torch.zeros(n, dtype=torch.long),
                            adv_success=b, hyp_success=b, sta_success=b, clean_logits=logits)

    constant = torch.zeros(3, 4)
    assert M._concat([part(3, constant), part(3, None)]).clean_logits is None
    assert torch.equal(M._concat([part(3, constant), part(3, constant)]).clean_logits, torch.zeros(6, 4))
    assert M.aggregate(M._concat([part(3, constant), part(3, None)]))[M.DEGENERATE] == 0.0


def test_degeneracy_from_two_examples_on():
    assert M.degeneracy(torch.tensor([[1.0, 2.0], [1.0, 2.0]])) == (0, True)
    assert M.degeneracy(torch.tensor([[1.0, 2.0], [1.0, 2.5]])) == (0, False)
    assert M.degeneracy(torch.tensor([[1.0, 2.0]])) == (0, False)  # one example says nothing about constancy
    assert M.degeneracy(torch.tensor([[1.0, float("nan")], [1.0, 2.0]])) == (1, False)
    # the tolerance is 1e-6 x (1 + the largest |logit|), measured from the first row
    assert M.degeneracy(torch.tensor([[0.0], [1.5e-6]])) == (0, False)  # above 1e-6 x (1 + 1.5e-6)
    assert M.degeneracy(torch.tensor([[1000.0], [1000.0005]])) == (0, True)  # below 1e-6 x 1001
    assert M.degeneracy(torch.tensor([[0.0], [0.8e-6], [1.6e-6]])) == (0, False)  # 1.6e-6 from the first row


def test_meaningful_needs_a_non_degenerate_model_and_both_risks():
    """What decides whether a trial's risks may be shown (frontiers, reports, Optuna objectives)."""
    ok = {M.NATURAL_RISK: 0.1, M.HYPOCRITICAL_RISK: 0.5, M.DEGENERATE: 0.0}
    assert M.meaningful(ok) and M.meaningful({M.NATURAL_RISK: 0, M.HYPOCRITICAL_RISK: 1})
    assert not M.meaningful(ok | {M.DEGENERATE: 1.0})
    assert not M.meaningful(ok | {M.HYPOCRITICAL_RISK: float("nan")})  # no mistakes: nothing to conceal
    assert not M.meaningful({M.NATURAL_RISK: 0.1})
    assert not M.meaningful(ok | {M.NATURAL_RISK: "0.1"})
