"""001's Table 2 defences as trainers: RandNoise (uniform noise in the ε-ball), FAT and GAIRAT."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import loss_forward_inputs
from hyporay.attacks import AttackSpec
from hyporay.models import build_model
from hyporay.trainers import LOSSES, LossContext


def _model(ds, name="mlp", seed=0):
    torch.manual_seed(seed)
    return build_model(name, in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std)


def _seen_input(model, loss, x, y, ctx):
    """The loss value, its logits and the batch the loss's own forward saw."""
    (value, logits), seen = loss_forward_inputs(model, LOSSES[loss], x, y, ctx)
    return value, logits, seen[-1]


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_randnoise_is_uniform_noise_in_the_ball(digits, norm, eps):
    x = torch.rand(512, 1, 8, 8) * 0.6 + 0.2  # away from the box edges: no clipping
    y = torch.randint(0, 10, (512,))
    m = _model(digits).train()
    ctx = LossContext(attack=AttackSpec(norm=norm, eps=eps, steps=3), generator=torch.Generator().manual_seed(0))
    value, logits, x_seen = _seen_input(m, "randnoise", x, y, ctx)
    delta = (x_seen - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-6 and float(size.min()) > 0
    if norm == "linf":  # U[-eps, eps] per pixel: mean 0, variance eps^2 / 3
        assert abs(float(delta.mean())) < 0.01 * eps * 3
        assert float(delta.var()) == pytest.approx(eps ** 2 / 3, rel=0.03)
    else:  # uniform in the d-ball: radius r with P(r <= t) = (t/eps)^d, d = 64: E r = eps * d / (d + 1)
        assert float(size.mean()) == pytest.approx(eps * 64 / 65, rel=0.01)
    assert torch.allclose(value, F.cross_entropy(m(x_seen), y))  # CE on the noisy batch, nothing else
    assert logits.shape == (512, 10)


def test_randnoise_stays_in_the_box_and_follows_its_generator(digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    m = _model(digits).train()

    def run(seed):
        ctx = LossContext(attack=AttackSpec(eps=0.3, steps=3), generator=torch.Generator().manual_seed(seed))
        return _seen_input(m, "randnoise", x, y, ctx)[2]

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_randnoise_at_eps_zero_is_natural_training(digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    m = _model(digits).train()
    ref, _ = LOSSES["natural"](m, x, y, LossContext(attack=AttackSpec(eps=0.0, steps=1)))
    got, _ = LOSSES["randnoise"](m, x, y, LossContext(attack=AttackSpec(eps=0.0, steps=1),
                                                       generator=torch.Generator().manual_seed(0)))
    assert torch.equal(ref, got)


# --- FAT ---------------------------------------------------------------------------------------------------------

from hyporay.attacks import pgd  # noqa: E402
from hyporay.trainers import Trainer  # noqa: E402
from hyporay.trainers.losses import fat_tau, gair_weights, gairat_active  # noqa: E402


@pytest.mark.parametrize("epochs, taus", [
    (120, {0: 0, 49: 0, 50: 1, 89: 1, 90: 2, 119: 2}),   # FAT.py: adjust_tau(epoch + 1), 120 epochs
    (12, {0: 0, 4: 0, 5: 1, 8: 1, 9: 2, 11: 2}),          # the same shares (50/120, 90/120) of 12 epochs
    (None, {49: 0, 50: 1, 90: 2}),                         # no plan: the literal epoch numbers
])
def test_fat_dynamic_tau(epochs, taus):
    assert {e: fat_tau(e, epochs) for e in taus} == taus


def _pgd_reference(model, x, y, attack, seed, **kw):
    return pgd(model, x, y, eps=attack.eps, step_size=attack.alpha, steps=attack.steps, norm=attack.norm,
               random_start=attack.random_start, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("tau", [0, 2])
def test_fat_trains_on_the_early_stopped_pgd_point(natural_mlp, digits, tau):
    """FAT's batch is exactly pgd(early_stop=τ) of the engine (same draws), its loss CE on it."""
    import copy

    m = copy.deepcopy(natural_mlp).train()
    x, y = digits.x_test[:128], digits.y_test[:128]
    attack = AttackSpec(eps=0.1, steps=10, early_stop=tau)
    value, _, x_seen = _seen_input(m, "fat", x, y, LossContext(attack=attack,
                                                                generator=torch.Generator().manual_seed(3)))
    ref = _pgd_reference(m, x, y, attack, 3, early_stop=tau)
    full = _pgd_reference(m, x, y, attack, 3)
    assert torch.equal(x_seen, ref) and not torch.equal(x_seen, full)  # early-stopped, not PGD-AT's point
    assert torch.allclose(value, F.cross_entropy(m(x_seen), y))


def test_fat_without_early_stop_follows_the_schedule(natural_mlp, digits):
    import copy

    m = copy.deepcopy(natural_mlp).train()
    x, y = digits.x_test[:64], digits.y_test[:64]
    attack = AttackSpec(eps=0.1, steps=10)
    for epoch, tau in ((0, 0), (11, 2)):
        ctx = LossContext(attack=attack, generator=torch.Generator().manual_seed(5), epoch=epoch, epochs=12)
        x_seen = _seen_input(m, "fat", x, y, ctx)[2]
        assert torch.equal(x_seen, _pgd_reference(m, x, y, attack, 5, early_stop=tau))


# --- GAIRAT ------------------------------------------------------------------------------------------------------


def test_gair_weights_hand_computed():
    """K = 10, λ = -1, κ = (0, 5, 10): ω = (1 + tanh(4))/2, (1 + tanh(-1))/2, (1 + tanh(-6))/2, then ×3/Σω."""
    import math

    raw = [(1 + math.tanh(4)) / 2, (1 + math.tanh(-1)) / 2, (1 + math.tanh(-6)) / 2]
    assert raw == pytest.approx([0.999665, 0.119203, 6.1442e-06], rel=1e-4)
    w = gair_weights(torch.tensor([0, 5, 10]), steps=10, lam=-1.0)
    assert w.tolist() == pytest.approx([r * 3 / sum(raw) for r in raw], rel=1e-6)
    assert float(w.mean()) == pytest.approx(1.0)
    # GAIR.py's Tanh form with int(K/2) is the same for even K
    k = torch.arange(11, dtype=torch.float64)
    code = ((-1.0 + (5 - k) * 5 / 5).tanh() + 1) / 2
    assert torch.allclose(gair_weights(k, 10, -1.0), (code * 11 / code.sum()).float())
    # λ → large: uniform weights; equal κ: uniform whatever λ
    assert torch.allclose(gair_weights(k, 10, 50.0), torch.ones(11))
    assert torch.allclose(gair_weights(torch.full((4,), 3), 10, -1.0), torch.ones(4))


@pytest.mark.parametrize("epoch, epochs, begin, active", [(58, 120, 0.5, False), (59, 120, 0.5, True),
                                                          (0, 10, 0.0, True), (3, 10, 0.5, False),
                                                          (4, 10, 0.5, True), (0, None, 0.5, True),
                                                          # begin·epochs = 2.5 rounds half up: 2 burn-in epochs
                                                          (1, 5, 0.5, False), (2, 5, 0.5, True)])
def test_gairat_burn_in(epoch, epochs, begin, active):
    assert gairat_active(epoch, epochs, begin) is active  # GAIRAT.py: (epoch + 1) >= begin_epoch


def test_gairat_loss_is_kappa_weighted_ce_after_burn_in(natural_mlp, digits):
    import copy

    m = copy.deepcopy(natural_mlp).train()
    x, y = digits.x_test[:128], digits.y_test[:128]
    attack = AttackSpec(eps=0.1, steps=10)

    def ctx(epoch):
        return LossContext(attack=attack, generator=torch.Generator().manual_seed(9), epoch=epoch, epochs=10,
                           gair_lambda=-1.0, gair_begin=0.5)

    res = _pgd_reference(m, x, y, attack, 9, return_result=True)
    assert 0 < int((res.kappa < 10).sum()) < 128  # some examples broken early, some never: unequal weights
    value, _, x_seen = _seen_input(m, "gairat", x, y, ctx(epoch=4))
    assert torch.equal(x_seen, res.x)  # the full PGD point, as PGD-AT
    w = gair_weights(res.kappa, 10, -1.0)
    ce = F.cross_entropy(m(x_seen), y, reduction="none")
    assert torch.allclose(value, (ce * w).mean()) and not torch.allclose(value, ce.mean())
    burn_in, _, _ = _seen_input(m, "gairat", x, y, ctx(epoch=3))  # before the burn-in ends: PGD-AT exactly
    pgd_at, _ = LOSSES["pgd_at"](m, x, y, ctx(epoch=3))
    assert torch.allclose(burn_in, pgd_at)


def test_trainer_tells_the_loss_its_epoch_and_plan(digits):
    seen = []
    t = Trainer(_model(digits), loss="gairat", attack=AttackSpec(eps=0.1, steps=2), epochs=3, batch_size=512,
                loss_options={"gair_lambda": 0.5, "gair_begin": 0.0})
    original = t.loss_fn

    def spy(model, x, y, ctx):
        seen.append((ctx.epoch, ctx.epochs, ctx.gair_lambda, ctx.gair_begin))
        return original(model, x, y, ctx)

    t.loss_fn = spy
    for _ in range(2):
        t.train_epoch(digits.x_train[:512], digits.y_train[:512])
    assert seen == [(0, 3, 0.5, 0.0), (1, 3, 0.5, 0.0)]


def test_fat_spends_fewer_passes_than_pgd_at(digits):
    """The early stop shrinks the batch: FAT (τ = 0) spends fewer image-passes per epoch than PGD-AT."""
    spent = {}
    for loss in ("pgd_at", "fat"):
        t = Trainer(_model(digits), loss=loss, attack=AttackSpec(eps=0.3, steps=10, early_stop=0 if loss == "fat"
                                                                 else None), batch_size=256, epochs=1)
        spent[loss] = t.train_epoch(digits.x_train, digits.y_train)["train_passes"]
    assert spent["fat"] < 0.8 * spent["pgd_at"], spent


# --- image-pass accounting of every loss -------------------------------------------------------------------------

def _hooked_counts(model):
    """Rows through the model's forward and through its backward, counted by hooks (independent of hyporay.passes)."""
    seen = {"forward": 0, "backward": 0}

    def fwd(mod, inp):
        seen["forward"] += inp[0].shape[0]

    def bwd(mod, grad_in, grad_out):
        seen["backward"] += grad_out[0].shape[0]

    return seen, [model.register_forward_pre_hook(fwd), model.register_full_backward_hook(bwd)]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("loss,lam", [("natural", 0.0), ("pgd_at", 0.0), ("trades", 6.0), ("thrm", 6.0),
                                      ("trades", 0.0), ("thrm", 0.0), ("randnoise", 0.0), ("fat", 0.0),
                                      ("gairat", 0.0)])
def test_every_loss_counts_the_passes_it_spends(digits, loss, lam):
    """What a loss records in hyporay.passes (its inner attack's and its own forwards, and the training backward
    through them) equals the rows that really went through the model, forward and backward, counted by hooks; at
    λ = 0 TRADES and THRM spend exactly natural training's N + N (no inner attack)."""
    from hyporay import passes

    x, y = digits.x_train[:48], digits.y_train[:48]
    m = _model(digits).train()
    ctx = LossContext(attack=AttackSpec(eps=0.1, steps=4, early_stop=0 if loss == "fat" else None), lam=lam,
                      generator=torch.Generator().manual_seed(0), epochs=2, epoch=1)
    seen, handles = _hooked_counts(m)
    try:
        with passes.counting() as spent:
            value, _ = LOSSES[loss](m, x, y, ctx)
            value.backward()
    finally:
        for h in handles:
            h.remove()
    assert (spent.forward, spent.backward) == (seen["forward"], seen["backward"]) and spent.backward > 0
    if loss == "natural" or (loss in ("trades", "thrm") and lam == 0) or loss == "randnoise":
        assert (spent.forward, spent.backward) == (48, 48)
    else:
        assert spent.forward > 48 and spent.backward > 48  # an inner attack ran
