"""APGD: the PGD engine's invariants for every threat model x objective x score, and its strength."""
from __future__ import annotations

import itertools

import pytest
import torch

from helpers import assert_in_ball_and_box, run_on_a_training_model
from hyporay.attacks import OBJECTIVES, THREAT_MODELS, AttackSpec, apgd, make_objective, pgd
from hyporay.attacks.apgd import checkpoints
from hyporay.attacks.common import prepare_attack, start_point

NORMS = sorted(THREAT_MODELS)
EPS = {"linf": 0.1, "l2": 1.0}
# every objective with its own loss; the margin (DLR) score where it is defined
CASES = [(n, o, s) for n, o, s in itertools.product(NORMS, sorted(OBJECTIVES), ("ce", "margin"))
         if not (o == "stability" and s == "margin")]


def _target(objective, y):
    return (y + 1) % 10 if objective == "targeted" else None


def _score_and_success(model, objective, score, x_adv, x, y, target):
    obj = make_objective(objective, score)
    with torch.no_grad():
        if objective == "stability":
            obj.prepare(model(x))
        logits = model(x_adv)
        return obj.score(logits, y, target), obj.success(logits, y, target)


@pytest.fixture(scope="module")
def batch(digits):
    return digits.x_test[:64], digits.y_test[:64]


@pytest.mark.parametrize("norm,objective,score", CASES)
def test_ball_box_modes_grads_and_score_beats_start(bn_cnn, batch, norm, objective, score):
    x, y = batch
    model, target = bn_cnn, _target(objective, y)
    x_adv = run_on_a_training_model(model, lambda: apgd(
        model, x, y, eps=EPS[norm], steps=10, norm=norm, objective=objective, score=score, target=target,
        generator=torch.Generator().manual_seed(3)))
    assert_in_ball_and_box(x_adv, x, EPS[norm], norm)

    # the objective's score at the output beats the start (same draws), unless success was gained
    _, kind, sigma = prepare_attack(x, y, objective, score, target, "auto", None)
    x0 = start_point(x, EPS[norm], THREAT_MODELS[norm], kind, sigma, torch.Generator().manual_seed(3))
    s0, ok0 = _score_and_success(model, objective, score, x0, x, y, target)
    s1, ok1 = _score_and_success(model, objective, score, x_adv, x, y, target)
    assert ((s1 >= s0 - 1e-6) | (ok1 & ~ok0)).all()
    assert ok1.sum() >= ok0.sum() and s1.mean() > s0.mean()


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, sorted(OBJECTIVES))))
def test_eps_zero_is_bit_identical(natural_mlp, batch, norm, objective):
    x, y = batch
    out = apgd(natural_mlp, x, y, eps=0.0, steps=5, norm=norm, objective=objective, target=_target(objective, y))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("norm,objective,score", [("linf", "hypocritical", "margin"), ("l2", "adversarial", "ce"),
                                                  ("linf", "stability", "ce"), ("l2", "targeted", "margin")])
def test_more_restarts_never_help_the_model(naive_mlp, digits, norm, objective, score):
    x, y = digits.x_test[:128], digits.y_test[:128]
    target = _target(objective, y)
    kw = dict(eps=EPS[norm] / 4, steps=8, norm=norm, objective=objective, score=score, target=target)
    one = apgd(naive_mlp, x, y, restarts=1, generator=torch.Generator().manual_seed(5), **kw)
    three = apgd(naive_mlp, x, y, restarts=3, generator=torch.Generator().manual_seed(5), **kw)
    s1, ok1 = _score_and_success(naive_mlp, objective, score, one, x, y, target)
    s3, ok3 = _score_and_success(naive_mlp, objective, score, three, x, y, target)
    assert (ok3 | ~ok1).all(), "a restart lost a success of the first start"
    assert ((ok3 & ~ok1) | (s3 >= s1 - 1e-6)).all()


