"""Datasets held in memory as tensors (pure PyTorch + torchvision + scikit-learn).

Images are N x C x H x W, float32 in [0, 1] or uint8 in 0..255 (see :func:`to_float`); labels int64.

>>> from hyporay.data import load_dataset, iterate_batches
>>> ds = load_dataset("digits", seed=0)
>>> for x, y in iterate_batches(ds.x_train, ds.y_train, 128, shuffle=True): ...
"""

from . import builtin, mnist  # noqa: F401  (register digits, cifar10, cifar100, svhn, tinyimagenet, mnist, fashion_mnist)
from .core import Dataset, iterate_batches, random_crop_flip, to_float
from .registry import DATASETS, DatasetUnavailable, channel_stats, list_datasets, load_dataset, register_dataset

__all__ = [
    "DATASETS", "Dataset", "DatasetUnavailable", "channel_stats", "iterate_batches", "list_datasets",
    "load_dataset", "random_crop_flip", "register_dataset", "to_float",
]
