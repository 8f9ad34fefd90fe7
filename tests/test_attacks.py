"""Invariants of the PGD engine, for every threat model x objective, on real digits models."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_in_ball_and_box, run_on_a_training_model
from hyporay.attacks import OBJECTIVES, THREAT_MODELS, ThreatModel, fgsm, pgd

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
    x_adv = run_on_a_training_model(bn_cnn, lambda: pgd(bn_cnn, x, y, **_kw(norm, objective, y)))
    assert_in_ball_and_box(x_adv, x, EPS[norm], norm)


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
    """Guards the restart merge (per example the successful restart is kept, ties to the higher score) and
    each objective's success test it relies on: with a weak attack (one short step from a uniform start) the
    restarts really differ, so 8 restarts must succeed on every example that restart 1 (the same draws) broke,
    on strictly more examples in all, and where both fail, with a score at least restart 1's."""
    x, y = batch
    kw = {**_kw(norm, objective, y), "steps": 1, "random_start": "uniform"}
    kw["step_size"] = kw["eps"] / 20
    one = pgd(naive_mlp, x, y, restarts=1, generator=torch.Generator().manual_seed(5), **kw)
    many = pgd(naive_mlp, x, y, restarts=8, generator=torch.Generator().manual_seed(5), **kw)
    two = pgd(naive_mlp, x, y, restarts=2, generator=torch.Generator().manual_seed(5), **kw)
    s1 = _success(naive_mlp, one, x, y, objective, kw.get("target"))
    s8 = _success(naive_mlp, many, x, y, objective, kw.get("target"))
    s2 = _success(naive_mlp, two, x, y, objective, kw.get("target"))
    assert (s8 | ~s1).all(), "an example that one start broke was lost with more restarts"
    assert (s2 | ~s1).all() and (s8 | ~s2).all()
    assert not torch.equal(two, one), "the second restart was never used"
    assert s8.sum() > s1.sum(), "restarts found nothing more: this setting cannot see a broken merge"
    both_fail = ~s1 & ~s8
    score1 = _score(naive_mlp, one, x, y, objective, kw.get("target"))[both_fail]
    score8 = _score(naive_mlp, many, x, y, objective, kw.get("target"))[both_fail]
    assert both_fail.any() and bool((score8 >= score1 - 1e-6).all())


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
    (dict(eps=True), "eps"),
    (dict(steps=True), "steps"),
    (dict(sigma=-0.1), "sigma"),
    (dict(sigma=True), "sigma"),
    (dict(sigma="0.1"), "sigma"),
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


# --- the attack does something beyond its random start -------------------------------------------------------

def _score(model, x_pert, x, y, objective, target):
    """Each objective's score written out from its definition (reference §1-2), independent of
    hyporay.attacks.objectives: the attack must raise it."""
    with torch.no_grad():
        logits = model(x_pert).double()
        if objective == "adversarial":
            return F.cross_entropy(logits, y, reduction="none")
        if objective == "hypocritical":
            return -F.cross_entropy(logits, y, reduction="none")
        if objective == "targeted":
            return -F.cross_entropy(logits, target, reduction="none")
        log_p, log_q = F.log_softmax(model(x).double(), 1), F.log_softmax(logits, 1)
        return (log_p.exp() * (log_p - log_q)).sum(1)  # stability: KL(p(x) || p(x'))


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, OBJS)))
def test_the_attack_improves_its_objective_over_its_start(naive_mlp, batch, norm, objective):
    """Guards against a reversed or removed step, a sign error in an objective (ascending CE where it must
    descend), and a broken projection/step that leaves only the random start: the objective's score, computed
    here from its definition, is higher at x' than at the (seeded) start point for (almost) every example.
    The start is read by running the same attack with step size 0 and the same generator state. Every
    objective starts uniform in the ball here: from the stability attack's own start (x + 0.001·N(0,1), next to
    the KL's minimum at x) even a step that descends the KL overshoots to a higher KL."""
    x, y = batch
    kw = {**_kw(norm, objective, y), "random_start": "uniform"}
    start = pgd(naive_mlp, x, y, **{**kw, "step_size": 0.0}, generator=torch.Generator().manual_seed(3))
    x_adv = pgd(naive_mlp, x, y, **kw, generator=torch.Generator().manual_seed(3))
    target = kw.get("target")
    gain = _score(naive_mlp, x_adv, x, y, objective, target) - _score(naive_mlp, start, x, y, objective, target)
    assert float((gain > 0).double().mean()) >= 0.99, f"{objective}: the score fell on {int((gain <= 0).sum())} examples"
    assert float(gain.mean()) > 0


