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


# APGD from x on the one-pixel model: η = 2ε carries x_1 to the top of the ball (x + ε = 0.55 0.75 0.9 0.35; the
# gradient's sign is +) and the iterates stay there (z - x_k = 0, x_k - x_{k-1} = 0 after clamping), so x_k = x_1
# for every k >= 1: first successes at steps 1, 1, 0, and never
AHAND = dict(eps=0.3, steps=5, random_start="none", return_result=True)


def test_apgd_on_the_threshold_model_by_hand():
    with passes.counting() as spent:
        full = apgd(Threshold(), X, Y, **AHAND)
    assert _close(full.x, [0.55, 0.75, 0.9, 0.35]) and full.first_success.tolist() == [1, 1, 0, -1]
    assert full.steps == 5 and full.kappa.tolist() == [1, 1, 0, 5] and full.restart.tolist() == [0, 0, 0, -1]
    # no early stop: 6 forwards (x_0 .. x_5) and 5 gradients per example, also with a result asked for
    assert full.passes.tolist() == [6 + 5] * 4 and (spent.forward, spent.backward) == (24, 20)
    with passes.counting() as spent:
        res = apgd(Threshold(), X, Y, early_stop=0, **AHAND)
    assert _close(res.x, [0.55, 0.75, 0.6, 0.35])  # first successes; the never-broken one: its best point
    assert res.first_success.tolist() == [1, 1, 0, -1] and res.success.tolist() == [True, True, True, False]
    assert res.steps == 5 and res.kappa.tolist() == [1, 1, 0, 5] and res.restart.tolist() == [0, 0, 0, -1]
    # forwards at the visited points up to the stop; a backward on every batch that still had someone to move
    # (the leavers' rows are part of it): only the rows in the batch pay, in the result and in hyporay.passes
    assert res.passes.tolist() == [2 + 2, 2 + 2, 1 + 1, 6 + 5] and (spent.forward, spent.backward) == (11, 10)
    fat = apgd(Threshold(), X, Y, early_stop=1, **AHAND)  # x_{k+1}; never broken: its best point
    assert _close(fat.x, [0.55, 0.75, 0.9, 0.35]) and fat.passes.tolist() == [3 + 3, 3 + 3, 2 + 2, 6 + 5]
    # τ past the budget: every example runs to x_5, and the successful ones return it (not x)
    late = apgd(Threshold(), X, Y, early_stop=10, **AHAND)
    assert _close(late.x, [0.55, 0.75, 0.9, 0.35]) and late.first_success.tolist() == [1, 1, 0, -1]
    assert late.success.tolist() == [True, True, True, False] and late.passes.tolist() == [11] * 4


@pytest.mark.parametrize("method", ["pgd", "apgd"])
def test_a_batch_that_empties_spends_nothing_more(method):
    """Every example decided before the last step: the batch empties there and no gradient follows it."""
    with passes.counting() as spent:
        if method == "pgd":  # first successes 3, 1, 0 (see X)
            res = pgd(Threshold(), X[:3], Y[:3], early_stop=0, **HAND)
            want = [4 + 3, 2 + 2, 1 + 1]  # the last leaver alone at step 3: a forward, no backward
        else:  # first successes 1, 1, 0: both leave at step 1, when the batch empties
            res = apgd(Threshold(), X[:3], Y[:3], early_stop=0, **AHAND)
            want = [2 + 1, 2 + 1, 1 + 1]
    assert res.passes.tolist() == want and res.success.all()
    assert spent.forward + spent.backward == sum(want)


@pytest.mark.parametrize("method", ["pgd", "apgd"])
def test_inactive_examples_are_returned_as_x_and_cost_nothing(method):
    """``active``: the masked-out example is x, never succeeds and costs nothing; the others get exactly what they
    get without the mask (the never-broken example keeps the batch going, so the batches' passes agree too)."""
    attack = functools.partial(pgd, step_size=0.1) if method == "pgd" else apgd
    kw = {k: v for k, v in AHAND.items()}
    on = torch.tensor([True, False, True, True])
    every = attack(Threshold(), X, Y, early_stop=0, **kw)
    with passes.counting() as spent:
        res = attack(Threshold(), X, Y, early_stop=0, active=on, **kw)
    assert torch.equal(res.x[~on], X[~on]) and torch.equal(res.x[on], every.x[on])
    assert res.success.tolist() == [True, False, True, False]
    assert res.first_success.tolist() == [int(every.first_success[0]), -1, 0, -1]
    assert res.restart.tolist() == [0, -1, 0, -1]
    assert res.passes[1] == 0 and torch.equal(res.passes[on], every.passes[on])
    assert spent.forward + spent.backward == int(res.passes.sum())


