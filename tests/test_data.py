"""Datasets: digits, torchvision's on-disk formats (written here in miniature), Tiny-ImageNet folders,
user-registered tensors, subsets, batching and batched augmentation."""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from hyporay.data import (
    DATASETS, Dataset, DatasetUnavailable, channel_stats, iterate_batches, list_datasets, load_dataset,
    random_crop_flip, register_dataset, to_float,
)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _one_line_unavailable(exc_info, name: str, root: Path) -> str:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, ValueError) and "\n" not in msg
    assert msg.startswith(f"dataset {name}: ") and str(root.resolve()) in msg
    err = exc_info.value  # no chained torchvision error in the traceback
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return msg


@pytest.fixture
def registry():
    """Restore the dataset registry after a test that registers loaders."""
    saved = dict(DATASETS)
    yield DATASETS
    DATASETS.clear()
    DATASETS.update(saved)


# ----------------------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_statistics() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1257, 1, 8, 8) and ds.x_test.shape == (540, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1 and ds.in_shape == (1, 8, 8) and ds.num_classes == 10
    assert set(ds.y_test.tolist()) == set(range(10))
    assert ds.mean == pytest.approx((ds.x_train.mean().item(),), rel=1e-5)
    assert ds.std == pytest.approx((ds.x_train.std(unbiased=False).item(),), rel=1e-4)


def test_digits_split_is_deterministic_per_seed_and_stratified() -> None:
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    for ds in (a, c):  # each class keeps its share of the 1797 images (within one example)
        total = torch.bincount(torch.cat([ds.y_train, ds.y_test]), minlength=10).double()
        assert (torch.bincount(ds.y_test, minlength=10) - 0.3 * total).abs().max() <= 1
    half = load_dataset("digits", test_fraction=0.5)
    assert len(half.x_test) in (898, 899) and len(half.x_train) + len(half.x_test) == 1797


# ------------------------------------------------------------------------ torchvision on-disk formats


def _write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)  # one row = R plane, G plane, B plane


def _patch_md5(monkeypatch, cls, folder: Path) -> None:
    """torchvision verifies every file against md5s hard-coded on the class: point them at our files."""
    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(cls, attr, [[f, _md5(folder / f)] for f, _ in getattr(cls, attr)])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


def test_cifar10_round_trips_torchvisions_format(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    rows, labels = [], []
    for i in range(1, 6):
        r, y = _cifar_rows(rng, 3), rng.integers(0, 10, 3).tolist()
        _write_pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": r, "labels": y})
        rows.append(r)
        labels += y
    test_rows, test_labels = _cifar_rows(rng, 4), [9, 0, 3, 3]
    _write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": test_rows, "labels": test_labels})
    _write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})

    with pytest.raises(DatasetUnavailable) as err:  # torchvision's own md5s do not match our files
        load_dataset("cifar10", root=tmp_path)
    assert "could not be read" in _one_line_unavailable(err, "cifar10", tmp_path)

    _patch_md5(monkeypatch, tvd.CIFAR10, folder)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert torch.equal(ds.x_train, torch.from_numpy(np.concatenate(rows)).reshape(15, 3, 32, 32))
    assert torch.equal(ds.x_test, torch.from_numpy(test_rows).reshape(4, 3, 32, 32))
    assert ds.y_train.tolist() == labels and ds.y_test.tolist() == test_labels
    assert ds.num_classes == 10 and ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2471, 0.2435, 0.2616)
    sub = load_dataset("cifar10", root=tmp_path, subset_train=5, subset_test=2, seed=1)
    assert sub.x_train.dtype == torch.uint8 and len(sub.x_train) == 5 and len(sub.y_test) == 2


def test_cifar100_round_trips_torchvisions_format(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    train_rows, test_rows = _cifar_rows(rng, 6), _cifar_rows(rng, 2)
    fine, coarse = [0, 99, 5, 42, 17, 99], [0, 19, 1, 2, 3, 19]
    _write_pickle(folder / "train", {"data": train_rows, "fine_labels": fine, "coarse_labels": coarse})
    _write_pickle(folder / "test", {"data": test_rows, "fine_labels": [7, 98], "coarse_labels": [1, 2]})
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]})
    _patch_md5(monkeypatch, tvd.CIFAR100, folder)
    ds = load_dataset("cifar100", root=tmp_path)
    assert torch.equal(ds.x_train, torch.from_numpy(train_rows).reshape(6, 3, 32, 32))
    assert torch.equal(ds.x_test, torch.from_numpy(test_rows).reshape(2, 3, 32, 32))
    assert ds.y_train.tolist() == fine and ds.y_test.tolist() == [7, 98] and ds.num_classes == 100  # fine labels
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)