class _Flat(nn.Module):
    """Logits that do not depend on the input (zero input gradient): PGD steps cannot move, so the attack
    returns its start point (projected into the ball and [0,1]) and the start's distribution can be read off."""

    def __init__(self, k: int = 10):
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-1, 1, k))

    def forward(self, x):
        return (x.flatten(1) * 0).sum(1, keepdim=True) + self.bias


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("objective,kind,sigma", [
    ("adversarial", "uniform", None), ("hypocritical", "gaussian", 0.01), ("targeted", "gaussian", 0.01),
    ("stability", "gaussian", 0.001)])
def test_auto_random_start_has_the_documented_shape_and_scale(norm, objective, kind, sigma):
    """Guards the README's per-objective random_start="auto": adversarial starts uniform in the ball,
    hypocritical and targeted at x + 0.01·N(0,1) (False-Friends), stability at x + 0.001·N(0,1) (official
    TRADES). Swapping the kinds or the scales, or dropping the start, fails a Kolmogorov-Smirnov test against
    the documented distribution (and against the others')."""
    from scipy import stats

    n, eps = 2000, EPS[norm]
    x = torch.full((n, 1, 8, 8), 0.5)  # mid-grey: no clamping to [0,1] for any start used here
    y = torch.zeros(n, dtype=torch.long)
    kw = dict(eps=eps, step_size=eps / 4, steps=2, norm=norm, objective=objective, random_start="auto",
              generator=torch.Generator().manual_seed(0))
    if objective == "targeted":
        kw["target"] = torch.ones_like(y)
    delta = (pgd(_Flat(), x, y, **kw) - x).double()
    d = delta[0].numel()
    p = lambda sample, dist, *args: stats.kstest(sample.flatten().numpy(), dist, args=args).pvalue  # noqa: E731
    if kind == "gaussian":
        assert p(delta[:200], "norm", 0, sigma) > 1e-3  # 12,800 coordinates
        assert p(delta[:200], "norm", 0, sigma * 10) < 1e-6 and p(delta[:200], "norm", 0, sigma / 10) < 1e-6
        assert float(delta.std()) == pytest.approx(sigma, rel=0.03)
    elif norm == "linf":  # uniform in [-eps, eps]^d
        assert p(delta[:200], "uniform", -eps, 2 * eps) > 1e-3
        assert float(delta.abs().max()) <= eps + 1e-6 and float(delta.abs().max()) > 0.99 * eps
    else:  # uniform in the l2 ball: direction uniform, P(||δ|| <= r) = (r/eps)^d
        r = delta.flatten(1).norm(dim=1) / eps
        assert float(r.max()) <= 1 + 1e-6
        assert stats.kstest((r ** d).numpy(), "uniform").pvalue > 1e-3
        u = delta.flatten(1) / delta.flatten(1).norm(dim=1, keepdim=True)
        assert float(u.mean(0).abs().max()) < 4 / math.sqrt(n)  # no preferred direction


