"""The per-example early stop of the PGD engine (``pgd(early_stop=τ)``) and the pass counter (``hyporay.passes``):
hand-computed trajectories on a one-pixel model, and the attack invariants on real digits models."""
from __future__ import annotations

import functools
import itertools

import pytest
import torch
from torch import nn

from helpers import assert_in_ball_and_box, run_on_a_training_model
from hyporay import passes
from hyporay.attacks import OBJECTIVES, THREAT_MODELS, AttackSpec, apgd, pgd

NORMS = sorted(THREAT_MODELS)
OBJS = sorted(OBJECTIVES)
EPS = {"linf": 0.1, "l2": 1.0}


class Threshold(nn.Module):
    """Class 1 iff the first pixel exceeds 0.5: logits (0, x - 0.5). The adversarial attack on y = 0 raises the
    pixel by the step size each step (the CE gradient is positive), so every visited point is known by hand."""

    def forward(self, x):
        z = x.flatten(1)[:, :1]
        return torch.cat([torch.zeros_like(z), z - 0.5], 1)


# first pixel 0.25: visits 0.25 0.35 0.45 0.55 (first success at step 3; the ball ends at 0.55)
# 0.45: 0.45 0.55 ... (step 1); 0.6: already wrong at the start (step 0); 0.05: at most 0.35, never
X = torch.tensor([[0.25], [0.45], [0.6], [0.05]])
Y = torch.zeros(4, dtype=torch.long)
HAND = dict(eps=0.3, step_size=0.1, steps=5, random_start="none", return_result=True)


def _close(t, values):
    return torch.allclose(t.flatten(), torch.tensor(values), atol=1e-6)


def test_early_stop_zero_returns_each_first_success_by_hand():
    with passes.counting() as spent:
        res = pgd(Threshold(), X, Y, early_stop=0, **HAND)
    assert _close(res.x, [0.55, 0.55, 0.6, 0.35])  # first successes; the never-broken one: its best point
    assert res.first_success.tolist() == [3, 1, 0, -1] and res.kappa.tolist() == [3, 1, 0, 5]
    assert res.success.tolist() == [True, True, True, False] and res.restart.tolist() == [0, 0, 0, -1]
    # forwards at the visited points up to the stop (the last iterate included for the never-broken one);
    # a backward on every batch that still had someone to move (the leaver's row is part of it)
    assert res.passes.tolist() == [4 + 4, 2 + 2, 1 + 1, 6 + 5]
    assert (spent.forward, spent.backward) == (13, 12)
    twice = pgd(Threshold(), X, Y, early_stop=0, restarts=2, **HAND)  # the second start: only the undecided one
    assert torch.equal(twice.x, res.x) and twice.passes.tolist() == [8, 4, 2, 22]


def test_fat_rule_stops_tau_steps_after_the_first_success_by_hand():
    res = pgd(Threshold(), X, Y, early_stop=1, **HAND)
    assert _close(res.x, [0.55, 0.65, 0.7, 0.35])  # x_{k+1} (clamped to the ball); never broken: x_K
    assert res.first_success.tolist() == [3, 1, 0, -1]
    assert res.passes.tolist() == [5 + 5, 3 + 3, 2 + 2, 6 + 5]
    late = pgd(Threshold(), X, Y, early_stop=4, **HAND)  # τ past the budget: stops at the last iterate
    assert _close(late.x, [0.55, 0.75, 0.9, 0.35])
    kw = {k: v for k, v in HAND.items() if k != "return_result"}
    with passes.counting() as spent:  # no result asked: the last iterate is returned unread (no forward there)
        assert torch.equal(pgd(Threshold(), X, Y, early_stop=1, **kw), res.x)
    assert (spent.forward, spent.backward) == (5 + 3 + 2 + 5, 5 + 3 + 2 + 5)