def test_svhn_round_trips_torchvisions_format(tmp_path: Path, monkeypatch) -> None:
    import scipy.io

    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # SVHN's .mat layout: H x W x C x N
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # labels 1..10, 10 meaning digit 0
        y[0, 0] = 10
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        arrays[split] = (x, y)
    split_list = {k: [url, f, _md5(tmp_path / f) if k != "extra" else md5] for k, (url, f, md5) in tvd.SVHN.split_list.items()}
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    ds = load_dataset("svhn", root=tmp_path)
    for x_t, y_t, (x, y) in ((ds.x_train, ds.y_train, arrays["train"]), (ds.x_test, ds.y_test, arrays["test"])):
        assert x_t.dtype == torch.uint8 and x_t.is_contiguous() and x_t.shape == (x.shape[3], 3, 32, 32)
        assert torch.equal(x_t, torch.from_numpy(x).permute(3, 2, 0, 1))  # x_t[n, c, h, w] == X[h, w, c, n]
        assert y_t.tolist() == [int(v) % 10 for v in y[:, 0]] and y_t[0] == 0
    assert ds.num_classes == 10 and ds.mean == (0.4377, 0.4438, 0.4728)


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution\n(more lines)")

    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("cifar10", root=tmp_path, download=True)
    msg = _one_line_unavailable(err, "cifar10", tmp_path)
    assert "download failed" in msg and "URLError" in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "tinyimagenet"])