def test_targeted_attack_reaches_its_target_on_a_trained_models_mistakes(natural_mlp, digits):
    """Guards against a targeted attack that moves away from its target (+CE instead of -CE), which bounds
    like 0 <= rate <= 1 cannot see: on the misclassified test points of a trained model, toward every label
    other than the true label and the clean prediction, the attack reaches the target far more often than
    the clean point does (never, by the choice of labels) and lowers the CE to the target on every example."""
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        pred = natural_mlp(x).argmax(1)
    wrong = pred != y
    xw, yw, pw = x[wrong], y[wrong], pred[wrong]
    hits, total = 0, 0
    for label in range(10):
        keep = (yw != label) & (pw != label)
        t = torch.full_like(yw[keep], label)
        x_t = pgd(natural_mlp, xw[keep], yw[keep], eps=0.1, step_size=0.025, steps=20, objective="targeted",
                  target=t, random_start="none")
        with torch.no_grad():
            hits += int((natural_mlp(x_t).argmax(1) == t).sum())
            ce0 = F.cross_entropy(natural_mlp(xw[keep]), t, reduction="none")
            ce1 = F.cross_entropy(natural_mlp(x_t), t, reduction="none")
        assert bool((ce1 < ce0).all()), label
        total += len(t)
    assert total > 50
    # measured 29/88 = 0.33 at eps 0.1 (the hypocritical attack conceals > 0.8 of the same mistakes: claim 5);
    # an attack moving away from its target reaches ~0
    assert hits / total > 0.15, f"targeted success {hits}/{total}"


# --- the pieces of the engine, by hand ---------------------------------------------------------------------------

@pytest.mark.parametrize("norm", NORMS)
def test_threat_model_step_projection_and_norm_by_hand(norm):
    """Guards each threat model's arithmetic (reference §3): l_inf steps α·sign(∇) and clips to the box
    [x-ε, x+ε] ∩ [0,1]; l_2 steps α·∇/||∇||₂ per example and renormalises δ to ||δ||₂ <= ε; ``norm`` is the
    per-example size in that norm; a batch of one example works."""
    tm = THREAT_MODELS[norm]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 4, 4, generator=g) * 0.8 + 0.1
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # on the faces of [0,1]: the box clamp matters there
    grad = torch.randn(5, 1, 4, 4, generator=g)
    grad[0, 0, 0, 0] = 0.0
    alpha, eps = 0.03, {"linf": 0.05, "l2": 0.3}[norm]
    stepped = tm.step(x.clone(), grad.clone(), alpha, None) - x
    delta = torch.randn(5, 1, 4, 4, generator=g)
    size = tm.norm(delta)
    assert size.shape == (5,)
    z = x + delta
    projected = tm.projector(x, eps)(z.clone())
    assert torch.allclose(tm.project(z, x, eps), projected, atol=1e-6)
    # the base class's projector (what a new threat model without its own gets) is the same projection
    assert torch.allclose(ThreatModel.projector(tm, x, eps)(z.clone()), projected, atol=1e-6)
    if norm == "linf":
        assert torch.equal(stepped, alpha * grad.sign()) or torch.allclose(stepped, alpha * grad.sign(), atol=1e-7)
        assert torch.allclose(size, delta.flatten(1).abs().max(1).values)
        box = torch.minimum(torch.maximum(z, (x - eps).clamp(min=0)), (x + eps).clamp(max=1))
        assert torch.allclose(projected, box, atol=1e-7)
    else:
        unit = grad.flatten(1) / grad.flatten(1).norm(dim=1, keepdim=True)
        assert torch.allclose(stepped.flatten(1), alpha * unit, atol=1e-6)
        assert torch.allclose(size, delta.flatten(1).norm(dim=1))
        d = delta.flatten(1)
        want = (x.flatten(1) + d * (eps / d.norm(dim=1, keepdim=True)).clamp(max=1)).clamp(0, 1)
        assert torch.allclose(projected.flatten(1), want, atol=1e-6)
        assert torch.allclose(tm.project_delta(delta.clone(), eps).flatten(1).norm(dim=1),
                              d.norm(dim=1).clamp(max=eps), atol=1e-6)
    assert projected.min() >= 0 and projected.max() <= 1 and (projected == 0).any() and (projected == 1).any()
    one = tm.uniform(x[:1], eps, g)  # a batch of a single example
    assert one.shape == x[:1].shape and float(tm.norm(one)) <= eps + 1e-6


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, ["adversarial", "hypocritical", "targeted"])))
def test_fgsm_is_one_full_step_from_the_clean_point(natural_mlp, batch, norm, objective):
    """Guards fgsm (the audit's single-step reference): no random start, one step of size ε along the
    objective's ascent direction, written out by hand here, then the projection. (Not for the stability
    objective: its gradient at x' = x is zero up to rounding, so a single step from x is noise.)"""
    x, y = batch
    target = (y + 1) % 10 if objective == "targeted" else None
    x_f = fgsm(natural_mlp, x, y, eps=EPS[norm], norm=norm, objective=objective, target=target)
    xr = x.clone().requires_grad_(True)
    ce = F.cross_entropy(natural_mlp(xr), target if objective == "targeted" else y, reduction="sum")
    (g,) = torch.autograd.grad(ce if objective == "adversarial" else -ce, xr)
    tm = THREAT_MODELS[norm]
    want = tm.projector(x, EPS[norm])(tm.step(x.clone(), g, EPS[norm], None))
    assert torch.allclose(x_f, want, atol=1e-6)
    assert all(p.grad is None for p in natural_mlp.parameters())
    if norm == "linf" and objective == "adversarial":  # the defaults: l_inf, adversarial
        assert torch.equal(fgsm(natural_mlp, x, y, eps=EPS[norm]), x_f)


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, OBJS)))
def test_same_generator_gives_the_same_attack_whatever_the_global_rng(naive_mlp, batch, norm, objective):
    """Guards reproducibility: every random draw of an attack (each restart's start) comes from the generator
    passed in, never from the global RNG; another seed gives another result."""
    x, y = batch
    kw = {**_kw(norm, objective, y), "restarts": 2}
    torch.manual_seed(1)
    a = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(4), **kw)
    torch.manual_seed(2)
    b = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(4), **kw)
    c = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("norm", NORMS)