def test_no_early_stop_is_todays_attack_and_reports_the_same_first_success():
    kw = {k: v for k, v in HAND.items() if k != "return_result"}
    with passes.counting() as spent:
        x_last = pgd(Threshold(), X, Y, **kw)
    assert _close(x_last, [0.55, 0.75, 0.9, 0.35]) and (spent.forward, spent.backward) == (20, 20)
    with passes.counting() as spent:
        res = pgd(Threshold(), X, Y, **HAND)
    assert torch.equal(res.x, x_last) and res.first_success.tolist() == [3, 1, 0, -1]
    assert res.passes.tolist() == [11] * 4 and (spent.forward, spent.backward) == (24, 20)  # + the last iterate


def test_early_stop_argument_is_checked():
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(ValueError, match=r"^early_stop: must be null \(every step\) or an integer >= 0"):
            pgd(Threshold(), X, Y, early_stop=bad, eps=0.1, step_size=0.1, steps=1)
        with pytest.raises(ValueError, match=r"^early_stop: "):
            AttackSpec(early_stop=bad)
    assert "early-stop=0" in AttackSpec(early_stop=0).describe() and "early" not in AttackSpec().describe()


@pytest.fixture(scope="module")
def batch(digits):
    return digits.x_test[:256], digits.y_test[:256]


def _kw(norm, objective, y, **extra):
    kw = dict(eps=EPS[norm], step_size=EPS[norm] / 4, steps=10, norm=norm, objective=objective)
    kw.update(extra)
    if objective == "targeted":
        kw["target"] = (y + 1) % 10
    return kw


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, OBJS)))
def test_early_stop_invariants(bn_cnn, naive_mlp, batch, norm, objective):
    """In the ball and [0,1], the caller's modes and flags restored, eps = 0 changes nothing, the returned point's
    success as reported; τ = 0 succeeds wherever the full attack does (same draws: first successes agree) and
    spends fewer passes; more restarts never help the model."""
    x, y = batch
    for tau in (0, 2):
        out = run_on_a_training_model(bn_cnn, lambda: pgd(bn_cnn, x, y, early_stop=tau, **_kw(norm, objective, y)))
        assert_in_ball_and_box(out, x, EPS[norm], norm)
        zero = pgd(naive_mlp, x, y, early_stop=tau, **{**_kw(norm, objective, y), "eps": 0.0})
        assert torch.equal(zero, x)
    kw = _kw(norm, objective, y, random_start="uniform", return_result=True)
    full = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(4), **kw)
    stop = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(4), early_stop=0, **kw)
    assert torch.equal(stop.first_success, full.first_success)
    assert torch.equal(stop.success, stop.first_success >= 0)
    assert (stop.success | ~full.success).all(), "early stop lost a success of the full attack"
    assert stop.passes.sum() < full.passes.sum()
    with torch.no_grad():
        clean, pred = naive_mlp(x).argmax(1), naive_mlp(stop.x).argmax(1)
    target = kw.get("target")
    succ = {"adversarial": pred != y, "hypocritical": pred == y, "targeted": pred == target,
            "stability": pred != clean}[objective]
    assert torch.equal(succ, stop.success)
    best = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(4), best_iterate=True, **kw)
    assert torch.equal(stop.x[~stop.success], best.x[~stop.success])  # never broken: the best visited point
    weak = _kw(norm, objective, y, random_start="uniform", steps=1, return_result=True)
    weak["step_size"] = weak["eps"] / 20
    one = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(5), early_stop=0, **weak)
    many = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(5), early_stop=0, restarts=4, **weak)
    legacy = pgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(5), restarts=4, **weak)
    assert (many.success | ~one.success).all() and many.success.sum() > one.success.sum()
    assert (many.success | ~legacy.success).all(), "early-stopped restarts lost a success of today's restarts"
    assert (many.restart[one.success] == 0).all() and (many.restart[many.success & ~one.success] > 0).all()