def test_missing_data_raises_one_line_dataset_unavailable(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset(name, root=tmp_path)
    msg = _one_line_unavailable(err, name, tmp_path)
    assert msg.startswith(f"dataset {name}: not found under {tmp_path.resolve()} (")
    if name != "tinyimagenet":
        assert msg.endswith("(pass download=True / --set data.download=true to fetch it, or point data.root at a copy)")


# ------------------------------------------------------------------------------------- Tiny-ImageNet


def _jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB") -> np.ndarray:
    """Write a 64x64 JPEG and return what PIL decodes from it as RGB (JPEG is lossy)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (64, 64, 3) if mode == "RGB" else (64, 64)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(path, "JPEG")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("layout", ["official", "flat"])
def test_tinyimagenet_folders(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(3)
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # class index follows sorted order: n01 -> 0, n02 -> 1, n03 -> 2
    train = {}
    for w in wnids:
        folder = base / "train" / w / "images" if layout == "official" else base / "train" / w
        for i in range(2):
            train[(w, i)] = _jpeg(folder / f"{w}_{i}.JPEG", rng, "L" if (w, i) == ("n02", 1) else "RGB")
        if layout == "official":
            (base / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
    val = [("n02", "val_0.JPEG"), ("n03", "val_1.JPEG"), ("n01", "val_2.JPEG")]
    val_pixels = []
    for w, f in val:
        val_pixels.append(_jpeg(base / "val" / ("images" if layout == "official" else w) / f, rng))
    if layout == "official":
        (base / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t1\t2\t60\t61\n" for w, f in val))
    else:  # class folders are read in sorted wnid order
        order = sorted(range(3), key=lambda i: val[i][0])
        val, val_pixels = [val[i] for i in order], [val_pixels[i] for i in order]

    ds = load_dataset("tinyimagenet", root=tmp_path)
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (6, 3, 64, 64) and ds.num_classes == 3
    expected = [train[(w, i)] for w in sorted(wnids) for i in range(2)]
    assert torch.equal(ds.x_train, torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2))
    assert ds.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(ds.x_test, torch.from_numpy(np.stack(val_pixels)).permute(0, 3, 1, 2))
    assert ds.y_test.tolist() == [sorted(wnids).index(w) for w, _ in val]
    mean, std = channel_stats(ds.x_train)
    assert ds.mean == pytest.approx(mean) and ds.std == pytest.approx(std)
    caches = list(base.glob(".hyporay-cache-*.pt"))
    assert len(caches) == 1
    again = load_dataset("tinyimagenet", root=tmp_path)  # served from the cache
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test) and again.mean == ds.mean


def test_tinyimagenet_val_class_missing_from_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    base = tmp_path / "tiny-imagenet-200"
    _jpeg(base / "train" / "n01" / "images" / "a.JPEG", rng)
    _jpeg(base / "val" / "images" / "v.JPEG", rng)
    (base / "val" / "val_annotations.txt").write_text("v.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("tinyimagenet", root=tmp_path)
    assert "n99" in _one_line_unavailable(err, "tinyimagenet", tmp_path)


# ---------------------------------------------------------------------------- registry and validation


def _toy(n: int = 20, k: int = 4, c: int = 2):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((n, c, 5, 5), generator=g)
    y = torch.arange(n) % k
    return x, y, x[:6].clone(), y[:6].clone(), k


def test_register_dataset_with_user_tensors(registry) -> None:
    register_dataset("toy", lambda: _toy())
    seen = {}

    @register_dataset("toy_seeded")
    def toy_seeded(seed, root):
        seen.update(seed=seed, root=root)
        return _toy(c=1)

    assert {"toy", "toy_seeded", "digits"} <= set(list_datasets())
    ds = load_dataset("toy")
    x = _toy()[0]
    assert isinstance(ds, Dataset) and ds.name == "toy" and ds.in_shape == (2, 5, 5) and ds.num_classes == 4
    assert ds.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert ds.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    load_dataset("toy_seeded", seed=7, root="somewhere")
    assert seen == {"seed": 7, "root": "somewhere"}  # a loader receives only the arguments it names


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda t: (t[0] * 2, *t[1:]), "x_train must lie in [0, 1]"),
        (lambda t: (t[0][:, 0], *t[1:]), "x_train must be a non-empty N x C x H x W"),
        (lambda t: (t[0], t[1], t[2].to(torch.int32), *t[3:]), "x_test must be float in [0, 1] or uint8"),
        (lambda t: (t[0], t[1] + 1, *t[2:]), "y_train labels must lie in [0, 4)"),
        (lambda t: (t[0], t[1][:-1], *t[2:]), "y_train must have shape (20,)"),
        (lambda t: (t[0], t[1], t[2], t[3].float(), t[4]), "y_test must be an integer tensor"),
        (lambda t: (t[0], t[1], t[2][:, :1], *t[3:]), "x_train images are (2, 5, 5) but x_test images are (1, 5, 5)"),
        (lambda t: (t[0].masked_fill(t[0] > 0.5, float("nan")), *t[1:]), "x_train contains NaN"),
        (lambda t: (*t[:4], 0), "num_classes must be a positive integer"),
        (lambda t: t[:4], "must return a Dataset or (x_train, y_train, x_test, y_test, num_classes[, mean, std])"),
        (lambda t: (*t, None, (0.5,)), "give both mean and std, or neither"),
    ],
)
def test_register_dataset_rejects_bad_input_with_one_line(registry, mutate, needle: str) -> None:
    register_dataset("bad", lambda: mutate(_toy()))
    with pytest.raises(ValueError) as err:
        load_dataset("bad")
    assert needle in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("dataset bad: ")


def test_unknown_dataset_and_bad_arguments() -> None:
    with pytest.raises(ValueError) as err:
        load_dataset("x")
    assert str(err.value) == f"dataset: unknown 'x'; known: {', '.join(list_datasets())}"
    for kwargs in (dict(subset_train=0), dict(subset_test=2.5), dict(test_fraction=1.0)):
        with pytest.raises(ValueError, match="^dataset digits: "):
            load_dataset("digits", **kwargs)


def test_subsets_are_seeded_and_class_proportional(registry) -> None:
    y = torch.cat([torch.zeros(60), torch.ones(30), torch.full((10,), 2)]).long()
    x = torch.rand(100, 1, 2, 2)
    register_dataset("skewed", lambda: (x, y, x, y, 3))
    a = load_dataset("skewed", subset_train=20, subset_test=10, seed=0)
    assert torch.equal(a.x_train, load_dataset("skewed", subset_train=20, subset_test=10, seed=0).x_train)
    assert not torch.equal(a.x_train, load_dataset("skewed", subset_train=20, seed=1).x_train)
    assert torch.bincount(a.y_train).tolist() == [12, 6, 2] and torch.bincount(a.y_test).tolist() == [6, 3, 1]
    assert len(load_dataset("skewed", subset_train=1000).x_train) == 100  # larger than the set: keep all
    assert a.mean == load_dataset("skewed").mean  # statistics of the full training set


# ------------------------------------------------------------------------------ batching, augmentation


def test_to_float() -> None:
    u = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.equal(to_float(u), torch.tensor([0.0, 0.2, 1.0])) and to_float(u).dtype == torch.float32
    f = torch.rand(3, dtype=torch.float64)
    assert to_float(f).dtype == torch.float32 and torch.allclose(to_float(f), f.float())


def test_iterate_batches_covers_the_data_once() -> None:
    x = torch.arange(10 * 3, dtype=torch.uint8).reshape(10, 3, 1, 1)
    y = torch.arange(10)
    batches = list(iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert xs.dtype == torch.float32 and torch.equal(xs, to_float(x[ys])) and sorted(ys.tolist()) == list(range(10))
    assert ys.tolist() != list(range(10))
    again = torch.cat([b[1] for b in iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(again, ys)
    plain = list(iterate_batches(x.float() / 255, y, 4, shuffle=False, drop_last=True, augment=lambda b: 1 - b))
    assert [b[1].tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert torch.allclose(plain[0][0], 1 - to_float(x[:4]))
    xf = torch.rand(4, 1, 2, 2)
    next(iterate_batches(xf, y[:4], 4, shuffle=False))[0].zero_()  # batches are copies
    assert xf.sum() > 0


def test_random_crop_flip_is_a_per_example_padded_crop_or_mirror() -> None:
    x = torch.rand(64, 2, 6, 5)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=2, generator=gen)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = offsets = 0
    for n in range(len(x)):
        crops = {(i, j, f): padded[n, :, i : i + 6, j : j + 5] for i in range(5) for j in range(5) for f in (False, True)}
        matches = [k for k, v in crops.items() if torch.equal(out[n], v.flip(-1) if k[2] else v)]
        assert matches, f"example {n} is not a crop/flip of its padded input"
        flips += matches[0][2]
        offsets += matches[0][:2] != (2, 2)
    assert 10 < flips < 54 and offsets > 40
    assert torch.equal(out, random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0)))
    same = random_crop_flip(x, padding=0)
    assert all(torch.equal(same[n], x[n]) or torch.equal(same[n], x[n].flip(-1)) for n in range(len(x)))


def test_feature_vectors_and_the_loaders_own_normalisation():
    """N x D features are kept as N x 1 x 1 x D (the mlp takes them as they are); a loader's mean/std is kept, and
    (None, None) means no normalisation, never silently replaced by statistics of the data."""
    from hyporay.data import load_dataset, register_dataset
    from hyporay.models import build_model

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 7, generator=g), torch.randint(0, 2, (60,), generator=g)
    register_dataset("t_features", lambda: (x[:40], y[:40], x[40:], y[40:], 2))
    register_dataset("t_own_stats", lambda: (x[:40], y[:40], x[40:], y[40:], 2, [0.25], [2.0]))
    register_dataset("t_no_stats", lambda: (x[:40], y[:40], x[40:], y[40:], 2, None, None))
    ds = load_dataset("t_features")
    assert ds.in_shape == (1, 1, 7) and torch.equal(ds.x_test.flatten(1), x[40:])
    assert ds.mean[0] == pytest.approx(float(x[:40].mean()), abs=1e-6)
    assert load_dataset("t_own_stats").mean == (0.25,) and load_dataset("t_own_stats").std == (2.0,)
    none = load_dataset("t_no_stats")
    assert none.mean == (0.0,) and none.std == (1.0,)
    m = build_model("mlp", in_shape=none.in_shape, num_classes=2, mean=none.mean, std=none.std)
    assert m(none.x_test).shape == (20, 2)