def test_argument_spellings_and_defaults(naive_mlp, batch, norm):
    """Guards the documented spellings and defaults: random_start True = "auto", False and None = "none",
    restarts 1, "gaussian" with no sigma = 0.01 (an explicit sigma overrides the auto one), and AttackSpec.run =
    pgd with every field of the spec (norm, restarts, best iterate)."""
    from hyporay.attacks import AttackSpec

    x, y = batch
    kw = dict(eps=EPS[norm], step_size=EPS[norm] / 4, steps=2, norm=norm, objective="hypocritical")

    def run(**extra):
        return pgd(naive_mlp, x, y, **{**kw, **extra}, generator=torch.Generator().manual_seed(3))

    assert torch.equal(run(random_start=True), run(random_start="auto"))
    assert torch.equal(run(random_start=False), run(random_start="none"))
    assert torch.equal(run(random_start=None), run(random_start="none"))
    assert not torch.equal(run(random_start="auto"), run(random_start="none"))
    assert torch.equal(run(), run(restarts=1))
    assert torch.equal(run(random_start="gaussian"), run(random_start="gaussian", sigma=0.01))
    assert torch.equal(run(sigma=0.05), run(random_start="gaussian", sigma=0.05))
    assert not torch.equal(run(sigma=0.05), run())
    spec = AttackSpec(norm=norm, eps=EPS[norm], steps=2, restarts=2, best_iterate=True, random_start="uniform")
    direct = pgd(naive_mlp, x, y, eps=spec.eps, step_size=spec.alpha, steps=2, norm=norm, objective="adversarial",
                 restarts=2, best_iterate=True, random_start="uniform", generator=torch.Generator().manual_seed(3))
    assert torch.equal(spec.run(naive_mlp, x, y, "adversarial", generator=torch.Generator().manual_seed(3)), direct)
    plain = pgd(naive_mlp, x, y, eps=spec.eps, step_size=spec.alpha, steps=2, norm=norm, objective="adversarial",
                random_start="uniform", generator=torch.Generator().manual_seed(3))
    assert not torch.equal(direct, plain)  # restarts and best iterate change the result here


