"""MNIST and Fashion-MNIST through torchvision's own dataset classes, offline wherever the files lie on disk.

torchvision reads the four uncompressed IDX files from ``root/<Class>/raw/`` (``MNIST`` or ``FashionMNIST``), which
is where its own download puts them. hyporay looks for the data, in this order:

1. ``root/<Class>/raw/`` with the uncompressed files: torchvision reads them as they are;
2. the four ``.gz`` files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-...``) in
   ``root/<Class>/raw/``, in ``root`` itself, or in a system folder (Debian's ``dataset-fashion-mnist`` package
   installs Fashion-MNIST in ``/usr/share/datasets/fashion-mnist``): decompressed once, next to the user's own files
   (``root/<Class>/raw/``) or, for a system package's files or a read-only root, into the user's cache
   (``$XDG_CACHE_HOME`` or ``~/.cache``, ``hyporay/<hash of the files>/<Class>/raw/``), from where torchvision reads;
3. ``download=True``: torchvision fetches them into ``root/<Class>/raw/`` (needs network).

A system package's files are never copied into a checkout (Fashion-MNIST decompressed is 53 MB). Debian
recompresses the ``.gz`` files, so their md5 differs from torchvision's list: the files are judged by their content
instead (the IDX magic numbers and sizes, 28 x 28 uint8 images, labels in 0..9, as many labels as images).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from .core import Dataset
from .registry import DatasetUnavailable, one_line, register_dataset

__all__ = ["FILES", "SYSTEM_FOLDERS", "find_gz_folder"]

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: torchvision class name -> folders a system package installs the four ``.gz`` files in
SYSTEM_FOLDERS: dict[str, tuple[str, ...]] = {"FashionMNIST": ("/usr/share/datasets/fashion-mnist",)}


def _has(folder: Path, suffix: str) -> bool:
    return all((folder / (f + suffix)).is_file() for f in FILES)


def find_gz_folder(root: Path, cls_name: str) -> Path | None:
    """The first folder holding all four ``.gz`` files: ``root/<cls>/raw``, ``root``, then the system folders."""
    for folder in (root / cls_name / "raw", root, *(Path(p) for p in SYSTEM_FOLDERS.get(cls_name, ()))):
        if _has(folder, ".gz"):
            return folder
    return None


def _destination(src: Path, root: Path, cls_name: str) -> Path:
    """Where the decompressed files go: next to the ``.gz`` files when they are the user's own (in ``root``) and
    ``root/<cls>/raw`` can be written; else (a system package's files, a read-only root) the user's cache, in a folder
    per source (``$XDG_CACHE_HOME/hyporay/<hash of the folder and its files>``), outside any checkout."""
    if src in (root, root / cls_name / "raw"):
        raw = root / cls_name / "raw"
        try:
            raw.mkdir(parents=True, exist_ok=True)
            if os.access(raw, os.W_OK):
                return root
        except OSError:
            pass
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hyporay"
    key = hashlib.sha256(str(src.resolve()).encode())
    for f in FILES:  # a package upgrade (other sizes or times) decompresses afresh
        st = (src / (f + ".gz")).stat()
        key.update(f"{f} {st.st_size} {st.st_mtime_ns}".encode())
    return cache / key.hexdigest()[:16]


def _decompress(src: Path, dest_root: Path, cls_name: str) -> Path:
    """Decompress the four ``.gz`` files of ``src`` into ``dest_root/<cls>/raw`` (atomically, file by file: trials
    that start together each write their own temporary file). Returns ``dest_root``."""
    raw = dest_root / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        if (raw / f).is_file():
            continue
        tmp = raw / f"{f}.tmp{os.getpid()}"
        try:
            with gzip.open(src / (f + ".gz"), "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            os.replace(tmp, raw / f)
        finally:
            tmp.unlink(missing_ok=True)
    return dest_root



def _mnist_loader(name: str, cls_name: str, mean: float, std: float, debian: str | None) -> Callable[..., Dataset]:
    def load(root: str | Path = "data", download: bool = False) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        path = Path(root).expanduser().resolve()
        read_from = path
        if not _has(path / cls_name / "raw", ""):
            src = find_gz_folder(path, cls_name)
            if src is not None:
                try:
                    read_from = _decompress(src, _destination(src, path, cls_name), cls_name)
                except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; EOFError: truncated
                    raise DatasetUnavailable(f"dataset {name}: the .gz files in {src} could not be decompressed "
                                             f"({one_line(err)})") from None
            elif not download:
                where = f"{path}" + "".join(f" nor in {p}" for p in SYSTEM_FOLDERS.get(cls_name, ()))
                package = f", `apt-get install {debian}` (Debian)" if debian else ""
                raise DatasetUnavailable(
                    f"dataset {name}: not found under {where}; get it with --set data.download=true (online)"
                    f"{package}, or point data.root at a folder holding {', '.join(f + '.gz' for f in FILES)}")
        parts: list[torch.Tensor] = []
        for train in (True, False):
            try:
                d = cls(str(read_from), train=train, download=download)
                x, y = d.data, d.targets
                if x.dim() != 3 or tuple(x.shape[1:]) != (28, 28) or x.dtype != torch.uint8:
                    raise ValueError(f"images are {tuple(x.shape)} {x.dtype}, expected N x 28 x 28 uint8")
            except Exception as err:  # RuntimeError (missing), AssertionError/ValueError (bad IDX), URLError
                raw = read_from / cls_name / "raw"
                if download and not _has(raw, ""):
                    msg = (f"not found under {path} and the download failed ({one_line(err)}); point data.root at a "
                           "copy")
                else:
                    msg = f"files in {raw} could not be read ({one_line(err)}); delete them and fetch them again"
                raise DatasetUnavailable(f"dataset {name}: {msg}") from None
            parts += [x.unsqueeze(1).contiguous(), y.to(torch.int64)]
        return Dataset(name, *parts, 10, (mean,), (std,))

    load.__doc__ = (
        f"{cls_name} through torchvision: 60,000 + 10,000 images, uint8 N x 1 x 28 x 28, 10 classes; found on disk "
        f"as :mod:`hyporay.data.mnist` describes; mean/std are the usual published values ({mean}, {std})."
    )
    return load


register_dataset("fashion_mnist", _mnist_loader("fashion_mnist", "FashionMNIST", 0.2860, 0.3530,
                                                "dataset-fashion-mnist"))
register_dataset("mnist", _mnist_loader("mnist", "MNIST", 0.1307, 0.3081, None))
