"""The training loop and the NT / PGD-AT / TRADES / THRM losses."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import loss_forward_inputs
from hyporay.attacks import AttackSpec
from hyporay.models import build_model
from hyporay.trainers import LOSSES, LossContext, OptimConfig, Trainer, kl_batchmean

ATTACK = AttackSpec(eps=0.1, steps=3)


def _model(ds, name="mlp", seed=0):
    torch.manual_seed(seed)
    return build_model(name, in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std)


def test_kl_is_batchmean_kl_divergence():
    torch.manual_seed(0)
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    p, q = a.softmax(1), b.softmax(1)
    manual = (p * (p.log() - q.log())).sum(1).mean()
    assert kl_batchmean(a, b) == pytest.approx(float(manual), rel=1e-5)
    wrong = nn.KLDivLoss(reduction="mean")(F.log_softmax(b, 1), p)  # divides by N*K: not the KL
    assert float(wrong) != pytest.approx(float(manual), rel=1e-2)


def test_kl_gradient_flows_through_the_clean_side():
    a = torch.randn(4, 3, requires_grad=True)
    kl_batchmean(a, torch.randn(4, 3)).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


# which attack objective each loss must use for its inner perturbation (000 §5.1)
INNER = {"pgd_at": "adversarial", "trades": "stability", "thrm": "hypocritical"}


def _loss_inputs(model, loss, x, y, ctx):
    """Run ``LOSSES[loss]`` and capture the perturbed batch its loss forward saw (not the attack's forwards:
    those have an input that requires grad). Returns (loss value, x')."""
    (value, _), seen = loss_forward_inputs(model, LOSSES[loss], x, y, ctx)
    if ctx.concat_forward and loss != "pgd_at":
        return value, seen[-1][len(x):]  # one forward on cat(x, x')
    return value, seen[-1]


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("loss", sorted(INNER))
def test_inner_perturbation_is_the_papers_attack(digits, loss, concat):
    """Guards against a trainer using the wrong inner attack (e.g. THRM trained with TRADES's stability attack,
    or PGD-AT with the hypocritical one): the x' the loss sees equals ``pgd(..., objective=<the paper's>)``
    run with the same generator state, bit for bit, and differs from every other objective's."""
    x, y = digits.x_train[:48], digits.y_train[:48]
    m = _model(digits).train()
    ctx = LossContext(attack=ATTACK, lam=2.0, concat_forward=concat, generator=torch.Generator().manual_seed(7))
    _, x_pert = _loss_inputs(m, loss, x, y, ctx)
    assert m.training
    for objective in INNER.values():
        expected = ATTACK.run(m, x, y, objective, generator=torch.Generator().manual_seed(7))
        if objective == INNER[loss]:
            assert torch.equal(x_pert, expected), f"{loss} does not use the {objective} attack"
        else:
            assert not torch.equal(x_pert, expected), f"{loss} uses the {objective} attack"


@pytest.mark.parametrize("loss", ["trades", "thrm"])
def test_regularised_loss_is_ce_plus_lambda_kl_clean_to_perturbed(natural_mlp, digits, loss):
    """Guards against the KL direction reversed (KL(p(x')||p(x)) instead of the paper's KL(p(x)||p(x'))), λ
    ignored or misapplied, the CE term taken on x' instead of x, or a KL reduction other than batchmean: the
    loss equals CE(f(x), y) + λ·Σ_k p_k(x) log(p_k(x)/p_k(x')) / B computed by hand from the expected x'.
    A trained model on test points (some misclassified) makes the two KL directions far apart."""
    x, y = digits.x_test[:96], digits.y_test[:96]
    m = natural_mlp  # no train/eval-dependent layers; the loss only runs forwards (no update)
    lam = 3.0
    value, _ = LOSSES[loss](m, x, y, LossContext(attack=ATTACK, lam=lam, generator=torch.Generator().manual_seed(7)))
    x_pert = ATTACK.run(m, x, y, INNER[loss], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits, logits_pert = m(x).double(), m(x_pert).double()
    p, q = logits.softmax(1), logits_pert.softmax(1)
    kl = float((p * (p.log() - q.log())).sum(1).sum() / len(x))       # KL(p(x) || p(x')), batchmean
    reverse = float((q * (q.log() - p.log())).sum(1).sum() / len(x))  # KL(p(x') || p(x))
    ce = float(F.cross_entropy(logits, y))
    expected = ce + lam * kl
    assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the alternatives the test must tell apart are far outside that tolerance
    for wrong in (ce + lam * reverse, ce + kl, ce + lam * kl / logits.shape[1], float(F.cross_entropy(logits_pert, y))
                  + lam * kl):
        assert abs(wrong - expected) > 1e-3 * abs(expected), "test cannot tell the variants apart on this batch"


@pytest.mark.parametrize("loss", ["trades", "thrm"])
def test_regularised_loss_gradient_flows_through_both_sides_of_the_kl(natural_mlp, digits, loss):
    """Guards against detaching the clean distribution inside the KL (the official TRADES and False-Friends
    code let gradients flow through p(x) and p(x')), which leaves the loss value unchanged: the parameter
    gradient of the loss equals that of CE(f(x), y) + λ·KL(p(x)||p(x')) differentiated through both sides,
    and differs from the one with p(x) detached."""
    x, y = digits.x_test[:96], digits.y_test[:96]
    m = natural_mlp
    params = list(m.parameters())
    lam = 3.0
    value, _ = LOSSES[loss](m, x, y, LossContext(attack=ATTACK, lam=lam, generator=torch.Generator().manual_seed(7)))
    got = torch.autograd.grad(value, params)
    x_pert = ATTACK.run(m, x, y, INNER[loss], generator=torch.Generator().manual_seed(7))

    def hand(detach_clean: bool):
        logits, logits_pert = m(x), m(x_pert)
        log_p = F.log_softmax(logits.detach() if detach_clean else logits, 1)
        log_q = F.log_softmax(logits_pert, 1)
        kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
        return torch.autograd.grad(F.cross_entropy(logits, y) + lam * kl, params)

    want, detached = hand(False), hand(True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    diff = max(float((w - d).abs().max()) for w, d in zip(want, detached))
    assert diff > 1e-3 * max(float(w.abs().max()) for w in want), "test cannot tell the variants apart"
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains(digits, loss):
    t = Trainer(_model(digits), loss=loss, attack=ATTACK, lam=1.0, optim=OptimConfig(lr=0.05), batch_size=128)
    first = t.train_epoch(digits.x_train, digits.y_train)
    for _ in range(3):
        last = t.train_epoch(digits.x_train, digits.y_train)
    assert last["train_loss"] < first["train_loss"]
    assert t.epoch == 4 and last["epoch_seconds"] > 0


@pytest.mark.parametrize("loss", ["natural", "trades", "thrm"])
def test_lambda_zero_is_natural_training(digits, loss):
    x, y = digits.x_train[:64], digits.y_train[:64]
    m = _model(digits).train()
    ref, _ = LOSSES["natural"](m, x, y, LossContext(attack=ATTACK))
    got, _ = LOSSES[loss](m, x, y, LossContext(attack=ATTACK, lam=0.0))
    assert torch.equal(ref, got)


@pytest.mark.parametrize("loss", ["pgd_at", "trades", "thrm"])
def test_inner_attack_in_eval_mode_loss_in_train_mode(digits, loss):
    """The attack's forwards (input requires grad) see eval-mode BatchNorm; the loss forwards train mode."""
    m = _model(digits, "cnn").train()
    bn = next(mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d))
    seen = []
    bn.register_forward_pre_hook(lambda mod, inp: seen.append((torch.is_grad_enabled(), mod.training)))
    x, y = digits.x_train[:32], digits.y_train[:32]
    LOSSES[loss](m, x, y, LossContext(attack=ATTACK, lam=1.0))
    attack_modes = [tr for _, tr in seen[:ATTACK.steps]]
    assert attack_modes == [False] * ATTACK.steps
    assert seen[-1][1] is True and m.training


def test_concat_forward_equals_separate_without_batchnorm(digits):
    x, y = digits.x_train[:32], digits.y_train[:32]
    m = _model(digits).train()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a, _ = LOSSES["thrm"](m, x, y, LossContext(attack=ATTACK, lam=2.0, concat_forward=True, generator=g()))
    b, _ = LOSSES["thrm"](m, x, y, LossContext(attack=ATTACK, lam=2.0, concat_forward=False, generator=g()))
    assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_concat_forward_changes_batchnorm_statistics(digits):
    x, y = digits.x_train[:32], digits.y_train[:32]
    losses = []
    for concat in (True, False):
        m = _model(digits, "cnn").train()
        ctx = LossContext(attack=ATTACK, lam=2.0, concat_forward=concat, generator=torch.Generator().manual_seed(0))
        losses.append(float(LOSSES["trades"](m, x, y, ctx)[0]))
    assert losses[0] != pytest.approx(losses[1], rel=1e-6)


def test_amp_and_channels_last_run_on_cpu(digits):
    t = Trainer(_model(digits, "cnn"), loss="thrm", attack=ATTACK, lam=1.0, amp=True, channels_last=True,
                batch_size=256)
    stats = t.train_epoch(digits.x_train[:512], digits.y_train[:512])
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    assert t.amp_dtype == torch.bfloat16
    w = next(p for p in t.model.parameters() if p.dim() == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)


def test_state_dict_round_trip_resumes_bit_identically(digits):
    x, y = digits.x_train, digits.y_train
    full = Trainer(_model(digits), loss="trades", attack=ATTACK, lam=2.0, optim=OptimConfig(lr=0.05, milestones=[2]),
                   augment=True, seed=3)
    for _ in range(3):
        full.train_epoch(x, y)
    part = Trainer(_model(digits), loss="trades", attack=ATTACK, lam=2.0, optim=OptimConfig(lr=0.05, milestones=[2]),
                   augment=True, seed=3)
    part.train_epoch(x, y)
    state = part.state_dict()
    resumed = Trainer(_model(digits, seed=99), loss="trades", attack=ATTACK, lam=2.0,
                      optim=OptimConfig(lr=0.05, milestones=[2]), augment=True, seed=42)
    resumed.load_state_dict(state)
    torch.manual_seed(1234)  # the global RNG is part of the state too
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.train_epoch(x, y)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_unknown_trainer_lists_known(digits):
    known = "fat, gairat, natural, pgd_at, randnoise, thrm, trades"
    with pytest.raises(ValueError, match=f"^trainer: unknown 'madry'; known: {known}$"):
        Trainer(_model(digits), loss="madry", attack=ATTACK)


@pytest.mark.parametrize("loss", ["pgd_at", "trades", "thrm"])
def test_training_passes_are_counted_and_the_early_stopped_attack_spends_fewer(digits, loss):
    """Per training image and epoch: the inner attack's K forward + K backward (TRADES: + the clean forward that
    fixes p(x)), and the step's forward + backward over what the loss saw (PGD-AT: x'; TRADES/THRM: x and x').
    FAT's rule (train.attack.early_stop) leaves each example 2 steps after its first success: fewer passes (THRM's
    correctly classified points, decided at the start, take exactly 2 steps; the last iterate is returned unread)."""
    x, y = digits.x_train[:256], digits.y_train[:256]
    n, k = len(y), 6
    attack = AttackSpec(eps=0.1, steps=k)
    full = Trainer(_model(digits), loss=loss, attack=attack, lam=1.0, batch_size=128).train_epoch(x, y)
    per_image = {"pgd_at": 2 * k + 2, "trades": 2 * k + 1 + 4, "thrm": 2 * k + 4}[loss]
    assert full["train_passes"] == full["train_passes_epoch"] == per_image * n
    fat = Trainer(_model(digits), loss=loss, attack=dataclasses.replace(attack, early_stop=2), lam=1.0,
                  batch_size=128)
    first = fat.train_epoch(x, y)
    second = fat.train_epoch(x, y)
    assert second["train_passes"] == fat.passes == first["train_passes_epoch"] + second["train_passes_epoch"]
    assert second["train_passes_epoch"] < per_image * n
