"""The paper's substandard training sets: Quality, Naive, Noise, Mislabeling and Poisoning (P1-P5).

000 §3.2 trains the false friend on five kinds of training data (reference §5); 001 (Tao et al.,
"Better Safe Than Sorry") defines the five delusive attacks P1-P5 used for the Poisoning set. Pure
PyTorch: this module never imports Ray, MLflow or Optuna.

>>> from hyporay.data import load_dataset
>>> from hyporay.variants import VariantSpec, build_training_set
>>> ds = load_dataset("digits", seed=0)
>>> x, y = build_training_set(ds, VariantSpec("poisoning", method="p1", eps=0.1), seed=0, cache_dir="cache")

Images are N x C x H x W with the dtype convention of ``ds.x_train``: uint8 in 0..255 stays uint8,
float stays float32 in [0, 1]. Labels are int64 of shape N in [0, K). ε is in pixel units of [0, 1]
images (8/255 is the usual l_inf budget), whatever the storage dtype.

Generated sets (noise, mislabeling, poisoning) can be cached on disk (``cache_dir``): one file per
set, named by a sha256 key of everything that determines it, written atomically and computed once
across processes under a file lock (see :func:`build_training_set`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor, nn

from hyporay.attacks import THREAT_MODELS, AttackSpec, frozen_eval, pgd
from hyporay.data import Dataset, to_float
from hyporay.models import MODELS, build_model
from hyporay.trainers import OptimConfig, Trainer

__all__ = [
    "FORMAT_VERSION", "POISON_METHODS", "VARIANTS", "VariantSpec", "build_training_set", "cache_path",
    "dataset_fingerprint", "delusive_perturb", "quantize_in_ball", "train_source_model",
    "universal_perturbations",
]

log = logging.getLogger(__name__)

VARIANTS = ("quality", "naive", "noise", "mislabeling", "poisoning")
POISON_METHODS = ("p1", "p2", "p3", "p4", "p5")

#: Bump when the content of a cached set for the same key would change (algorithm or file layout).
FORMAT_VERSION = 1

_GENERATED = ("noise", "mislabeling", "poisoning")
# Fields of VariantSpec that do NOT influence a given generated set (left out of its cache key, so a
# change in, say, eps does not recompute the Noise set). Every other field is part of the key, so a
# field added later is keyed by default.
_SOURCE_FIELDS = ("source_model", "source_model_kwargs", "source_epochs", "source_lr", "source_batch_size")
_IRRELEVANT = {
    "noise": ("method", "eps", "norm", "steps", "step_size", *_SOURCE_FIELDS),
    "mislabeling": ("method", "eps", "norm", "steps", "step_size", *_SOURCE_FIELDS),
    "p5": ("steps", "step_size", *_SOURCE_FIELDS),
}


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int)


@dataclass(frozen=True)
class VariantSpec:
    """Which training set to train on, and how a poisoned one is made.

    Attributes:
        name: one of :data:`VARIANTS`.
        method: delusive attack for ``name="poisoning"``, one of :data:`POISON_METHODS` (P1 is the
            paper's Poisoning set). Ignored by the other variants.
        eps: poisoning budget in pixel units of [0, 1] images (>= 0); 8/255 for l_inf in the paper.
        norm: threat model of the budget, a key of ``THREAT_MODELS`` ("linf" or "l2").
        steps: PGD iterations of P1-P4 (>= 1; 100 in the authors' code).
        step_size: PGD step in pixel units; None means eps / 5 (the authors' value).
        source_model: registered architecture of the naturally trained source model f_D (P1-P4).
        source_model_kwargs: options of that architecture (JSON-serialisable; part of the cache key).
        source_epochs: epochs of natural training of the source model (>= 0).
        source_lr: SGD learning rate of the source model (momentum 0.9, weight decay 5e-4, constant).
        source_batch_size: batch size of source training, and of the poisoning attacks' batches.
    """

    name: str = "quality"
    method: str = "p1"
    eps: float = 8 / 255
    norm: str = "linf"
    steps: int = 100
    step_size: float | None = None
    source_model: str = "mlp"
    source_model_kwargs: dict = field(default_factory=dict)
    source_epochs: int = 10
    source_lr: float = 0.05
    source_batch_size: int = 128

    def __post_init__(self) -> None:
        def bad(fld: str, what: str) -> ValueError:
            return ValueError(" ".join(f"variant.{fld}: {what}".split()))

        if self.name not in VARIANTS:
            raise bad("name", f"unknown {self.name!r}; known: {', '.join(VARIANTS)}")
        if self.method not in POISON_METHODS:
            raise bad("method", f"unknown {self.method!r}; known: {', '.join(POISON_METHODS)}")
        if self.norm not in THREAT_MODELS:
            raise bad("norm", f"unknown {self.norm!r}; known: {', '.join(sorted(THREAT_MODELS))}")
        if not _is_number(self.eps) or self.eps < 0:
            raise bad("eps", f"must be a finite number >= 0 (pixel units of [0,1] images), got {self.eps!r}")
        if not _is_int(self.steps) or self.steps < 1:
            raise bad("steps", f"must be an integer >= 1, got {self.steps!r}")
        if self.step_size is not None and (not _is_number(self.step_size) or self.step_size <= 0):
            raise bad("step_size", f"must be a finite number > 0 or None (= eps/5), got {self.step_size!r}")
        if self.source_model not in MODELS:
            raise bad("source_model", f"unknown {self.source_model!r}; known: {', '.join(sorted(MODELS))}")
        if not isinstance(self.source_model_kwargs, dict) or not all(isinstance(k, str) for k in self.source_model_kwargs):
            raise bad("source_model_kwargs", f"must be a dict with string keys, got {self.source_model_kwargs!r}")
        try:
            json.dumps(self.source_model_kwargs, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise bad("source_model_kwargs", f"must be JSON-serialisable (it is part of the cache key): {err}") from None
        if not _is_int(self.source_epochs) or self.source_epochs < 0:
            raise bad("source_epochs", f"must be an integer >= 0, got {self.source_epochs!r}")
        if not _is_number(self.source_lr) or self.source_lr <= 0:
            raise bad("source_lr", f"must be a finite number > 0, got {self.source_lr!r}")
        if not _is_int(self.source_batch_size) or self.source_batch_size < 1:
            raise bad("source_batch_size", f"must be an integer >= 1, got {self.source_batch_size!r}")

    @property
    def alpha(self) -> float:
        """The PGD step actually used (pixel units): ``step_size`` or eps / 5."""
        return self.eps / 5 if self.step_size is None else float(self.step_size)

    def describe(self) -> str:
        """One line naming the set, e.g. ``poisoning p1 linf eps=0.03137 (8/255) steps=100 step=0.006275``."""
        if self.name != "poisoning":
            return self.name
        head = f"poisoning {self.method} {self.norm} eps={self.eps:.4g} ({self.eps * 255:.3g}/255)"
        if self.method == "p5":
            return head
        return f"{head} steps={self.steps} step={self.alpha:.4g} source={self.source_model}x{self.source_epochs}ep"


# --------------------------------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------------------------------

_FINGERPRINTS: "weakref.WeakKeyDictionary[Dataset, dict]" = weakref.WeakKeyDictionary()


def _tensor_sha256(t: Tensor) -> str:
    arr = np.ascontiguousarray(t.detach().cpu().numpy())
    return hashlib.sha256(arr.view(np.uint8).reshape(-1).data).hexdigest()


def dataset_fingerprint(ds: Dataset) -> dict:
    """What identifies the training data: name, shapes, dtypes, K, mean/std and sha256 of the bytes.

    Hashing reads the training tensors once per ``Dataset`` object (memoised; ~0.3 s for CIFAR-10).
    Datasets are frozen and their tensors are treated as immutable: do not modify them in place.
    """
    fp = _FINGERPRINTS.get(ds)
    if fp is None:
        fp = {
            "name": ds.name,
            "x_shape": list(ds.x_train.shape), "x_dtype": str(ds.x_train.dtype),
            "y_shape": list(ds.y_train.shape), "y_dtype": str(ds.y_train.dtype),
            "num_classes": int(ds.num_classes),
            "mean": [float(v) for v in ds.mean], "std": [float(v) for v in ds.std],
            "x_sha256": _tensor_sha256(ds.x_train), "y_sha256": _tensor_sha256(ds.y_train),
        }
        _FINGERPRINTS[ds] = fp
    return fp


def _spec_key_fields(spec: VariantSpec) -> dict:
    fields = asdict(spec)
    fields["step_size"] = spec.alpha  # None and eps/5 give the same set
    group = spec.method if spec.name == "poisoning" and spec.method in _IRRELEVANT else spec.name
    for f in _IRRELEVANT.get(group, ()):
        fields.pop(f, None)
    return fields


def _cache_key(ds: Dataset, spec: VariantSpec, seed: int) -> str:
    payload = {"format": FORMAT_VERSION, "dataset": dataset_fingerprint(ds), "spec": _spec_key_fields(spec),
               "seed": int(seed)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(ds: Dataset, spec: VariantSpec, seed: int, cache_dir: str | Path) -> Path:
    """Where the generated set of (``ds``, ``spec``, ``seed``) lives in ``cache_dir``.

    The file name is ``<dataset>-<variant>[-<method>]-<sha256 key>.pt``; the key covers the format
    version, the dataset fingerprint (:func:`dataset_fingerprint`), every field of ``spec`` that
    influences the set (``step_size`` resolved; source-model fields are left out for noise,
    mislabeling and p5, attack fields for noise and mislabeling) and ``seed``. The device is not part
    of the key: a set computed on GPU is reused on CPU (results may differ in the last float bits).
    """
    if spec.name not in _GENERATED:
        raise ValueError(f"variant.name: {spec.name!r} is the clean training set and is never cached")
    label = spec.name + (f"-{spec.method}" if spec.name == "poisoning" else "")
    safe_ds = "".join(c if c.isalnum() or c in "-_" else "_" for c in ds.name)
    return Path(cache_dir) / f"{safe_ds}-{label}-{_cache_key(ds, spec, seed)}.pt"


# --------------------------------------------------------------------------------------------------
# Source model and delusive attacks
# --------------------------------------------------------------------------------------------------

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


def universal_perturbations(
    model: nn.Module | None,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    method: str,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    step_size: float | None = None,
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Class-wise universal perturbations δ_c of P3, P4 (optimised on ``model``) or P5 (random).

    Args:
        model: the source model (ignored, may be None, for P5).
        x: clean training images N x C x H x W, uint8 0..255 or float in [0,1]; y: labels (N).
        num_classes: K.
        method: "p3" (δ_c sends class-c images to (c+1) mod K), "p4" (δ_c helps class-c images to c),
            "p5" (random: l_2: uniform on the sphere of radius ε; l_inf: U[-ε, ε]^d).
        eps, norm, steps, step_size: budget (pixel units), threat model, PGD iterations and step
            (None: eps / 5).
        batch_size: examples per forward pass while accumulating a gradient.
        generator: RNG for P5 and for the l_2 step's zero-gradient fallback.

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
    if method not in ("p3", "p4", "p5"):
        raise ValueError(f"method: universal perturbations exist for p3, p4, p5, got {method!r}")
    threat = THREAT_MODELS[norm]
    shape = (num_classes, *x.shape[1:])
    if method == "p5":
        if norm == "l2":
            dev = generator.device if generator is not None else torch.device("cpu")
            g = torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).cpu()
            norms = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
            return g.div_(norms).mul_(eps)
        return threat.uniform(torch.zeros(shape), eps, generator).clamp_(-eps, eps)
    if model is None:
        raise ValueError(f"model: required for {method}")
    alpha = eps / 5 if step_size is None else float(step_size)
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
            toward y; "p3"/"p4"/"p5" class-wise universal perturbations (:func:`universal_perturbations`).
        eps, norm: budget in pixel units and threat model; steps, step_size: PGD iterations and step
            (None: eps / 5). P1/P2 start at x (no random start), as in the authors' code.
        batch_size: examples per attack batch (P1/P2 results do not depend on it: eval mode).

    Returns:
        x' float32 N x C x H x W on CPU with x' in [0,1] and ||x' - x|| <= eps in ``norm``
        (universal: x' = clamp(x + δ_y, 0, 1), which stays in the ball since x is in [0,1]).
    """
    if method not in POISON_METHODS:
        raise ValueError(f"method: unknown {method!r}; known: {', '.join(POISON_METHODS)}")
    alpha = eps / 5 if step_size is None else float(step_size)
    out = torch.empty(x.shape, dtype=torch.float32)
    if method in ("p1", "p2"):
        if model is None:
            raise ValueError(f"model: required for {method}")
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
    deltas = universal_perturbations(model, x, y, num_classes=num_classes, method=method, eps=eps, norm=norm,
                                     steps=steps, step_size=step_size, batch_size=batch_size,
                                     generator=generator, device=device)
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


# --------------------------------------------------------------------------------------------------
# Building the sets (with the on-disk cache)
# --------------------------------------------------------------------------------------------------

def _generate(ds: Dataset, spec: VariantSpec, seed: int, device: str | torch.device) -> dict[str, Tensor]:
    """The expensive part: returns {"x": ...} and/or {"y": ...} (what differs from the clean set)."""
    gen = torch.Generator().manual_seed(seed)
    x, y, k = ds.x_train, ds.y_train, ds.num_classes
    if spec.name == "noise":
        if x.dtype == torch.uint8:
            return {"x": torch.randint(0, 256, x.shape, generator=gen, dtype=torch.uint8)}
        return {"x": torch.rand(x.shape, generator=gen, dtype=torch.float32)}
    if spec.name == "mislabeling":
        return {"y": torch.randint(0, k, y.shape, generator=gen, dtype=torch.int64)}
    # poisoning
    log.info("building %s set of %s (seed %d)", spec.describe(), ds.name, seed)
    model = None if spec.method == "p5" else train_source_model(ds, spec, seed=seed, device=device)
    attack_gen = torch.Generator(device=device).manual_seed(seed + 3)
    x_p = delusive_perturb(model, x, y, num_classes=k, method=spec.method, eps=spec.eps, norm=spec.norm,
                           steps=spec.steps, step_size=spec.step_size, batch_size=spec.source_batch_size,
                           generator=gen if spec.method == "p5" else attack_gen, device=device)
    if x.dtype == torch.uint8:
        x_p = quantize_in_ball(x_p, x, spec.eps, spec.norm)
    return {"x": x_p}


def _assemble(ds: Dataset, parts: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    return parts.get("x", ds.x_train), parts.get("y", ds.y_train)


def _valid(parts: Any, ds: Dataset, key: str) -> bool:
    if not isinstance(parts, dict) or parts.get("format") != FORMAT_VERSION or parts.get("key") != key:
        return False
    x, y = parts.get("x"), parts.get("y")
    if x is None and y is None:
        return False
    x_ok = x is None or (isinstance(x, Tensor) and x.shape == ds.x_train.shape
                         and x.dtype == (torch.uint8 if ds.x_train.dtype == torch.uint8 else torch.float32))
    y_ok = y is None or (isinstance(y, Tensor) and y.shape == ds.y_train.shape and y.dtype == torch.int64)
    return x_ok and y_ok


def _try_load(path: Path, ds: Dataset, key: str) -> dict[str, Tensor] | None:
    """The cached parts, or None when the file is missing, unreadable, truncated or for another key."""
    if not path.is_file():
        return None
    try:
        parts = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, EOF, ...: recompute
        log.warning("variant cache %s is unreadable (%s: %s); recomputing", path, type(err).__name__, err)
        return None
    if not _valid(parts, ds, key):
        log.warning("variant cache %s does not hold the expected set; recomputing", path)
        return None
    return {n: parts[n] for n in ("x", "y") if parts.get(n) is not None}


def _atomic_save(obj: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_training_set(
    ds: Dataset,
    spec: VariantSpec,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> tuple[Tensor, Tensor]:
    """The training set of variant ``spec.name`` built from ``ds``'s clean training set.

    Args:
        ds: the clean dataset (its test split is never touched).
        spec: which variant, and for ``poisoning`` which attack with which budget and source model.
        seed: seeds everything random here (noise, random labels, source model init and training, P5).
        cache_dir: directory for generated sets (created if needed), None = compute in memory every call.
        device: where the source model is trained and the attacks run (results come back on CPU).

    Returns:
        ``(x_train, y_train)``: N x C x H x W images with the dtype of ``ds.x_train`` (uint8 0..255, or
        float32 in [0, 1] for float data) and int64 labels in [0, K), N = len(ds.x_train).

    Variants (000 §3.2, reference §5):
        - ``quality``: the clean training set itself (the same tensors, not a copy).
        - ``naive``: also the clean set; the Naive model is never trained, so the experiment skips
          training for it and this set is only returned for uniformity.
        - ``noise``: every image replaced by uniform noise (float: U[0,1); uint8: integers 0..255),
          true labels kept.
        - ``mislabeling``: clean images, labels uniform in [0, K) (about (K-1)/K of them change).
        - ``poisoning``: every image perturbed by 001's delusive attack ``spec.method`` from a source
          model trained naturally on the clean set (:func:`train_source_model`; P5 needs none), labels
          kept (:func:`delusive_perturb`). Every image stays in [0,1] and in the ε-ball of its clean
          image in ``spec.norm``. uint8 data is stored as uint8 by rounding and re-checking the ball
          (:func:`quantize_in_ball`; the authors truncate with floor instead).

    Caching (``cache_dir`` given; noise, mislabeling, poisoning): the set is stored at
    :func:`cache_path` (only the tensors that differ from the clean set). A valid file is loaded
    (``torch.load(weights_only=True)``) without locking; otherwise the computation runs under a
    cross-process ``filelock.FileLock`` (``<file>.lock``) after re-checking the file, so concurrent
    trials of a sweep wait for the first one instead of recomputing. Files are written to a temp file in
    the same directory and moved into place with ``os.replace``, so readers never see a partial file;
    an unreadable or mismatching file (truncated, corrupted, other format version) is recomputed.
    """
    if spec.name in ("quality", "naive"):
        return ds.x_train, ds.y_train
    if cache_dir is None:
        return _assemble(ds, _generate(ds, spec, seed, device))
    path = cache_path(ds, spec, seed, cache_dir)
    key = path.stem.rsplit("-", 1)[-1]
    parts = _try_load(path, ds, key)
    if parts is not None:
        return _assemble(ds, parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        parts = _try_load(path, ds, key)  # another process may have written it while we waited
        if parts is None:
            parts = _generate(ds, spec, seed, device)
            _atomic_save({"format": FORMAT_VERSION, "key": key, **parts}, path)
            log.info("variant cache written: %s", path)
    return _assemble(ds, parts)
