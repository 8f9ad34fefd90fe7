"""MNIST and Fashion-MNIST through torchvision: the real files of Debian's dataset-fashion-mnist package (CI installs
it; with CI set, a missing package fails instead of skipping) and small IDX .gz files written here in the same on-disk
format, for machines without the package."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hyporay.data import DatasetUnavailable, load_dataset
from hyporay.data import mnist as mn

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, *, gz: bool = True) -> None:
    """The IDX format: big-endian magic (0x0803 = 3-d uint8, 0x0801 = 1-d uint8), the sizes, then the bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">IIII", 0x0803, *images.shape) + images.astype(np.uint8).tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">II", 0x0801, len(labels)) + labels.astype(np.uint8).tobytes())


def _fixture(folder: Path, seed: int = 0, n_train: int = 20, n_test: int = 5, gz: bool = True):
    """Ten classes, ``n_train`` / ``n_test`` images each (in a shuffled order); returns what was written."""
    rng = np.random.default_rng(seed)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.permutation(np.repeat(np.arange(10), n))
        x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        _write_idx(folder, prefix, x, y, gz=gz)
        out.append((x, y))
    return out


@pytest.fixture
def no_system(monkeypatch, tmp_path):
    """No system package seen, and the user cache in a temporary folder."""
    monkeypatch.setattr(mn, "SYSTEM_FOLDERS", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _check_one_line(exc_info, name: str) -> str:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, DatasetUnavailable) and "\n" not in msg and msg.startswith(f"dataset {name}: ")
    err = exc_info.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return msg


def test_gz_files_in_a_flat_folder_are_read_exactly_and_decompressed_next_to_them(tmp_path, no_system):
    (xtr, ytr), (xte, yte) = _fixture(tmp_path / "root")
    ds = load_dataset("fashion_mnist", root=tmp_path / "root")
    assert ds.x_train.shape == (200, 1, 28, 28) and ds.x_train.dtype == torch.uint8 and ds.num_classes == 10
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(xtr)) and torch.equal(ds.y_train, torch.from_numpy(ytr))
    assert torch.equal(ds.x_test[:, 0], torch.from_numpy(xte)) and torch.equal(ds.y_test, torch.from_numpy(yte))
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(mn.FILES)   # torchvision's layout, no temporary left
    for f in mn.FILES:
        (tmp_path / "root" / f"{f}.gz").unlink()
    again = load_dataset("fashion_mnist", root=tmp_path / "root")   # the decompressed files, as torchvision reads them
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    assert not (tmp_path / "cache").exists()


def test_torchvision_layout_gz_and_uncompressed(tmp_path, no_system):
    (xtr, _), _ = _fixture(tmp_path / "gz" / "MNIST" / "raw", seed=1)
    ds = load_dataset("mnist", root=tmp_path / "gz")
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(xtr)) and ds.mean == (0.1307,)
    (xtr, _), _ = _fixture(tmp_path / "plain" / "MNIST" / "raw", seed=2, gz=False)
    assert torch.equal(load_dataset("mnist", root=tmp_path / "plain").x_train[:, 0], torch.from_numpy(xtr))


def test_a_system_package_is_found_and_decompressed_into_the_user_cache_not_the_root(tmp_path, monkeypatch):
    (xtr, _), _ = _fixture(tmp_path / "usr-share")
    monkeypatch.setattr(mn, "SYSTEM_FOLDERS", {"FashionMNIST": (str(tmp_path / "usr-share"),)})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ds = load_dataset("fashion_mnist", root=tmp_path / "data")
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(xtr))
    assert not (tmp_path / "data").exists()           # nothing written where the user's root points
    (raw,) = (tmp_path / "cache" / "hyporay").glob("*/FashionMNIST/raw")
    assert sorted(p.name for p in raw.iterdir()) == sorted(mn.FILES)
    (xtr2, _), _ = _fixture(tmp_path / "usr-share", seed=5)   # the package upgraded: other files, decompressed afresh
    os.utime(tmp_path / "usr-share" / "train-images-idx3-ubyte.gz", ns=(1, 1))
    assert torch.equal(load_dataset("fashion_mnist", root=tmp_path / "data").x_train[:, 0], torch.from_numpy(xtr2))


