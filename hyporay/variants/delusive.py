"""001's delusive attacks P1-P5 from a naturally trained source model, and storing poisoned images as uint8
inside their ε-balls (pure PyTorch)."""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyporay.attacks import THREAT_MODELS, AttackSpec, frozen_eval, pgd
from hyporay.data import Dataset, to_float
from hyporay.models import build_model
from hyporay.trainers import OptimConfig, Trainer
from hyporay.variants.spec import POISON_METHODS, VariantSpec

log = logging.getLogger(__name__)


def train_source_model(ds: Dataset, spec: VariantSpec, *, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """The naturally trained source model f_D of P1-P4, deterministic per ``seed`` (on CPU).

    ``build_model(spec.source_model, **spec.source_model_kwargs)`` initialised under
    ``torch.manual_seed(seed)`` (the global RNG is forked, so the caller's stream is untouched), then
    ``Trainer(loss="natural")`` for ``spec.source_epochs`` epochs on the clean training set: SGD lr
    ``spec.source_lr``, momentum 0.9, weight decay 5e-4, no augmentation, batch ``spec.source_batch_size``.

    Returns:
        The model on ``device`` in eval mode (N x C x H x W in [0,1] -> N x K logits).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec.source_model, in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean,
                            std=ds.std, **spec.source_model_kwargs)
    trainer = Trainer(model, loss="natural", attack=AttackSpec(norm=spec.norm, eps=spec.eps),
                      optim=OptimConfig(lr=spec.source_lr), batch_size=spec.source_batch_size, device=device, seed=seed)
    for _ in range(spec.source_epochs):
        stats = trainer.train_epoch(ds.x_train, ds.y_train)
        log.debug("source model epoch %d: %s", trainer.epoch, stats)
    return trainer.model.eval()


def _universal_deltas(model: nn.Module | None, x: Tensor, y: Tensor, num_classes: int, method: str, eps: float,
                      norm: str, steps: int, alpha: float, batch_size: int, generator: torch.Generator | None,
                      device: str | torch.device) -> Tensor:
    """Class-wise universal perturbations δ_c of P3, P4 (optimised on ``model``) or P5 (random), for
    :func:`delusive_perturb` (whose arguments these are; ``alpha`` is the resolved step size).

    P3: δ_c sends class-c images to (c+1) mod K; P4: δ_c helps class-c images to c; P5: random (l_2: uniform on
    the sphere of radius ε; l_inf: U[-ε, ε]^d). ``generator`` drives P5 and the l_2 step's zero-gradient fallback.

    P3 / P4, as implemented here (001 §4 says only that all inputs of class y get the same
    class-specific universal perturbation, ξ_t with t a fixed function of y for P3, ξ_y for P4): for
    each class c, δ_c (1 x C x H x W) starts at 0 and takes ``steps`` full-gradient PGD steps
    (sign step for l_inf, normalised step for l_2, then projection onto the ε-ball) that DESCEND the
    mean over all class-c training examples of CE(f(clamp(x + δ_c, 0, 1)), t_c), with t_c = (c+1) mod K
    (P3) or c (P4); the gradient is accumulated over batches of ``batch_size``. Deterministic.
    The authors' code (Delusive-Adversary poison.py) instead fits ξ_t by 5 x ``steps`` stochastic
    steps on shuffled batches of 256 drawn from the WHOLE training set (all classes) toward t, then
    gives class y the ξ_{(y+1) mod K} (P3) or ξ_y (P4).

    Returns:
        δ, float32 K x C x H x W on CPU, with ||δ_c|| <= ε in ``norm``. A class without examples
        gets δ_c = 0 (P3 / P4).
    """
    threat = THREAT_MODELS[norm]
    shape = (num_classes, *x.shape[1:])
    if method == "p5":
        if norm == "l2":
            dev = generator.device if generator is not None else torch.device("cpu")
            g = torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).cpu()
            norms = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
            return g.div_(norms).mul_(eps)
        return threat.uniform(torch.zeros(shape), eps, generator).clamp_(-eps, eps)
    deltas = torch.zeros(shape, dtype=torch.float32)
    if eps == 0:
        return deltas
    with frozen_eval(model):
        for c in range(num_classes):
            idx = (y == c).nonzero().flatten()
            if len(idx) == 0:
                continue
            target_c = (c + 1) % num_classes if method == "p3" else c
            delta = torch.zeros((1, *x.shape[1:]), device=device)
            for _ in range(steps):
                grad = torch.zeros_like(delta)
                for start in range(0, len(idx), batch_size):
                    xb = to_float(x[idx[start:start + batch_size]].to(device))
                    tb = torch.full((len(xb),), target_c, dtype=torch.long, device=device)
                    d = delta.detach().requires_grad_(True)
                    # score to ASCEND: minus the mean (over class c) targeted CE
                    score = -F.cross_entropy(model((xb + d).clamp(0.0, 1.0)), tb, reduction="sum") / len(idx)
                    (g,) = torch.autograd.grad(score, d)
                    grad += g
                with torch.no_grad():
                    delta = threat.project_delta(threat.step(delta, grad, alpha, generator), eps)
            deltas[c] = delta[0].cpu()
    return deltas


def delusive_perturb(
    model: nn.Module | None,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    method: str = "p1",
    eps: float = 8 / 255,
    norm: str = "linf",
    steps: int = 100,
    step_size: float | None = None,
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Apply delusive attack P1-P5 of 001 to every image; returns float32 poisoned images on CPU.

    Args:
        model: naturally trained source model (N x C x H x W in [0,1] -> logits); unused by P5.
        x: clean images N x C x H x W (uint8 0..255 or float in [0,1]); y: int64 labels (N), kept.
        method: "p1" targeted PGD toward (y+1) mod K (the paper's Poisoning set); "p2" hypocritical PGD
            toward y; "p3"/"p4"/"p5" class-wise universal perturbations δ_y (see :func:`_universal_deltas`).
        eps, norm: budget in pixel units and threat model; steps, step_size: PGD iterations and step
            (None: eps / 5). P1/P2 start at x (no random start), as in the authors' code.
        batch_size: examples per attack batch (P1/P2 results do not depend on it: eval mode).

    Returns:
        x' float32 N x C x H x W on CPU with x' in [0,1] and ||x' - x|| <= eps in ``norm``
        (universal: x' = clamp(x + δ_y, 0, 1), which stays in the ball since x is in [0,1]).
    """
    if method not in POISON_METHODS:
        raise ValueError(f"method: unknown {method!r}; known: {', '.join(POISON_METHODS)}")
    if model is None and method != "p5":
        raise ValueError(f"model: required for {method}")
    alpha = eps / 5 if step_size is None else float(step_size)
    out = torch.empty(x.shape, dtype=torch.float32)
    if method in ("p1", "p2"):
        for start in range(0, len(x), batch_size):
            xb = to_float(x[start:start + batch_size].to(device))
            yb = y[start:start + batch_size].to(device)
            if method == "p1":
                xp = pgd(model, xb, yb, eps=eps, step_size=alpha, steps=steps, norm=norm, objective="targeted",
                         target=(yb + 1) % num_classes, random_start="none", generator=generator)
            else:
                xp = pgd(model, xb, yb, eps=eps, step_size=alpha, steps=steps, norm=norm,
                         objective="hypocritical", random_start="none", generator=generator)
            out[start:start + len(xb)] = xp.cpu()
        return out
    deltas = _universal_deltas(model, x, y, num_classes, method, eps, norm, steps, alpha, batch_size, generator, device)
    for start in range(0, len(x), 4096):
        xb = to_float(x[start:start + 4096])
        out[start:start + len(xb)] = (xb + deltas[y[start:start + 4096]]).clamp_(0.0, 1.0)
    return out


def quantize_in_ball(x_adv: Tensor, x_clean: Tensor, eps: float, norm: str) -> Tensor:
    """Store poisoned images as uint8 while keeping every image inside the ε-ball of its clean image.

    The authors truncate (``floor(x' * 255)``), which can leave the ball and biases every pixel down;
    here each pixel is ROUNDED to the nearest level and the ball is re-checked on the integer grid
    (reference §7): l_inf: the integer offset is clipped to ±floor(ε·255); l_2: an image whose rounded
    offset has l_2 norm above ε·255 falls back to truncating its real offset toward zero (never larger
    than the real offset in any pixel, hence inside the ball). Offsets are computed in float64.

    Args:
        x_adv: float poisoned images in [0,1] (N x ...), inside the ball of ``x_clean``.
        x_clean: the clean uint8 images (0..255), same shape.
        eps: budget in pixel units of [0,1] images; norm: "linf" or "l2".

    Returns:
        uint8 N x ... with ||q/255 - x_clean/255|| <= eps and values in 0..255.
    """
    k = x_clean.to(torch.float64)
    d = x_adv.to(torch.float64) * 255 - k  # real offset in levels, ||d|| <= eps*255 up to float error
    r = d.round()
    radius = eps * 255
    if norm == "linf":
        m = math.floor(radius + 1e-6)
        r = r.clamp_(-m, m)
    elif norm == "l2":
        # pull back offsets that float error put a hair outside the ball, so truncation below is inside
        scale = (radius * (1 - 1e-12) / d.flatten(1).norm(dim=1).clamp_min(1e-300)).clamp_(max=1.0)
        d = d * scale.view(-1, *([1] * (d.dim() - 1)))
        r = d.round()
        over = r.flatten(1).norm(dim=1) > radius
        if bool(over.any()):
            r[over] = d[over].trunc()  # |trunc(d_i)| <= |d_i| in every pixel: inside the ball
    else:
        raise ValueError(f"norm: unknown {norm!r}; known: {', '.join(sorted(THREAT_MODELS))}")
    return (k + r).clamp_(0, 255).to(torch.uint8)


