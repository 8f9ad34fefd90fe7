"""In-memory datasets, batching and batched augmentation (pure PyTorch).

GPU-first: a trial on a GPU keeps its whole data set there (:meth:`Dataset.to`, :func:`place`; uint8 stays
uint8, 4x smaller than float), and :func:`train_batches` shuffles, gathers, crops, flips and converts each
batch on that device, with no DataLoader workers and no host round trip per batch. The permutation is
always drawn from the caller's (CPU) generator, so the batches are the same wherever the data lives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Dataset", "check_unit_range", "iterate_batches", "place", "random_crop_flip", "to_float",
           "train_batches"]


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

    def to(self, device: str | torch.device, *, train: bool = True, test: bool = True) -> Dataset:
        """This data set with its train and/or test split on ``device`` (one copy each; uint8 stays uint8)."""
        moved = {}
        if train:
            moved.update(x_train=place(self.x_train, device), y_train=place(self.y_train, device))
        if test:
            moved.update(x_test=place(self.x_test, device), y_test=place(self.y_test, device))
        return replace(self, **moved)


def place(t: Tensor, device: str | torch.device) -> Tensor:
    """``t`` on ``device`` in one copy (the tensor itself if it is there already); dtype unchanged.

    Use it once per trial for whole splits: the batch pipelines then gather on the device.
    """
    return t.to(device)


def check_unit_range(x: Tensor, what: str = "x") -> None:
    """Raise ``ValueError`` unless floating ``x`` lies in [0, 1] (uint8 always does: nothing to check).

    Reads two numbers back to the host (one device synchronisation): call it once per pass over a data set,
    never per batch.
    """
    if x.dtype == torch.uint8 or not x.numel():
        return
    if not torch.is_floating_point(x):
        raise ValueError(f"{what}: images must be uint8 or floating point in [0,1], got dtype {x.dtype}")
    lo, hi = torch.aminmax(x)
    if float(lo) < 0 or float(hi) > 1:
        raise ValueError(f"{what}: values must lie in [0,1] (normalisation belongs inside the model), "
                         f"got [{float(lo):.4g}, {float(hi):.4g}]")


def to_float(x: Tensor) -> Tensor:
    """float32 in [0, 1] from a uint8 (0..255, divided by 255) or floating tensor (cast only).

    The memory format (e.g. channels_last) is kept.
    """
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
    order_x, order_y = _order(n, shuffle, generator, x.device, y.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        # gathered where the data lives (on the GPU for a placed data set), then moved
        xb = x[order_x[start : start + batch_size]]
        yb = y[order_y[start : start + batch_size]]
        xb = to_float(xb.to(device, non_blocking=True))
        if augment is not None:
            xb = augment(xb)
        yield xb, yb.to(device, non_blocking=True)


def _order(n: int, shuffle: bool, generator: torch.Generator | None, *devices: torch.device) -> list[Tensor]:
    """The epoch's example order (a permutation drawn on the generator's device, else arange), copied once to
    each of ``devices``: the same numbers wherever the data lives, and no per-batch index transfer."""
    if shuffle:
        gdev = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gdev)
    else:
        order = torch.arange(n)
    return [order.to(d) for d in devices]


def train_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None,
    device: str | torch.device,
    augment: bool = False,
    padding: int = 4,
    aug_generator: torch.Generator | None = None,
    drop_last: bool = False,
    channels_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The trainer's pipeline: one shuffled pass over (x, y) with optional crop/flip, batch by batch on ``device``.

    The same batches, bit for bit, as ``iterate_batches(x, y, batch_size, shuffle=True, generator=generator,
    device=device, augment=partial(random_crop_flip, padding=padding, generator=aug_generator))`` for the same
    generator states (and the same random draws, in the same order), whether x lives on the host or on
    ``device``. Faster where it differs: with x on ``device`` (see :func:`place`) nothing crosses the host per
    batch; crop and flip gather the raw (uint8) pixels before the conversion to float (a gather commutes with
    the per-pixel x / 255, and zero padding stays 0), and with ``channels_last`` the gather writes that
    layout directly. Floating x is checked to lie in [0, 1] once per call (:func:`check_unit_range`).

    Args:
        x: N x C x H x W, uint8 (0..255) or float in [0, 1], on the host or on ``device``; y: N int64 labels.
        batch_size: examples per batch; ``drop_last`` drops the last partial one (static shapes).
        generator: the permutation's RNG (CPU generator: identical on every device); global RNG if None.
        device: where batches go (and where augmentation runs).
        augment: RandomCrop(H, padding) with zero padding + horizontal flip, per example, drawn from
            ``aug_generator`` (on ``device``; global RNG if None).
        channels_last: return 4-D batches in channels_last memory format.

    Yields:
        x_batch float32 in [0, 1] (B x C x H x W) and y_batch (B) on ``device``.
    """
    device = torch.device(device)
    n = len(x)
    if len(y) != n:
        raise ValueError(f"train_batches: x has {n} examples but y has {len(y)}")
    check_unit_range(x, "train_batches: x")
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
    order_x, order_y = _order(n, True, generator, x.device, y.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        xb = x.index_select(0, order_x[start : start + batch_size]).to(device, non_blocking=True)
        yb = y.index_select(0, order_y[start : start + batch_size]).to(device, non_blocking=True)
        if augment:
            xb = random_crop_flip(xb, padding, aug_generator, memory_format=fmt)
        else:
            xb = xb.contiguous(memory_format=fmt)
        yield to_float(xb), yb


def random_crop_flip(x: Tensor, padding: int = 4, generator: torch.Generator | None = None, *,
                     memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """Batched ``RandomCrop(H, padding)`` with zero padding + ``RandomHorizontalFlip(0.5)``, per example.

    Args:
        x: batch N x C x H x W, float or uint8 (any device; the work stays there).
        padding: pixels of zero padding on each side; crop offsets are uniform in [0, 2 * padding].
        generator: RNG for offsets and flips (its device is used to draw them); global RNG if None.
        memory_format: layout of the result; ``torch.channels_last`` costs no extra copy (the gather
            produces that layout).

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
    return out.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
