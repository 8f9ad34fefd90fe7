"""Built-in datasets: digits (scikit-learn, offline), CIFAR-10/100 and SVHN (torchvision's on-disk
formats), Tiny-ImageNet (ImageFolder-style layout). All images come out N x C x H x W."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .core import Dataset
from .registry import DatasetUnavailable, channel_stats, one_line, register_dataset

_FETCH_HINT = "pass download=True / --set data.download=true to fetch it, or point data.root at a copy"



@register_dataset("digits")
def digits(seed: int = 0, test_fraction: float = 0.3) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), 1 x 8 x 8 float32 in [0, 1]
    (pixel / 16), split stratified by class with ``train_test_split(random_state=seed)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(), torch.from_numpy(x_te), torch.from_numpy(y_te).long(), 10


def _torchvision_loader(
    name: str,
    cls_name: str,
    splits: Sequence[dict[str, Any]],
    marker: str,
    to_xy: Callable[[Any], tuple[Tensor, Tensor]],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Callable[..., Dataset]:
    """A loader reading (train, test) through torchvision's dataset class ``cls_name``; any failure
    becomes a one-line :class:`DatasetUnavailable`. ``marker`` is the file/folder under root whose
    presence tells "missing" from "corrupted"."""

    def load(root: str | Path = "data", download: bool = False) -> Dataset:
        import torchvision.datasets as tvd

        path = Path(root).expanduser().resolve()
        parts: list[Tensor] = []
        for kw in splits:
            try:
                parts += to_xy(getattr(tvd, cls_name)(str(path), download=download, **kw))
            except Exception as err:  # torchvision: RuntimeError (missing / md5), network or unpickling errors
                if download:
                    msg = f"not found under {path} and the download failed ({one_line(err)}); point data.root at a copy"
                elif (path / marker).exists():
                    msg = f"files under {path} could not be read ({one_line(err)}); re-fetch them (download=True) or point data.root at a good copy"
                else:
                    msg = f"not found under {path} ({_FETCH_HINT})"
                raise DatasetUnavailable(f"dataset {name}: {msg}") from None
        return Dataset(name, *parts, num_classes, mean, std)

    load.__doc__ = (
        f"{cls_name} through torchvision (files under root/{marker}); images uint8 N x 3 x 32 x 32, "
        f"{num_classes} classes; mean/std are the usual published values."
    )
    return load


def _cifar_xy(ds: Any) -> tuple[Tensor, Tensor]:
    # torchvision keeps CIFAR as N x 32 x 32 x 3 (HWC) uint8
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def _svhn_xy(ds: Any) -> tuple[Tensor, Tensor]:
    # torchvision already transposed the .mat's H x W x C x N to N x C x H x W (a strided view) and mapped label 10 -> 0
    return torch.from_numpy(np.ascontiguousarray(ds.data)), torch.from_numpy(ds.labels).to(torch.int64)


register_dataset("cifar10", _torchvision_loader(
    "cifar10", "CIFAR10", [dict(train=True), dict(train=False)], "cifar-10-batches-py", _cifar_xy, 10,
    (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)))
register_dataset("cifar100", _torchvision_loader(
    "cifar100", "CIFAR100", [dict(train=True), dict(train=False)], "cifar-100-python", _cifar_xy, 100,
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))
register_dataset("svhn", _torchvision_loader(
    "svhn", "SVHN", [dict(split="train"), dict(split="test")], "train_32x32.mat", _svhn_xy, 10,
    (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)))


TINY_DIR = "tiny-imagenet-200"
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def _image_files(folder: Path) -> list[Path]:
    """Images of one class folder: ``folder/images/*`` (official layout) or ``folder/*``."""
    folder = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def _read_images(paths: Sequence[Path], size: int) -> Tensor:
    """Decode images with PIL (threads) into uint8 N x 3 x size x size (RGB; others resized bilinearly)."""
    from PIL import Image

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)

    def read(i: int) -> None:
        with Image.open(paths[i]) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(read, range(len(paths))))
    return out


@register_dataset("tinyimagenet")
def tinyimagenet(root: str | Path = "data") -> Dataset:
    """Tiny-ImageNet-200 from ``root/tiny-imagenet-200`` (not downloadable through torchvision).

    Train: ``train/<wnid>/images/*.JPEG`` (official) or ``train/<wnid>/*.JPEG``; class index = position
    of the wnid in the sorted train folders. Test = the official val split: ``val/images/*`` labelled
    by ``val/val_annotations.txt`` (columns: filename, wnid, box...), or ``val/<wnid>/...`` folders.
    Images uint8 N x 3 x 64 x 64; mean/std computed per channel over the train pixels (the authors'
    code hard-codes (0.4802, 0.4481, 0.3975) / (0.2770, 0.2691, 0.2821)).
    Decoding ~110k JPEGs takes a while, so tensors and statistics are cached next to the data as
    ``.hyporay-cache-<hash>.pt`` (hash of the file list; delete it to rebuild).
    """
    base = Path(root).expanduser().resolve() / TINY_DIR
    train_dir, val_dir = base / "train", base / "val"
    if not (train_dir.is_dir() and val_dir.is_dir()):
        raise DatasetUnavailable(
            f"dataset tinyimagenet: not found under {base.parent} (expected {TINY_DIR}/train/<wnid>/images/*.JPEG and "
            f"{TINY_DIR}/val/; torchvision cannot download it: unzip tiny-imagenet-200.zip there, or point data.root at a copy)")
    try:
        wnids = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
        index = {w: i for i, w in enumerate(wnids)}
        train = [(p, index[w]) for w in wnids for p in _image_files(train_dir / w)]
        annotations = val_dir / "val_annotations.txt"
        if annotations.is_file():
            rows = [line.split() for line in annotations.read_text().splitlines() if line.strip()]
            test = [(val_dir / "images" / r[0], index[r[1]]) for r in rows]
        else:
            test = [(p, index[d.name]) for d in sorted(val_dir.iterdir()) if d.is_dir() for p in _image_files(d)]
        if not train or not test:
            raise ValueError(f"no images found ({len(train)} train, {len(test)} val)")
        listing = "\n".join(f"{p.relative_to(base)} {c}" for p, c in train + test)
        cache = base / f".hyporay-cache-{hashlib.sha1(listing.encode()).hexdigest()[:16]}.pt"
        if cache.is_file():
            tensors = torch.load(cache, weights_only=True)
        else:
            tensors = {
                "x_train": _read_images([p for p, _ in train], 64),
                "y_train": torch.tensor([c for _, c in train], dtype=torch.int64),
                "x_test": _read_images([p for p, _ in test], 64),
                "y_test": torch.tensor([c for _, c in test], dtype=torch.int64),
            }
            tensors["mean"], tensors["std"] = (torch.tensor(v) for v in channel_stats(tensors["x_train"]))
            try:  # best effort: read-only data directories simply go without a cache
                tmp = cache.with_suffix(f".tmp{os.getpid()}")
                torch.save(tensors, tmp)
                os.replace(tmp, cache)
            except OSError:
                tmp.unlink(missing_ok=True)
    except KeyError as err:
        raise DatasetUnavailable(f"dataset tinyimagenet: val wnid {err} under {base} is not a train class folder") from None
    except (OSError, ValueError, IndexError) as err:
        raise DatasetUnavailable(f"dataset tinyimagenet: data under {base} could not be read ({one_line(err)})") from None
    return Dataset("tinyimagenet", tensors["x_train"], tensors["y_train"], tensors["x_test"], tensors["y_test"],
                   len(wnids), tuple(tensors["mean"].tolist()), tuple(tensors["std"].tolist()))
