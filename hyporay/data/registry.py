"""Dataset registry: name -> loader, validation of what loaders return, seeded subsets."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from torch import Tensor

from .core import Dataset, to_float

__all__ = ["DATASETS", "DatasetUnavailable", "channel_stats", "list_datasets", "load_dataset", "one_line",
           "register_dataset"]

LoaderResult = Union[Dataset, tuple]
#: name -> loader ``fn(**kw) -> Dataset | (x_train, y_train, x_test, y_test, num_classes)``; the loader
#: receives those of ``root``, ``seed``, ``download``, ``test_fraction`` that its signature names.
DATASETS: dict[str, Callable[..., LoaderResult]] = {}


class DatasetUnavailable(ValueError):
    """The dataset's files are absent, unreadable or could not be downloaded (one-line message)."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception on one line, cut to ``limit`` characters (for DatasetUnavailable)."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def register_dataset(name: str, fn: Callable[..., LoaderResult] | None = None):
    """Register loader ``fn`` under ``name`` (usable as ``@register_dataset(name)`` too).

    ``fn`` returns a :class:`Dataset` or a tuple ``(x_train, y_train, x_test, y_test, num_classes[, mean, std])``
    with x float in [0, 1] (or uint8) of shape N x C x H x W, or N x D feature vectors (kept as N x 1 x 1 x D:
    the ``mlp`` takes them as they are), and integer labels in [0, num_classes). The model normalises inside
    with mean/std: the loader's own when it gives them (a Dataset's, or the 7-tuple's; ``None`` for both =
    no normalisation), else computed per channel from x_train. Re-registering a name replaces the loader.
    """
    if fn is None:
        return lambda f: register_dataset(name, f)
    DATASETS[name] = fn
    return fn


def list_datasets() -> list[str]:
    """Sorted names of the registered datasets."""
    return sorted(DATASETS)