def test_input_and_target_errors(natural_mlp, batch):
    x, y = batch
    kw = dict(eps=0.1, step_size=0.025, steps=1)
    with pytest.raises(ValueError, match=r"^x: must be a floating-point tensor in \[0,1\], got dtype torch.uint8$"):
        pgd(natural_mlp, (x * 255).to(torch.uint8), y, **kw)
    over = x.clone()
    over[0, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"^x: values must lie in \[0,1\]"):
        pgd(natural_mlp, over, y, **kw)
    with pytest.raises(ValueError, match=r"^target: required for objective 'targeted' \(int64 labels, shape N\)$"):
        pgd(natural_mlp, x, y, objective="targeted", **kw)
    with pytest.raises(ValueError, match=r"^target: must have the shape of y \(256,\), got \(3,\)$"):
        pgd(natural_mlp, x, y, objective="targeted", target=y[:3], **kw)
    with pytest.raises(ValueError, match=r"^random_start: unknown 'sphere'; allowed: auto, none, uniform, gaussian$"):
        pgd(natural_mlp, x, y, random_start="sphere", **kw)
    pgd(natural_mlp, x, y, random_start="gaussian", sigma=0.0, **kw)  # sigma 0 and large sigmas are allowed
    pgd(natural_mlp, x, y, random_start="gaussian", sigma=2, **kw)


def test_attack_spec_reports_its_threat_model():
    """Guards the line every reported number carries (README) and the dict logged with it."""
    from hyporay.attacks import AttackSpec

    spec = AttackSpec(norm="linf", eps=8 / 255, steps=20, restarts=2)
    assert spec.describe() == ("linf eps=0.03137 (8/255) steps=20 step=0.007843 restarts=2 start=auto method=pgd "
                               "score=ce")
    best = AttackSpec(norm="l2", eps=0.2, steps=10, step_size=0.1, best_iterate=True, random_start="none")
    assert best.describe() == ("l2 eps=0.2 (51/255) steps=10 step=0.1 restarts=1 start=none best-iterate method=pgd "
                               "score=ce")
    assert spec.as_dict() == {"norm": "linf", "eps": 8 / 255, "steps": 20, "step_size": 2 / 255, "restarts": 2,
                              "random_start": "auto", "best_iterate": False, "method": "pgd", "score": "ce", "early_stop": None}


def test_attack_spec_validates_on_construction():
    from hyporay.attacks import AttackSpec

    with pytest.raises(ValueError, match=r"^random_start: unknown 'sphere'"):
        AttackSpec(random_start="sphere")
    with pytest.raises(ValueError, match=r"^norm: unknown 'l3'"):
        AttackSpec(norm="l3")
    with pytest.raises(ValueError, match=r"^restarts: must be an integer >= 1"):
        AttackSpec(restarts=0)
    with pytest.raises(ValueError, match=r"^step_size: must be a number >= 0, got -0.1$"):
        AttackSpec(step_size=-0.1)


def test_unknown_names_list_the_known_ones(natural_mlp, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"^norm: unknown 'l3'; known: l2, linf$"):
        pgd(natural_mlp, x, y, eps=0.1, step_size=0.025, steps=1, norm="l3")
    with pytest.raises(ValueError, match=r"^objective: unknown 'x'; known: adversarial, hypocritical, stability, "
                                         r"targeted$"):
        pgd(natural_mlp, x, y, eps=0.1, step_size=0.025, steps=1, objective="x")


