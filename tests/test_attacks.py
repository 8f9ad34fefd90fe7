"""Invariants of the PGD engine, for every threat model x objective, on real digits models."""
from __future__ import annotations

import itertools

import pytest
import torch

from hyporay.attacks import OBJECTIVES, THREAT_MODELS, fgsm, pgd

NORMS = sorted(THREAT_MODELS)
OBJS = sorted(OBJECTIVES)
EPS = {"linf": 0.1, "l2": 1.0}


def _kw(norm, objective, y, num_classes=10):
    kw = dict(eps=EPS[norm], step_size=EPS[norm] / 4, steps=10, norm=norm, objective=objective)
    if objective == "targeted":
        kw["target"] = (y + 1) % num_classes
    return kw


def _success(model, x_adv, x, y, objective, target=None):
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
        clean = model(x).argmax(1)
    return {"adversarial": pred != y, "hypocritical": pred == y, "targeted": pred == target,
            "stability": pred != clean}[objective]


@pytest.fixture(scope="module")
def batch(digits):
    return digits.x_test[:256], digits.y_test[:256]


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, OBJS)))
def test_ball_box_mode_and_grads(bn_cnn, batch, norm, objective):
    x, y = batch
    model = bn_cnn
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen.eval()  # a sub-module deliberately in eval mode must stay so
    first = next(model.parameters())
    first.requires_grad_(False)  # a deliberately frozen parameter must stay frozen
    try:
        x_adv = pgd(model, x, y, **_kw(norm, objective, y))
        assert model.training and not frozen.training
        assert all(m.training for m in model.modules() if m is not frozen)
        assert not first.requires_grad
        assert all(p.requires_grad for p in model.parameters() if p is not first)
        assert all(p.grad is None for p in model.parameters())
    finally:
        first.requires_grad_(True)
        model.eval()
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    size = THREAT_MODELS[norm].norm(x_adv - x)
    assert (size <= EPS[norm] + 1e-6).all()
    assert (size > 1e-3).any(), "the attack never moved"


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, OBJS)))
def test_eps_zero_changes_nothing(natural_mlp, batch, norm, objective):
    x, y = batch
    kw = _kw(norm, objective, y)
    kw["eps"] = 0.0
    x_adv = pgd(natural_mlp, x, y, **kw)
    assert torch.equal(x_adv, x)
    with torch.no_grad():
        assert torch.equal(natural_mlp(x_adv).argmax(1), natural_mlp(x).argmax(1))


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, OBJS)))
def test_restarts_never_help_the_model(naive_mlp, batch, norm, objective):
    x, y = batch
    kw = _kw(norm, objective, y)
    kw["steps"] = 3  # a weak attack leaves room for restarts to matter
    one = pgd(naive_mlp, x, y, restarts=1, generator=torch.Generator().manual_seed(5), **kw)
    many = pgd(naive_mlp, x, y, restarts=4, generator=torch.Generator().manual_seed(5), **kw)
    s1 = _success(naive_mlp, one, x, y, objective, kw.get("target"))
    s4 = _success(naive_mlp, many, x, y, objective, kw.get("target"))
    assert (s4 | ~s1).all(), "an example that one start broke was lost with more restarts"
    assert s4.sum() >= s1.sum()


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, OBJS)))
def test_best_iterate_more_steps_never_help_the_model(naive_mlp, batch, norm, objective):
    x, y = batch
    kw = _kw(norm, objective, y)
    rates = []
    for steps in (1, 5, 20):
        kw["steps"] = steps
        x_adv = pgd(naive_mlp, x, y, best_iterate=True, generator=torch.Generator().manual_seed(3), **kw)
        rates.append(_success(naive_mlp, x_adv, x, y, objective, kw.get("target")))
    for fewer, more in zip(rates, rates[1:]):
        assert (more | ~fewer).all()


def test_more_steps_never_lower_hypocritical_success(natural_mlp, digits):
    """Last iterate (the paper's protocol): more steps never lower the success rate beyond noise."""
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        wrong = natural_mlp(x).argmax(1) != y
    xw, yw = x[wrong], y[wrong]
    rates = []
    for steps in (1, 5, 20, 50):
        x_hyp = pgd(natural_mlp, xw, yw, eps=0.1, step_size=0.025, steps=steps, objective="hypocritical",
                    generator=torch.Generator().manual_seed(0))
        rates.append(float(_success(natural_mlp, x_hyp, xw, yw, "hypocritical").float().mean()))
    noise = 1.0 / len(yw)
    assert all(b >= a - noise for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] > 0.8, rates


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_never_weaker_than_fgsm(natural_mlp, digits, norm):
    x, y = digits.x_test, digits.y_test
    eps = EPS[norm]
    x_f = fgsm(natural_mlp, x, y, eps=eps, norm=norm)
    x_p = pgd(natural_mlp, x, y, eps=eps, step_size=eps / 4, steps=20, norm=norm,
              generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acc_f = (natural_mlp(x_f).argmax(1) == y).float().mean()
        acc_p = (natural_mlp(x_p).argmax(1) == y).float().mean()
    assert acc_p <= acc_f + 0.01
    assert acc_f < 0.9  # FGSM itself does something


def test_hypocritical_moves_mistakes_to_the_true_label_and_adversarial_away(natural_mlp, digits):
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        clean = natural_mlp(x).argmax(1)
    x_adv = pgd(natural_mlp, x, y, eps=0.1, step_size=0.025, steps=20)
    x_hyp = pgd(natural_mlp, x, y, eps=0.1, step_size=0.025, steps=20, objective="hypocritical")
    with torch.no_grad():
        acc_adv = (natural_mlp(x_adv).argmax(1) == y).float().mean()
        acc_hyp = (natural_mlp(x_hyp).argmax(1) == y).float().mean()
    acc = (clean == y).float().mean()
    assert acc_adv < acc - 0.3 and acc_hyp >= acc


@pytest.mark.parametrize("kwargs,field", [
    (dict(norm="l3"), "norm"),
    (dict(objective="friendly"), "objective"),
    (dict(eps=-0.1), "eps"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(step_size=-1.0), "step_size"),
    (dict(restarts=0), "restarts"),
    (dict(random_start="sphere"), "random_start"),
    (dict(objective="targeted"), "target"),
])
def test_bad_arguments_name_the_field(natural_mlp, batch, kwargs, field):
    x, y = batch
    kw = dict(eps=0.1, step_size=0.025, steps=2)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        pgd(natural_mlp, x, y, **kw)


def test_inputs_outside_unit_box_are_rejected(natural_mlp, batch):
    x, y = batch
    with pytest.raises(ValueError, match="^x:"):
        pgd(natural_mlp, x * 255, y, eps=0.1, step_size=0.025, steps=1)