def load_dataset(
    name: str,
    *,
    root: str | Path = "data",
    seed: int = 0,
    download: bool = False,
    subset_train: int | None = None,
    subset_test: int | None = None,
    test_fraction: float = 0.3,
) -> Dataset:
    """Load, validate and optionally subsample registered dataset ``name``.

    Args:
        root: directory holding the files (torchvision's layout; see each loader).
        seed: drives the train/test split of datasets without one (digits) and the subsets.
        download: let torchvision fetch missing files (needs network).
        subset_train, subset_test: keep this many examples, chosen by a seeded, class-proportional
            draw (each class keeps about its share); None keeps all.
        test_fraction: fraction held out as test set by loaders that split (digits), in (0, 1).

    Raises:
        ValueError: one line, for an unknown name, bad arguments or malformed loader output.
        DatasetUnavailable: one line, when the files are missing/unreadable.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown {name!r}; known: {', '.join(list_datasets())}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"dataset {name}: test_fraction must lie in (0, 1), got {test_fraction}")
    for field, n in (("subset_train", subset_train), ("subset_test", subset_test)):
        if n is not None and (isinstance(n, bool) or int(n) != n or n < 1):
            raise ValueError(f"dataset {name}: {field} must be a positive integer or None, got {n!r}")
    fn = DATASETS[name]
    offered = dict(root=root, seed=seed, download=download, test_fraction=test_fraction)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        offered = {k: v for k, v in offered.items() if k in params}
    ds = _as_dataset(name, fn(**offered))
    if subset_train is not None or subset_test is not None:
        tr = _stratified_subset(ds.y_train, subset_train, seed)
        te = _stratified_subset(ds.y_test, subset_test, seed + 1)
        ds = Dataset(ds.name, ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te], ds.num_classes, ds.mean, ds.std)
    return ds


def _as_dataset(name: str, out: LoaderResult) -> Dataset:
    """Validate a loader's result and turn it into a :class:`Dataset` (one-line ValueErrors)."""
    compute = object()  # mean/std not given: computed from x_train
    if isinstance(out, Dataset):
        x_tr, y_tr, x_te, y_te, k, mean, std = (
            out.x_train, out.y_train, out.x_test, out.y_test, out.num_classes, out.mean, out.std)
    elif isinstance(out, tuple) and len(out) == 5:
        (x_tr, y_tr, x_te, y_te, k), mean, std = out, compute, compute
    elif isinstance(out, tuple) and len(out) == 7:
        x_tr, y_tr, x_te, y_te, k, mean, std = out
    else:
        raise ValueError(
            f"dataset {name}: the loader must return a Dataset or (x_train, y_train, x_test, y_test, num_classes"
            f"[, mean, std]), got {type(out).__name__}{f' of length {len(out)}' if isinstance(out, tuple) else ''}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"dataset {name}: num_classes must be a positive integer, got {k!r}")
    k = int(k)
    x_tr, x_te = _check_x(name, "x_train", x_tr), _check_x(name, "x_test", x_te)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(f"dataset {name}: x_train images are {tuple(x_tr.shape[1:])} but x_test images are {tuple(x_te.shape[1:])}")
    y_tr, y_te = _check_y(name, "y_train", y_tr, len(x_tr), k), _check_y(name, "y_test", y_te, len(x_te), k)
    c = x_tr.shape[1]
    if mean is compute:
        mean, std = channel_stats(x_tr)
    elif mean is None and std is None:  # the loader's choice: no normalisation inside the model
        mean, std = (0.0,) * c, (1.0,) * c
    elif mean is None or std is None:
        raise ValueError(f"dataset {name}: give both mean and std, or neither (None, None: no normalisation)")
    mean, std = tuple(np.atleast_1d(np.asarray(mean, dtype=float))), tuple(np.atleast_1d(np.asarray(std, dtype=float)))
    if len(mean) != c or len(std) != c:
        raise ValueError(f"dataset {name}: mean/std need {c} values (one per channel), got {len(mean)} and {len(std)}")
    return Dataset(name, x_tr, y_tr, x_te, y_te, k, tuple(float(m) for m in mean), tuple(float(s) for s in std))


def _check_x(name: str, field: str, x) -> Tensor:
    """N x C x H x W, uint8 or floating in [0, 1] (cast to float32); numpy arrays are accepted."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"dataset {name}: {field} must be a tensor, got {type(x).__name__}")
    if x.ndim == 2:  # feature vectors: N x D, seen by the models as N x 1 x 1 x D
        x = x.reshape(x.shape[0], 1, 1, x.shape[1])
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"dataset {name}: {field} must be a non-empty N x C x H x W (or N x D) tensor, got shape "
                         f"{tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ValueError(f"dataset {name}: {field} must be float in [0, 1] or uint8, got dtype {x.dtype}")
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"dataset {name}: {field} contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"dataset {name}: {field} must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
    return x


def _check_y(name: str, field: str, y, n: int, k: int) -> Tensor:
    """int64 labels of shape (n,) in [0, k)."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"dataset {name}: {field} must be an integer tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    if tuple(y.shape) != (n,):
        raise ValueError(f"dataset {name}: {field} must have shape ({n},) to match its images, got {tuple(y.shape)}")
    y = y.to(torch.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"dataset {name}: {field} labels must lie in [0, {k}) for num_classes={k}, got [{lo}, {hi}]")
    return y


def channel_stats(x: Tensor, chunk_elements: int = 1 << 22) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of images ``x`` (N x C x H x W) in [0, 1] units.

    Computed in float64 over chunks of about ``chunk_elements`` values, so uint8 datasets are never
    converted whole. A constant
    channel gets std 1.0 (instead of 0) so that Normalize stays finite.
    """
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    chunk = max(1, chunk_elements // max(1, x[0].numel()))
    for i in range(0, len(x), chunk):
        xb = to_float(x[i : i + chunk]).to(torch.float64)
        s += xb.sum(dim=(0, 2, 3))
        s2 += xb.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / count
    std = (s2 / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def _stratified_subset(y: Tensor, n: int | None, seed: int) -> Tensor:
    """Sorted indices of ``n`` examples drawn at random with each class keeping about its share.

    Examples are shuffled by ``seed``; each gets the key (rank within its class + 0.5) / class size
    and the ``n`` smallest keys are kept, which interleaves the classes proportionally.
    """
    if n is None or n >= len(y):
        return torch.arange(len(y))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    yp = y[perm]
    counts = torch.bincount(yp)
    grouped = torch.argsort(yp, stable=True)  # positions grouped by class, shuffled order inside
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(grouped)
    rank[grouped] = torch.arange(len(y)) - starts[yp[grouped]]
    key = (rank.to(torch.float64) + 0.5) / counts[yp].to(torch.float64)
    return perm[torch.argsort(key, stable=True)[:n]].sort().values
