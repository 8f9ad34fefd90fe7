"""Building the training sets, with a locked on-disk cache keyed by everything that determines a set."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from hyporay.data import Dataset
from hyporay.variants.delusive import delusive_perturb, quantize_in_ball, train_source_model
from hyporay.variants.spec import FORMAT_VERSION, GENERATED, IRRELEVANT, VariantSpec

log = logging.getLogger(__name__)


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
    group = spec.method if spec.name == "poisoning" and spec.method in IRRELEVANT else spec.name
    for f in IRRELEVANT.get(group, ()):
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
    if spec.name not in GENERATED:
        raise ValueError(f"variant.name: {spec.name!r} is the clean training set and is never cached")
    label = spec.name + (f"-{spec.method}" if spec.name == "poisoning" else "")
    safe_ds = "".join(c if c.isalnum() or c in "-_" else "_" for c in ds.name)
    return Path(cache_dir) / f"{safe_ds}-{label}-{_cache_key(ds, spec, seed)}.pt"


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
