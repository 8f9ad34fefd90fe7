"""In-memory datasets, batching and batched augmentation (pure PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Dataset", "iterate_batches", "random_crop_flip", "to_float"]


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A whole dataset held in memory.

    Images ``x_*`` are N x C x H x W, either float32 in [0, 1] or uint8 in 0..255 (uint8 keeps
    CIFAR / Tiny-ImageNet 4x smaller, also in Ray's object store; use :func:`to_float`). Labels
    ``y_*`` are int64 of shape N with values in [0, num_classes). ``mean`` / ``std`` are the
    per-channel statistics of the [0, 1] training images (what the model's Normalize layer uses).
    Frozen: derive variants (noise, mislabelled, poisoned sets) with ``dataclasses.replace``.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)} {self.x_train.dtype}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})"
        )


def to_float(x: Tensor) -> Tensor:
    """float32 in [0, 1] from a uint8 (0..255, divided by 255) or floating tensor (cast only)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255)
    return x.to(torch.float32)


def iterate_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    augment: Callable[[Tensor], Tensor] | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x_batch, y_batch)`` on ``device`` from in-memory tensors (no DataLoader, no workers).

    Args:
        x: N x C x H x W, uint8 or float in [0, 1]; y: N labels.
        batch_size: examples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: a fresh permutation per call, drawn from ``generator`` (CPU; global RNG if None).
        device: where batches go; uint8 batches are moved first and converted there (4x less copying).
        augment: optional ``fn(float batch) -> float batch`` applied on ``device``, e.g.
            :func:`random_crop_flip` (wrap it in ``functools.partial`` to give it a generator).

    Yields:
        x_batch float32 in [0, 1] (B x C x H x W) and y_batch (B) on ``device``.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"iterate_batches: x has {n} examples but y has {len(y)}")
    # index even when not shuffling: batches are then copies, never views a caller could write into
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        xb = to_float(xb.to(device, non_blocking=True))
        if augment is not None:
            xb = augment(xb)
        yield xb, yb.to(device, non_blocking=True)


def random_crop_flip(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Batched ``RandomCrop(H, padding)`` with zero padding + ``RandomHorizontalFlip(0.5)``, per example.

    Args:
        x: float batch N x C x H x W (any device; the work stays there).
        padding: pixels of zero padding on each side; crop offsets are uniform in [0, 2 * padding].
        generator: RNG for offsets and flips (its device is used to draw them); global RNG if None.

    Returns:
        A new N x C x H x W tensor of the same dtype and device.
    """
    n, _, h, w = x.shape
    gdev = generator.device if generator is not None else x.device
    di = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=gdev).to(x.device)
    dj = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=gdev).to(x.device)
    flip = (torch.rand((n, 1), generator=generator, device=gdev) < 0.5).to(x.device)
    xp = F.pad(x, (padding, padding, padding, padding))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = di + ar_h  # N x H
    cols = dj + torch.where(flip, ar_w.flip(0), ar_w)  # N x W
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = xp[batch, :, rows[:, :, None], cols[:, None, :]]  # N x H x W x C (advanced indices first)
    return out.permute(0, 3, 1, 2).contiguous()