@pytest.mark.parametrize("method", ["pgd", "apgd"])
def test_stability_with_a_mask_reads_the_clean_point_of_the_active_examples_only(naive_mlp, batch, method):
    """The stability objective's clean forward (in hyporay.passes only) covers the active examples, no more."""
    x, y = batch[0][:40], batch[1][:40]
    attack = functools.partial(pgd, step_size=0.025) if method == "pgd" else apgd
    on = torch.arange(40) % 4 != 0
    with passes.counting() as spent:
        res = attack(naive_mlp, x, y, eps=0.1, steps=3, objective="stability", early_stop=0, active=on,
                     generator=torch.Generator().manual_seed(0), return_result=True)
    assert torch.equal(res.x[~on], x[~on]) and int(res.passes[~on].sum()) == 0
    assert spent.forward + spent.backward == int(res.passes.sum()) + int(on.sum())


@pytest.mark.parametrize("method", ["pgd", "apgd"])
def test_restarts_draw_their_starts_even_when_no_example_is_left(method):
    """Every example decided in restart 0: restarts 1 and 2 attack nobody, yet each still draws its start for the
    whole batch, so the generator ends where the attack without early stop leaves it."""
    attack = functools.partial(pgd, step_size=0.2) if method == "pgd" else apgd
    kw = dict(eps=0.3, steps=5, random_start="uniform", restarts=3, return_result=True)
    g_stop, g_full = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    res = attack(Threshold(), X[:3], Y[:3], early_stop=0, generator=g_stop, **kw)
    assert res.success.all() and res.restart.tolist() == [0, 0, 0]  # restarts 1 and 2 had no one to attack
    attack(Threshold(), X[:3], Y[:3], generator=g_full, **kw)
    assert torch.equal(g_stop.get_state(), g_full.get_state())


@pytest.mark.parametrize("early_stop", [None, 0, 1])
def test_result_counts_are_integer_tensors(early_stop):
    """first_success, restart and passes are counts: int64 (exact at any size, usable as indices), on both
    methods, with and without early stop."""
    for res in (pgd(Threshold(), X, Y, early_stop=early_stop, **HAND),
                apgd(Threshold(), X, Y, early_stop=early_stop, **AHAND)):
        for t in (res.first_success, res.restart, res.passes, res.kappa):
            assert t.dtype == torch.int64 and t.shape == (4,)
        assert res.passes.tolist() == [int(p) for p in res.passes.tolist()] and int(res.passes.min()) > 0


@pytest.mark.parametrize("early_stop", [0, 1])
def test_early_stop_on_float64_inputs_returns_the_float32_hand_values(early_stop):
    """A float64 model and batch (the CE score is float64 there): the same points as in float32, in float64;
    the never-broken example's fallback point (its best visited one) included."""
    x64 = X.double()
    res = pgd(Threshold(), x64, Y, early_stop=early_stop, **HAND)
    want = [0.55, 0.55, 0.6, 0.35] if early_stop == 0 else [0.55, 0.65, 0.7, 0.35]
    assert res.x.dtype == torch.float64 and torch.allclose(res.x.flatten(), torch.tensor(want, dtype=torch.float64))
    assert res.first_success.tolist() == [3, 1, 0, -1] and res.success.tolist() == [True, True, True, False]
    a = apgd(Threshold(), x64, Y, early_stop=early_stop, **AHAND)
    a_want = [0.55, 0.75, 0.6, 0.35] if early_stop == 0 else [0.55, 0.75, 0.9, 0.35]
    assert a.x.dtype == torch.float64 and torch.allclose(a.x.flatten(), torch.tensor(a_want, dtype=torch.float64))
    assert a.first_success.tolist() == [1, 1, 0, -1]
