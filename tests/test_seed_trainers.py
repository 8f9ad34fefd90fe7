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