def test_missing_data_is_one_line_naming_both_ways_to_get_it(tmp_path, no_system):
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("fashion_mnist", root=tmp_path / "nothing")
    msg = _check_one_line(e, "fashion_mnist")
    assert str((tmp_path / "nothing").resolve()) in msg and "data.download=true" in msg and "data.root" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "train-images-idx3-ubyte.gz" in msg
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("mnist", root=tmp_path / "nothing")
    msg = _check_one_line(e, "mnist")
    assert "data.download=true" in msg and "data.root" in msg and "apt-get" not in msg
    assert not (tmp_path / "nothing").exists()


def test_truncated_or_malformed_files_are_one_line_and_leave_nothing_half_written(tmp_path, no_system):
    _fixture(tmp_path / "cut")
    gz = tmp_path / "cut" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("fashion_mnist", root=tmp_path / "cut")
    assert "could not be decompressed" in _check_one_line(e, "fashion_mnist")
    assert not list((tmp_path / "cut" / "FashionMNIST" / "raw").glob("*tmp*"))
    assert not (tmp_path / "cut" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()

    _fixture(tmp_path / "small")
    _write_idx(tmp_path / "small", "train", np.zeros((200, 27, 27), np.uint8), np.zeros(200, np.uint8))
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("fashion_mnist", root=tmp_path / "small")
    assert "could not be read" in _check_one_line(e, "fashion_mnist") and "27" in str(e.value)

    _fixture(tmp_path / "magic")
    with gzip.open(tmp_path / "magic" / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"not an IDX file at all")
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("fashion_mnist", root=tmp_path / "magic")
    assert "could not be read" in _check_one_line(e, "fashion_mnist")


def test_subsets_are_stratified_and_seeded(tmp_path, no_system):
    _fixture(tmp_path / "r", n_train=30, n_test=10)
    a = load_dataset("fashion_mnist", root=tmp_path / "r", subset_train=100, subset_test=50, seed=0)
    b = load_dataset("fashion_mnist", root=tmp_path / "r", subset_train=100, subset_test=50, seed=0)
    c = load_dataset("fashion_mnist", root=tmp_path / "r", subset_train=100, subset_test=50, seed=1)
    assert torch.bincount(a.y_train).tolist() == [10] * 10 and torch.bincount(a.y_test).tolist() == [5] * 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def _real_files() -> None:
    if not all((DEBIAN / f"{f}.gz").is_file() for f in mn.FILES):
        why = f"Debian's dataset-fashion-mnist is not installed ({DEBIAN} lacks the four IDX .gz files)"
        if os.environ.get("CI"):
            pytest.fail(why + "; .ci/run installs it")
        pytest.skip(why)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    _real_files()
    cache = tmp_path_factory.mktemp("cache")
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        yield load_dataset("fashion_mnist", root=tmp_path_factory.mktemp("empty-root") / "data")
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = saved


def test_real_fashion_mnist_from_the_debian_package(real):
    assert real.x_train.shape == (60000, 1, 28, 28) and real.x_test.shape == (10000, 1, 28, 28)
    assert real.x_train.dtype == torch.uint8 and real.num_classes == 10
    assert torch.bincount(real.y_train).tolist() == [6000] * 10 and torch.bincount(real.y_test).tolist() == [1000] * 10
    mean = real.x_train[:5000].double().div(255).mean().item()
    assert abs(mean - 0.2860) < 0.01 and int(real.x_train.max()) == 255


def test_real_fashion_mnist_subset_through_the_trial_config(real, tmp_path):
    from hyporay.config import TrialConfig
    from hyporay.experiment import load_trial_data

    _real_files()
    cfg = TrialConfig.model_validate({"data": {"name": "fashion_mnist", "subset_train": 2000, "subset_test": 500,
                                               "root": str(tmp_path / "data")}})
    ds = load_trial_data(cfg)
    assert torch.bincount(ds.y_train).tolist() == [200] * 10 and torch.bincount(ds.y_test).tolist() == [50] * 10
    sub = load_dataset("fashion_mnist", root=tmp_path / "data", subset_train=2000, subset_test=500)
    assert torch.equal(ds.x_train, sub.x_train)
    # every subset image is one of the full set's, with its label
    rows = {bytes(x.numpy()): int(y) for x, y in zip(real.x_test, real.y_test)}
    assert all(rows[bytes(x.numpy())] == int(y) for x, y in zip(ds.x_test, ds.y_test))
