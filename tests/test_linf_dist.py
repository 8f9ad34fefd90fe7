"""The l_inf-distance net: exact distances, 1-Lipschitz logits, p annealing, and a certificate that no
sample or attack contradicts."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hyporay.attacks import AttackSpec
from hyporay.certify import certify, margin_lower_bounds
from hyporay.models import build_model
from hyporay.models.linf_dist import IDENTITY_SHIFT, LinfDistNet, lp_distance
from hyporay.trainers import OptimConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent


def _net(ds, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("linf_dist", in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                       **kw)


def test_distances_are_exact_for_every_p():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(7, 20, generator=g, dtype=torch.float64), torch.randn(5, 20, generator=g, dtype=torch.float64)
    assert torch.allclose(lp_distance(h, w, 8.0), torch.cdist(h, w, p=8.0))
    inf = lp_distance(h, w, math.inf)
    assert torch.allclose(inf, (h[:, None] - w[None]).abs().amax(-1))
    big = lp_distance(h.float() * 50, w.float() * 50, 1000.0)  # |d|^1000 would overflow without rescaling
    assert torch.isfinite(big).all()
    assert (big >= inf.float() * 50 - 1e-3).all() and (big <= inf.float() * 50 * 20 ** (1 / 1000) + 1e-3).all()


def test_identity_initialisation_and_p_schedule(digits):
    model = _net(digits, width=64, depth=2)
    net: LinfDistNet = model.net
    h = torch.rand(4, 64) * 4 - 2
    assert torch.allclose(net.layers[0](h, math.inf), h + IDENTITY_SHIFT)  # u_i(h) = h_i + 10 at init
    assert math.isinf(float(net.p))  # a fresh model is at p = inf (certifiable as built)
    ps = []
    for epoch in range(10):
        net.set_progress(epoch, 10)
        ps.append(float(net.p))
    assert ps[0] == 8.0 and math.isinf(ps[-1]) and all(a < b for a, b in zip(ps, ps[1:]))
    assert ps[-2] == pytest.approx(8 * (1000 / 8) ** (8 / 9))  # annealed over the first 9 of 10 epochs
    net.set_progress(0, 1)
    assert math.isinf(float(net.p))  # a single epoch trains at p = inf


@pytest.mark.parametrize("p", [math.inf, 8.0])
def test_every_logit_is_lipschitz_in_linf_pixel_units(digits, p):
    model = _net(digits, width=32, depth=3)
    model.train()
    model(digits.x_train[:64])  # non-zero running means
    model.eval()
    model.net.p.fill_(p)
    L = model.net.lipschitz_linf() / min(digits.std)
    assert (L > 1 / min(digits.std)) == (p != math.inf)
    g = torch.Generator().manual_seed(1)
    x = digits.x_test[:32]
    eps = 0.1
    with torch.no_grad():
        z = model(x)
        for _ in range(5):
            x2 = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
            moved = (model(x2) - z).abs().amax(1)
            assert (moved <= L * (x2 - x).flatten(1).abs().amax(1) + 1e-4).all()
            assert moved.max() > 0.05 * L * eps  # not vacuous


def test_trainer_anneals_p_and_uses_adam(digits):
    model = _net(digits, width=16, depth=1)
    trainer = Trainer(model, loss="natural", attack=AttackSpec(eps=0.1, steps=1),
                      optim=OptimConfig(lr=0.02, optimizer="adam", weight_decay=0.0), batch_size=256, epochs=3)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    seen = []
    for _ in range(3):
        trainer.train_epoch(digits.x_train[:256], digits.y_train[:256])
        seen.append(float(model.net.p))
    assert seen[0] == 8.0 and seen[1] == pytest.approx(8 * (1000 / 8) ** 0.5) and math.isinf(seen[2])
    with pytest.raises(ValueError, match="optimizer: unknown 'rmsprop'"):
        Trainer(model, loss="natural", attack=AttackSpec(), optim=OptimConfig(optimizer="rmsprop"))


@pytest.fixture(scope="module")
def trained(digits):
    model = _net(digits, seed=3, width=64, depth=2)
    trainer = Trainer(model, loss="natural", attack=AttackSpec(eps=0.1, steps=1),
                      optim=OptimConfig(lr=0.05, optimizer="adam", weight_decay=0.0), batch_size=64, epochs=8)
    for _ in range(8):
        trainer.train_epoch(digits.x_train, digits.y_train)
    return model.eval()


def test_certificate_holds_against_samples_and_attacks(trained, digits):
    model = trained
    assert math.isinf(float(model.net.p))
    x, y = digits.x_test[:120], digits.y_test[:120]
    eps = 0.1
    cert = certify(model, x, y, eps=eps, method="crown")
    assert cert.correct.float().mean() > 0.6
    assert cert.robust.any() and cert.unconcealable.any()
    lb = margin_lower_bounds(model, x, y, eps=eps)
    g = torch.Generator().manual_seed(2)
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    pts = []
    for i in range(60):  # random vertices of the box and uniform points
        u = torch.rand(x.shape, generator=g)
        pts.append(lo + (u.round() if i % 2 else u) * (hi - lo))
    for objective in ("adversarial", "hypocritical"):
        for spec in (AttackSpec(eps=eps, steps=30), AttackSpec(eps=eps, steps=30, method="apgd", score="margin")):
            pts.append(spec.run(model, x, y, objective, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        for xp in pts:
            z = model(xp).double()
            diff = z - z.gather(1, y[:, None])
            assert (lb <= diff + 1e-5).all()
            pred_y = z.argmax(1) == y
            assert not (cert.unconcealable & pred_y).any()
            assert not (cert.robust & ~pred_y).any()


def test_certificate_is_the_margin_rule_at_p_inf(trained, digits):
    """At p = inf, z_j - z_y >= (z_j - z_y)(x) - 2 eps / min(std): the bound is never looser than the rule."""
    x, y = digits.x_test[:50], digits.y_test[:50]
    eps = 0.05
    with torch.no_grad():
        z = trained(x).double()
    rule = z - z.gather(1, y[:, None]) - 2 * eps / min(digits.std)
    lb = margin_lower_bounds(trained, x, y, eps=eps)
    mask = torch.ones_like(lb, dtype=torch.bool).scatter_(1, y[:, None], False)
    assert (lb[mask] >= rule[mask] - 1e-5).all()  # float32 model vs its float64 twin


def test_profile_trains_it_with_trades_or_thrm():
    from hyporay.config import load_config
    from hyporay.engine.definition import load_profile

    prof = load_profile(ROOT / "sweeps" / "configs", "local_linfdist")
    assert set(prof["sweep"]["train.trainer"]) <= {"trades", "thrm"} and prof["sweep"]["model.name"] == ["linf_dist"]
    cfg = load_config(ROOT / "sweeps" / "configs" / "local_linfdist.yaml")
    assert cfg.model.name == "linf_dist" and cfg.train.trainer in ("trades", "thrm")
    assert cfg.train.optimizer == "adam" and cfg.eval.certify != "none"