def test_attack_spec_run_passes_score_target_and_best_iterate_to_pgd(natural_mlp, batch):
    """One restart (so only best_iterate turns tracking on), a full-ε step (so the last iterate is not the best),
    the targeted margin score: the spec's run is pgd with exactly these, and each of them changes the result."""
    from hyporay.attacks import AttackSpec

    x, y = batch
    target = (y + 1) % 10
    spec = AttackSpec(eps=0.1, step_size=0.1, steps=5, best_iterate=True, score="margin")
    kw = dict(eps=0.1, step_size=0.1, steps=5, objective="targeted", target=target, best_iterate=True,
              score="margin")
    got = spec.run(natural_mlp, x, y, "targeted", target=target, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, pgd(natural_mlp, x, y, **kw, generator=torch.Generator().manual_seed(3)))
    for change in (dict(best_iterate=False), dict(score="ce"), dict(target=(y + 2) % 10)):
        other = pgd(natural_mlp, x, y, **(kw | change), generator=torch.Generator().manual_seed(3))
        assert not torch.equal(got, other), change


def test_step_size_none_is_a_quarter_of_eps(natural_mlp, batch):
    x, y = batch
    g = torch.Generator
    assert torch.equal(pgd(natural_mlp, x, y, eps=0.1, step_size=None, steps=3, generator=g().manual_seed(1)),
                       pgd(natural_mlp, x, y, eps=0.1, step_size=0.025, steps=3, generator=g().manual_seed(1)))


def test_make_objective_defaults_and_messages():
    from hyporay.attacks import make_objective

    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.equal(make_objective("adversarial").score(logits, y, None),
                       torch.nn.functional.cross_entropy(logits, y, reduction="none"))  # default score: ce
    for call, message in (
            (lambda: make_objective("x"), "objective: unknown 'x'; known: adversarial, hypocritical, stability, "
                                          "targeted"),
            (lambda: make_objective("adversarial", "dlr"), "score: unknown 'dlr'; allowed: ce, margin"),
            (lambda: make_objective("stability", "margin"), "score: 'margin' is not defined for objective "
                                                            "'stability' (it ascends KL(p(x) || p(x'))); allowed "
                                                            "there: ce")):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message


@pytest.mark.parametrize("method,early_stop,norm,objective",
                         [(m, e, n, o) for m, stops in (("pgd", (None, 0, 1)), ("apgd", (None, 0)))
                          for e in stops for n in NORMS for o in ("hypocritical", "stability")])
def test_a_caller_inside_no_grad_gets_the_same_attack(natural_mlp, batch, method, early_stop, norm, objective):
    """The attacks take gradients w.r.t. the input whatever the caller's grad mode (an evaluation written inside
    ``torch.no_grad()``): the same points, bit for bit, and the grad mode is the caller's again afterwards."""
    from hyporay.attacks import apgd

    x, y = batch[0][:64], batch[1][:64]
    attack = pgd if method == "pgd" else apgd
    kw = {k: v for k, v in _kw(norm, objective, y).items() if not (method == "apgd" and k == "step_size")}

    def run():
        return attack(natural_mlp, x, y, early_stop=early_stop, generator=torch.Generator().manual_seed(3), **kw)

    plain = run()
    with torch.no_grad():
        inside = run()
        assert not torch.is_grad_enabled()
    assert torch.equal(inside, plain) and not torch.equal(plain, x)


@pytest.mark.parametrize("restarts,best_iterate", [(1, False), (2, False), (1, True)])
def test_result_without_early_stop_names_the_attacks_steps(natural_mlp, batch, restarts, best_iterate):
    """``return_result`` without early stop: ``steps`` is the attack's K whichever path returns (last iterate, or
    the best over restarts/iterates), so GAIRAT's κ (K where no visited point succeeded) is defined."""
    x, y = batch[0][:32], batch[1][:32]
    res = pgd(natural_mlp, x, y, eps=0.1, step_size=0.025, steps=5, restarts=restarts, best_iterate=best_iterate,
              return_result=True, generator=torch.Generator().manual_seed(0))
    assert res.steps == 5
    assert torch.equal(res.kappa, torch.where(res.first_success >= 0, res.first_success, 5))