def test_apgd_conceals_at_least_as_many_mistakes_as_pgd20(natural_mlp, digits):
    """Same budget (20 gradient evaluations, 1 start). At the project's default eps 0.1 both conceal every
    mistake of this model (1.0 = 1.0), so the comparison is made at eps 0.03, where PGD-20 (step eps/4)
    conceals about half of them."""
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        wrong = natural_mlp(x).argmax(1) != y
    xw, yw = x[wrong], y[wrong]
    eps = 0.03
    x_pgd = pgd(natural_mlp, xw, yw, eps=eps, step_size=eps / 4, steps=20, objective="hypocritical",
                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pgd_rate = (natural_mlp(x_pgd).argmax(1) == yw).float().mean().item()
    assert 0 < pgd_rate < 1, "the comparison must not be trivial"
    for score in ("ce", "margin"):
        x_apgd = apgd(natural_mlp, xw, yw, eps=eps, steps=20, objective="hypocritical", score=score,
                      generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            apgd_rate = (natural_mlp(x_apgd).argmax(1) == yw).float().mean().item()
        assert apgd_rate >= pgd_rate, (score, apgd_rate, pgd_rate)


def test_checkpoints_follow_the_paper():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (interval shrinking by 0.03 down to 0.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(20) == [5, 9, 12, 14, 16, 18, 19]
    assert checkpoints(1) == []


def test_step_size_halving_escapes_an_oscillation():
    """A 1-D score with its maximum at 0.3 inside a ball of radius 1 around 0: with the initial step 2 (= 2 eps)
    the iterates bounce between the ball's ends; only the checkpoints' halvings let APGD home in."""

    class Peak(torch.nn.Module):
        def forward(self, x):
            v = x.flatten(1)[:, :1]
            return torch.cat([-(v - 0.3).abs(), torch.zeros_like(v), -torch.ones_like(v)], 1)

    x = torch.full((1, 1), 0.5)
    y = torch.tensor([0])
    out = apgd(Peak(), x, y, eps=0.5, steps=100, objective="hypocritical", random_start="none")
    assert abs(float(out) - 0.3) < 1e-3  # without the halvings: 0.0125 away


def test_spec_dispatch_and_description(natural_mlp, batch):
    x, y = batch
    spec = AttackSpec(eps=0.05, steps=5, method="apgd", score="margin")
    text = spec.describe()
    assert text.startswith("linf eps=0.05") and text.endswith("method=apgd score=margin")
    assert "step=2eps-halving" in text and AttackSpec(eps=0.05).describe().endswith("method=pgd score=ce")
    gen = torch.Generator().manual_seed(1)
    direct = apgd(natural_mlp, x, y, eps=0.05, steps=5, objective="hypocritical", score="margin",
                  generator=torch.Generator().manual_seed(1))
    assert torch.equal(spec.run(natural_mlp, x, y, "hypocritical", generator=gen), direct)
    # the stability attack keeps KL under a margin spec (TRADES/metrics run it with the same spec)
    x_sta = spec.run(natural_mlp, x, y, "stability", generator=torch.Generator().manual_seed(1))
    assert torch.equal(x_sta, apgd(natural_mlp, x, y, eps=0.05, steps=5, objective="stability",
                                   generator=torch.Generator().manual_seed(1)))
    assert spec.as_dict()["method"] == "apgd" and spec.as_dict()["score"] == "margin"


@pytest.mark.parametrize("call,needle", [
    (lambda m, x, y: apgd(m, x, y, eps=0.1, steps=5, objective="stability", score="margin"),
     "score: 'margin' is not defined for objective 'stability'"),
    (lambda m, x, y: pgd(m, x, y, eps=0.1, step_size=0.02, steps=5, objective="stability", score="margin"),
     "score: 'margin' is not defined for objective 'stability'"),
    (lambda m, x, y: apgd(m, x, y, eps=0.1, steps=5, score="dlr"), "score: unknown 'dlr'"),
    (lambda m, x, y: apgd(m, x, y, eps=-0.1, steps=5), "eps: must be a number >= 0"),
    (lambda m, x, y: apgd(m, x, y, eps=0.1, steps=0), "steps: must be an integer >= 1"),
    (lambda m, x, y: apgd(m, x, y, eps=0.1, steps=5, momentum=1.5), "momentum: must be a number in [0, 1]"),
    (lambda m, x, y: apgd(m, x, y, eps=0.1, steps=5, objective="targeted"), "target: required"),
    (lambda m, x, y: apgd(m, x * 3, y, eps=0.1, steps=5), "x: values must lie in [0,1]"),
    (lambda m, x, y: AttackSpec(method="fgsm"), "method: unknown 'fgsm'; allowed: pgd, apgd"),
    (lambda m, x, y: AttackSpec(score="kl"), "score: unknown 'kl'; allowed: ce, margin"),
])
def test_bad_arguments_fail_with_one_line_naming_the_field(natural_mlp, batch, call, needle):
    x, y = batch
    with pytest.raises(ValueError) as err:
        call(natural_mlp, x, y)
    assert needle in str(err.value) and "\n" not in str(err.value)


# --- hyporay audit: "APGD finds no more than PGD (within tolerance)" ----------------------------------------

CHEAP_AUDIT = dict(eps_multiples=(0.0, 1.0), steps_grid=(1, 2), restarts_grid=(1, 2), n_single=4, certify="none")


def test_audit_apgd_vs_pgd_passes_a_converged_pgd_and_flags_a_stalled_one(natural_mlp, digits):
    from hyporay.audit import FLAG, PASS, run_audit

    x, y = digits.x_test[:150], digits.y_test[:150]
    healthy = run_audit(natural_mlp, x, y, spec=AttackSpec(eps=0.1, steps=20), surrogate=None, **CHEAP_AUDIT)
    for direction in ("adversarial", "hypocritical"):
        row = healthy.row(f"apgd_vs_pgd/{direction}")
        assert row.verdict == PASS, row
        assert row.data["method"] == "pgd" and row.data["other"] == "apgd"
    # a PGD whose step is far too small (20 steps of eps/200 reach 0.1 eps): APGD finds what it missed
    stalled = run_audit(natural_mlp, x, y, spec=AttackSpec(eps=0.1, steps=20, step_size=0.1 / 200),
                        surrogate=None, **CHEAP_AUDIT)
    for direction in ("adversarial", "hypocritical"):
        row = stalled.row(f"apgd_vs_pgd/{direction}")
        assert row.verdict == FLAG and "missed" in row.reason, row
    assert stalled.row("apgd_vs_pgd/adversarial").data["other_stronger_by"] > 0.1
    # auditing APGD itself: plain PGD-20 is no stronger
    as_apgd = run_audit(natural_mlp, x, y, spec=AttackSpec(eps=0.1, steps=20, method="apgd"), surrogate=None,
                        **CHEAP_AUDIT)
    assert as_apgd.row("apgd_vs_pgd/adversarial").verdict == PASS
    assert as_apgd.row("apgd_vs_pgd/adversarial").data["other"] == "pgd"


# --- the iteration itself, against a plain per-example reference ------------------------------------------

def _reference_apgd(model, x1, y1, objective, score, target1, eps, steps, norm, rho=0.75, momentum=0.75):
    """APGD as the module docstring states it, one example at a time in plain Python (float64), from x (no random
    start): η = 2ε; z = P(x_k + η·d(∇)); x_{k+1} = P(x_k + a(z - x_k) + (1 - a)(x_k - x_{k-1})) with a = 1 on the
    first step; at a checkpoint w_j halve η when the score rose in fewer than ρ of the steps since the last
    checkpoint, or when η was not halved at the last checkpoint and the best score has not risen since; a halving
    restarts from the best-score point (the first to reach it), without momentum. Returns the best iterate (success
    first, then the higher score). Projection, scores and checkpoints are the library's (tested on their own)."""
    marks = set(checkpoints(steps))
    obj = make_objective(objective, score)
    threat = THREAT_MODELS[norm]

    def f_g(z):
        z = z.detach().requires_grad_(True)
        logits = model(z)
        s = obj.score(logits, y1, target1)
        (g,) = torch.autograd.grad(s.sum(), z)
        return float(s.detach()), g, bool(obj.success(logits.detach(), y1, target1))

    def d(g):
        return g.sign() if norm == "linf" else g / g.flatten().norm().clamp_min(1e-12)

    def proj(z):
        return threat.project(z, x1, eps)

    eta = 2 * eps
    x_k = x_prev = x1.clone()
    f_k, g_k, ok = f_g(x_k)
    best, best_ok, best_f = x_k, ok, f_k
    x_max, f_max, g_max = x_k, f_k, g_k
    rises, last_mark, f_max_at_mark, halved_at_mark = 0, 0, f_max, True
    for k in range(steps):
        a = 1.0 if k == 0 else momentum
        z = proj(x_k + eta * d(g_k))
        x_prev, x_k = x_k, proj(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev))
        f_next, g_k, ok = f_g(x_k)
        if (ok and not best_ok) or (ok == best_ok and f_next > best_f):
            best, best_ok, best_f = x_k, ok, f_next
        rises += f_next > f_k
        f_k = f_next
        if f_k > f_max:
            x_max, f_max, g_max = x_k, f_k, g_k
        if k + 1 in marks:
            halve = rises < rho * (k + 1 - last_mark) or (not halved_at_mark and f_max <= f_max_at_mark)
            if halve:
                eta /= 2
                x_k = x_prev = x_max
                g_k, f_k = g_max, f_max
            halved_at_mark, f_max_at_mark, last_mark, rises = halve, f_max, k + 1, 0
    return best


# (the last three cases were found, by running variants of the reference, to decide on the rules' edges: exactly ρ of
# the steps rising (18 steps: a first span of 4), a later iterate tying the best score, and the stall rule)
@pytest.mark.parametrize("norm,objective,score,eps,steps", [
    ("linf", "hypocritical", "ce", 0.3, 30), ("linf", "adversarial", "margin", 0.3, 30),
    ("l2", "targeted", "margin", 1.2, 30), ("l2", "adversarial", "ce", 1.2, 30),
    ("linf", "hypocritical", "ce", 0.05, 18), ("l2", "adversarial", "margin", 0.3, 18),
    ("l2", "adversarial", "ce", 1.2, 50)])
def test_iteration_matches_a_per_example_reference(norm, objective, score, eps, steps):
    """Step size 2ε halved at the paper's checkpoints, momentum 0.75 (1 on the first step), restarts from the best
    point, best iterate kept: apgd on a batch equals the reference run example by example."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 5)).double()
    x = torch.rand(24, 1, 3, 4, dtype=torch.float64)
    y = torch.randint(0, 5, (24,))
    target = (y + 2) % 5 if objective == "targeted" else None
    assert checkpoints(30) == [7, 13, 18, 21, 24, 27, 28]  # ceil(30 p_j), p = .22 .41 .57 .70 .80 .87 .93 (.99: 30)
    out = apgd(model, x, y, eps=eps, steps=steps, norm=norm, objective=objective, score=score, target=target,
               random_start="none")
    ref = torch.cat([_reference_apgd(model, x[i:i + 1], y[i:i + 1], objective, score,
                                     None if target is None else target[i:i + 1], eps, steps, norm)
                     for i in range(len(x))])
    assert out.dtype == torch.float64
    assert torch.allclose(out, ref, rtol=0, atol=1e-12), (out - ref).abs().flatten(1).amax(1)
    # the case exercises the schedule: with ρ = 0 (only the stall rule halves) or without momentum the outputs
    # differ
    for kw in (dict(rho=0.0), dict(momentum=1.0)):
        assert not torch.allclose(out, apgd(model, x, y, eps=eps, steps=steps, norm=norm, objective=objective,
                                            score=score, target=target, random_start="none", **kw))


def test_checkpoints_of_short_runs():
    # 4 steps: ceil(4p) = 1, 2, 3, 3, 4, ... -> the checkpoints after 1, 2 and 3 iterations
    assert checkpoints(4) == [1, 2, 3]
    assert checkpoints(2) == [1]


def test_rho_and_momentum_take_the_closed_interval(natural_mlp, batch):
    x, y = batch
    for kw in (dict(rho=0.0), dict(rho=1.0), dict(momentum=0.0), dict(momentum=1.0)):
        assert_in_ball_and_box(apgd(natural_mlp, x, y, eps=0.05, steps=3, **kw), x, 0.05, "linf")
    for name, bad in (("rho", True), ("rho", "0.5"), ("momentum", -0.1), ("rho", 1.01)):
        with pytest.raises(ValueError, match=rf"^{name}: must be a number in \[0, 1\], got {bad!r}$"):
            apgd(natural_mlp, x, y, eps=0.05, steps=3, **{name: bad})


def test_spec_passes_every_field_to_apgd(natural_mlp, batch):
    x, y = batch
    target = (y + 3) % 10
    spec = AttackSpec(norm="l2", eps=0.8, steps=6, method="apgd", score="margin", random_start="uniform",
                      restarts=2)
    got = spec.run(natural_mlp, x, y, "targeted", target=target, generator=torch.Generator().manual_seed(5))
    want = apgd(natural_mlp, x, y, eps=0.8, steps=6, norm="l2", objective="targeted", score="margin", target=target,
                random_start="uniform", restarts=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, want)
    # and each field matters here (so the comparison above can fail)
    for kw in (dict(norm="linf"), dict(random_start="none"), dict(restarts=1), dict(target=(y + 4) % 10)):
        other = dict(eps=0.8, steps=6, norm="l2", objective="targeted", score="margin", target=target,
                     random_start="uniform", restarts=2, generator=torch.Generator().manual_seed(5)) | kw
        assert not torch.equal(got, apgd(natural_mlp, x, y, **other)), kw


# --- the margin (DLR) scores, by hand ----------------------------------------------------------------------

def test_margin_scores_are_the_dlr_of_croce_and_hein():
    torch.manual_seed(0)
    logits = torch.randn(40, 6) * 3
    y = torch.randint(0, 6, (40,))
    t = (y + 1) % 6
    for i in range(40):
        z = logits[i].tolist()
        s = sorted(z, reverse=True)
        other_y = max(v for j, v in enumerate(z) if j != y[i])
        other_t = max(v for j, v in enumerate(z) if j != t[i])
        untargeted = s[0] - s[2] + 1e-12
        targeted = s[0] - (s[2] + s[3]) / 2 + 1e-12
        row = logits[i:i + 1]
        adv = make_objective("adversarial", "margin").score(row, y[i:i + 1], None)
        hyp = make_objective("hypocritical", "margin").score(row, y[i:i + 1], None)
        tgt = make_objective("targeted", "margin").score(row, y[i:i + 1], t[i:i + 1])
        assert float(adv) == pytest.approx(-(z[y[i]] - other_y) / untargeted, rel=1e-5)
        assert float(hyp) == pytest.approx((z[y[i]] - other_y) / targeted, rel=1e-5)
        assert float(tgt) == pytest.approx((z[t[i]] - other_t) / targeted, rel=1e-5)


def test_margin_keeps_its_sign_when_the_top_three_logits_tie():
    """z_pi1 = z_pi3: the DLR's small constant keeps the denominator positive, so a point the model gets wrong
    (y below the three tied logits) still scores as a success for the adversary and a failure for the false friend."""
    logits, y = torch.tensor([[0.0, 1.0, 1.0, 1.0]]), torch.tensor([0])
    assert float(make_objective("adversarial", "margin").score(logits, y, None)) > 0
    assert float(make_objective("hypocritical", "margin").score(torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]]), y,
                                                                  None)) < 0


def test_margin_needs_enough_classes():
    y = torch.zeros(2, dtype=torch.long)
    make_objective("adversarial", "margin").score(torch.randn(2, 3), y, None)  # 3 classes suffice untargeted
    make_objective("hypocritical", "margin").score(torch.randn(2, 4), y, None)  # 4 targeted
    for objective, k, need in (("adversarial", 2, 3), ("hypocritical", 3, 4), ("targeted", 3, 4)):
        with pytest.raises(ValueError) as err:
            make_objective(objective, "margin").score(torch.randn(2, k), y, y)
        assert str(err.value) == f"score: 'margin' needs at least {need} classes for this objective, got {k}"


def test_the_start_and_its_sigma_are_the_ones_asked_for(natural_mlp, batch):
    """Each start kind gives its own draws (same generator seed), and a gaussian start uses the sigma given."""
    x, y = batch

    def run(**kw):
        return apgd(natural_mlp, x, y, eps=0.1, steps=2, generator=torch.Generator().manual_seed(4), **kw)

    outs = {kind: run(random_start=kind) for kind in ("none", "uniform", "gaussian")}
    assert not torch.equal(outs["none"], outs["uniform"]) and not torch.equal(outs["uniform"], outs["gaussian"])
    assert not torch.equal(outs["none"], outs["gaussian"])
    assert not torch.equal(run(random_start="gaussian", sigma=0.05), outs["gaussian"])  # default sigma 0.01
    assert torch.equal(run(random_start="gaussian", sigma=0.01), outs["gaussian"])
    with pytest.raises(ValueError, match=r"^sigma: must be a number >= 0, got -0.1$"):
        run(random_start="gaussian", sigma=-0.1)


@pytest.mark.parametrize("method", ["pgd", "apgd"])
def test_active_and_decided_need_early_stop_and_a_bool_mask_of_shape_n(natural_mlp, batch, method):
    x, y = batch
    kw = dict(eps=0.1, steps=2) if method == "apgd" else dict(eps=0.1, step_size=0.05, steps=2)
    attack = apgd if method == "apgd" else pgd
    mask = torch.ones(len(x), dtype=torch.bool)
    decided = lambda idx, logits: torch.ones(len(idx), dtype=torch.bool)  # noqa: E731
    for extra in (dict(active=mask), dict(decided=decided), dict(active=mask, decided=decided)):
        with pytest.raises(ValueError, match=r"^active, decided: need early_stop \(an integer >= 0\)$"):
            attack(natural_mlp, x, y, **kw, **extra)
    for bad in (mask.float(), torch.ones(len(x) + 1, dtype=torch.bool), mask[:, None]):
        with pytest.raises(ValueError, match=rf"^active: must be a bool tensor of shape \({len(x)},\), got "):
            attack(natural_mlp, x, y, early_stop=0, active=bad, **kw)