def test_pass_counter_counts_every_forward_and_backward(naive_mlp, batch):
    x, y = batch
    n, k = len(x), 7
    kw = dict(eps=0.1, step_size=0.025, steps=k)
    with passes.counting() as outer:
        with passes.counting() as inner:
            pgd(naive_mlp, x, y, **kw)
        assert (inner.forward, inner.backward) == (k * n, k * n)
        pgd(naive_mlp, x, y, best_iterate=True, restarts=2, **kw)  # + one forward on each restart's last iterate
        pgd(naive_mlp, x, y, objective="stability", **kw)  # + the clean forward that fixes p(x)
        apgd(naive_mlp, x, y, eps=0.1, steps=k)  # k + 1 forwards, k gradients
    assert outer.forward == k * n + 2 * (k + 1) * n + (k + 1) * n + (k + 1) * n
    assert outer.backward == k * n + 2 * k * n + k * n + k * n
    assert outer.total == outer.forward + outer.backward
    passes.add(forward=5)  # no counter open: nothing happens
    assert outer.forward == k * n + 4 * (k + 1) * n


@pytest.mark.parametrize("norm,objective", list(itertools.product(NORMS, OBJS)))
def test_apgd_early_stop_invariants(bn_cnn, naive_mlp, batch, norm, objective):
    """APGD with early stop: in the ball and [0,1], modes restored, eps = 0 changes nothing; its iterates are those
    without early stop up to the stop (same first successes), so it succeeds wherever APGD does, for fewer passes;
    the never-broken examples get APGD's own best point."""
    x, y = batch
    kw = _kw(norm, objective, y, score="ce" if objective == "stability" else "margin")
    kw.pop("step_size")
    out = run_on_a_training_model(bn_cnn, lambda: apgd(bn_cnn, x, y, early_stop=0, **kw))
    assert_in_ball_and_box(out, x, EPS[norm], norm)
    assert torch.equal(apgd(naive_mlp, x, y, early_stop=0, **{**kw, "eps": 0.0}), x)
    run = dict(kw, random_start="uniform", restarts=2, return_result=True)
    full = apgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(4), **run)
    stop = apgd(naive_mlp, x, y, generator=torch.Generator().manual_seed(4), early_stop=0, **run)
    assert torch.equal(stop.first_success, full.first_success) and torch.equal(stop.restart, full.restart)
    assert torch.equal(stop.success, stop.first_success >= 0) and torch.equal(stop.success, full.success)
    assert torch.equal(stop.x[~stop.success], full.x[~full.success])
    assert stop.passes.sum() < full.passes.sum()


@pytest.mark.parametrize("method,objective", list(itertools.product(("pgd", "apgd"), OBJS)))
def test_eps_zero_result_is_the_clean_point_read_once(naive_mlp, batch, method, objective):
    """eps = 0 with a result asked for: x itself; each active example's success read from one forward at the clean
    point (its first success is then step 0 of restart 0, else -1); inactive examples cost nothing and never
    succeed; stability never succeeds (x' = x cannot change the prediction)."""
    x, y = batch[0][:60], batch[1][:60]
    target = (y + 1) % 10 if objective == "targeted" else None
    attack = functools.partial(pgd, step_size=0.0) if method == "pgd" else apgd
    with torch.no_grad():
        pred = naive_mlp.eval()(x).argmax(1)
    clean = {"adversarial": pred != y, "hypocritical": pred == y, "targeted": pred == target,
             "stability": torch.zeros_like(y, dtype=torch.bool)}[objective]
    assert 0 < int(clean.sum()) < len(y) or objective == "stability"
    for active, early_stop in ((None, None), (None, 0), (torch.arange(60) % 3 != 0, 0)):
        on = torch.ones_like(clean) if active is None else active
        with passes.counting() as spent:
            res = attack(naive_mlp, x, y, eps=0.0, steps=7, objective=objective, target=target,
                         early_stop=early_stop, active=active, return_result=True)
        assert torch.equal(res.x, x) and res.x.data_ptr() != x.data_ptr() and res.steps == 7
        assert torch.equal(res.success, clean & on)
        first = torch.where(clean & on, 0, -1)
        assert torch.equal(res.first_success, first) and torch.equal(res.restart, first)
        assert torch.equal(res.passes, on.long())
        assert (spent.forward, spent.backward) == (int(on.sum()), 0)
