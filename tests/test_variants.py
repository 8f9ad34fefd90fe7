"""The substandard training sets (hyporay.variants) on digits: contents, balls, universality, cache."""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch

import hyporay.variants as V
from hyporay.data import to_float
from hyporay.variants import (POISON_METHODS, VARIANTS, VariantSpec, build_training_set, cache_path,
                              quantize_in_ball, train_source_model)

EPS = {"linf": 0.3, "l2": 2.0}  # large enough on 8x8 digits for the source model to be fooled
TOL = 1e-5                      # float32 slack on ||x' - x|| <= eps
FAST = dict(steps=20, source_epochs=5)
K = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ds_u8(digits):
    return dataclasses.replace(digits, name="digits_u8", x_train=(digits.x_train * 255).round().to(torch.uint8),
                               x_test=(digits.x_test * 255).round().to(torch.uint8))


def _norms(d: torch.Tensor, norm: str) -> torch.Tensor:
    d = d.flatten(1).double()
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def _spec(method: str, norm: str, **kw) -> VariantSpec:
    return VariantSpec("poisoning", method=method, norm=norm, eps=kw.pop("eps", EPS[norm]), **{**FAST, **kw})


_SETS: dict = {}


def _poisoned(ds, method, norm):
    key = (ds.name, method, norm)
    if key not in _SETS:
        _SETS[key] = build_training_set(ds, _spec(method, norm), seed=0)
    return _SETS[key]


@pytest.fixture(scope="module")
def sources(digits):
    return {norm: train_source_model(digits, _spec("p1", norm), seed=0) for norm in EPS}


# ---------------------------------------------------------------------------------------------- basic


@pytest.mark.parametrize("name", ["quality", "naive"])
def test_clean_variants_are_the_training_set(digits, name):
    x, y = build_training_set(digits, VariantSpec(name), seed=3)
    assert x is digits.x_train and y is digits.y_train


@pytest.mark.parametrize("u8", [False, True])
def test_noise_is_noise_with_true_labels(digits, ds_u8, u8):
    ds = ds_u8 if u8 else digits
    x, y = build_training_set(ds, VariantSpec("noise"), seed=0)
    assert x.shape == ds.x_train.shape and x.dtype == ds.x_train.dtype and y.dtype == torch.int64
    assert torch.equal(y, ds.y_train)
    xf = to_float(x)
    assert float(xf.min()) >= 0 and float(xf.max()) <= 1
    assert abs(float(xf.mean()) - 0.5) < 0.01 and abs(float(xf.std()) - (1 / 12) ** 0.5) < 0.01
    assert float((xf - to_float(ds.x_train)).abs().mean()) > 0.25  # not the clean images
    assert len(torch.unique(x)) > (200 if u8 else 10_000)


def test_mislabeling_keeps_images_changes_labels(digits):
    x, y = build_training_set(digits, VariantSpec("mislabeling"), seed=0)
    assert torch.equal(x, digits.x_train) and x.dtype == digits.x_train.dtype
    assert y.shape == digits.y_train.shape and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < K
    changed = float((y != digits.y_train).float().mean())
    assert 0.85 < changed < 0.95
    counts = torch.bincount(y, minlength=K).float() / len(y)
    assert float(counts.min()) > 0.06 and float(counts.max()) < 0.14  # about uniform


@pytest.mark.parametrize("spec", [VariantSpec("noise"), VariantSpec("mislabeling"), _spec("p5", "linf"),
                                  _spec("p1", "linf")], ids=["noise", "mislabeling", "p5", "p1"])
def test_deterministic_per_seed_and_different_across_seeds(digits, spec):
    a = _poisoned(digits, "p1", "linf") if spec == _spec("p1", "linf") else build_training_set(digits, spec, seed=0)
    b = build_training_set(digits, spec, seed=0)
    c = build_training_set(digits, spec, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


# ------------------------------------------------------------------------------------------ poisoning


@pytest.mark.parametrize("norm", sorted(EPS))
@pytest.mark.parametrize("method", POISON_METHODS)
def test_poisoned_inside_ball_labels_kept(digits, method, norm):
    x, y = _poisoned(digits, method, norm)
    assert x.shape == digits.x_train.shape and x.dtype == torch.float32
    assert torch.equal(y, digits.y_train)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    n = _norms(x - digits.x_train, norm)
    assert float(n.max()) <= EPS[norm] + TOL
    assert float((n > 0.1 * EPS[norm]).float().mean()) > 0.95  # images really changed


@pytest.mark.parametrize("norm", sorted(EPS))
def test_p1_fools_source_toward_next_class_p2_keeps_true(digits, sources, norm):
    model = sources[norm]
    with torch.no_grad():
        p1 = model(_poisoned(digits, "p1", norm)[0]).argmax(1)
        p2 = model(_poisoned(digits, "p2", norm)[0]).argmax(1)
        p3 = model(_poisoned(digits, "p3", norm)[0]).argmax(1)
        clean = model(digits.x_train).argmax(1)
    y = digits.y_train
    assert float((clean == y).float().mean()) > 0.9
    assert float((p1 == (y + 1) % K).float().mean()) > 0.8
    assert float((p2 == y).float().mean()) > 0.99
    assert float((p3 == (y + 1) % K).float().mean()) > 0.5  # one δ per class is weaker than P1


def _class_deltas(x_p, x, y):
    """Per class: (δ estimated on unclamped pixels, pixel mask, max spread of x'-x within the class)."""
    d = x_p - x
    free = (x_p > 0) & (x_p < 1)  # pixels where clamp(x + δ) did not cut
    out = []
    for c in range(K):
        dc, fc = d[y == c], free[y == c]
        hi = torch.where(fc, dc, torch.full_like(dc, -9)).amax(0)
        lo = torch.where(fc, dc, torch.full_like(dc, 9)).amin(0)
        mask = fc.any(0)
        out.append((hi, mask, float((hi - lo)[mask].max())))
    return out


@pytest.mark.parametrize("norm", sorted(EPS))
@pytest.mark.parametrize("method", ["p3", "p4", "p5"])
def test_universal_methods_one_delta_per_class(digits, method, norm):
    x_p, y = _poisoned(digits, method, norm)
    deltas = _class_deltas(x_p, digits.x_train, y)
    for _, mask, spread in deltas:
        assert int(mask.sum()) > 20 and spread < TOL  # the same δ_c for every image of class c
    for a in range(K):
        for b in range(a + 1, K):
            both = deltas[a][1] & deltas[b][1]
            assert float((deltas[a][0] - deltas[b][0])[both].abs().max()) > 0.05 * EPS[norm]


def test_p1_is_not_universal(digits):
    x_p, y = _poisoned(digits, "p1", "linf")
    assert max(s for *_, s in _class_deltas(x_p, digits.x_train, y)) > 0.1


def test_default_spec_is_the_papers_poisoning_set(digits):
    spec = VariantSpec("poisoning")
    assert (spec.method, spec.norm, spec.eps, spec.steps, spec.alpha) == ("p1", "linf", 8 / 255, 100, 8 / 255 / 5)
    assert VariantSpec().name == "quality"
    x, y = build_training_set(digits, spec, seed=0)
    assert torch.equal(y, digits.y_train) and x.dtype == torch.float32
    n = _norms(x - digits.x_train, "linf")
    assert float(n.max()) <= 8 / 255 + TOL and float(n.mean()) > 4 / 255
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert "p1 linf" in spec.describe() and "8/255" in spec.describe()


# ---------------------------------------------------------------------------------------------- uint8


@pytest.mark.parametrize("method,norm,eps", [("p1", "linf", 8 / 255), ("p1", "linf", 0.05), ("p3", "linf", 0.05),
                                             ("p1", "l2", 0.5), ("p5", "l2", 0.37), ("p5", "linf", 0.05)])
def test_uint8_poisoned_set_stays_uint8_and_in_ball(ds_u8, method, norm, eps):
    x, y = build_training_set(ds_u8, _spec(method, norm, eps=eps), seed=0)
    assert x.dtype == torch.uint8 and x.shape == ds_u8.x_train.shape
    assert torch.equal(y, ds_u8.y_train)
    d = x.to(torch.int64) - ds_u8.x_train.to(torch.int64)  # integer levels
    n = _norms(d.double() / 255, norm)
    assert float(n.max()) <= eps + 1e-9
    if norm == "linf":
        assert int(d.abs().max()) == int(eps * 255 + 1e-6)  # the full integer budget is used
    assert float((n > 0).float().mean()) > 0.9


def test_quantize_in_ball_rounds_and_rechecks_the_ball():
    k = torch.full((2, 1, 8, 8), 100, dtype=torch.uint8)
    # l_inf, eps off the grid: 0.05 * 255 = 12.75 levels; rounding alone would give 13
    eps = 0.05
    q = quantize_in_ball(to_float(k) + eps, k, eps, "linf")
    assert int((q.int() - 100).max()) == 12
    q = quantize_in_ball(to_float(k) + 0.4 / 255, k, eps, "linf")  # rounds down to the clean level
    assert torch.equal(q, k)
    # l_2: 64 pixels at 2.6 levels each (norm 20.8 levels = eps * 255); rounding to 3 leaves the ball
    eps = 20.8 / 255
    x_adv = to_float(k) + 2.6 / 255
    assert float(_norms((x_adv * 255).round() / 255 - to_float(k), "l2").max()) > eps
    q = quantize_in_ball(x_adv, k, eps, "l2")
    assert q.dtype == torch.uint8
    assert float(_norms(q.double() / 255 - k.double() / 255, "l2").max()) <= eps + 1e-12
    # a small l_2 offset inside the ball is simply rounded
    q = quantize_in_ball(to_float(k) + 0.6 / 255, k, eps, "l2")
    assert torch.equal(q.int(), k.int() + 1)


# ---------------------------------------------------------------------------------------------- cache


@pytest.fixture()
def count_trainers(monkeypatch):
    calls = []
    import hyporay.variants.delusive as delusive

    real = delusive.Trainer

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(delusive, "Trainer", counting)
    return calls


def test_cache_second_call_loads_from_disk(digits, tmp_path, count_trainers):
    spec = _spec("p1", "linf")
    path = cache_path(digits, spec, 0, tmp_path)
    assert not path.exists()
    a = build_training_set(digits, spec, seed=0, cache_dir=tmp_path)
    assert path.is_file() and len(count_trainers) == 1
    mtime = path.stat().st_mtime_ns
    b = build_training_set(digits, spec, seed=0, cache_dir=tmp_path)
    assert len(count_trainers) == 1 and path.stat().st_mtime_ns == mtime
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], _poisoned(digits, "p1", "linf")[0])  # cached == computed in memory
    assert not list(tmp_path.glob("*.tmp"))
    # mislabeling stores labels only and gives back the clean images
    m = build_training_set(digits, VariantSpec("mislabeling"), seed=0, cache_dir=tmp_path)
    m2 = build_training_set(digits, VariantSpec("mislabeling"), seed=0, cache_dir=tmp_path)
    assert m2[0] is digits.x_train and torch.equal(m[1], m2[1])


def test_cache_key_covers_what_determines_the_set(digits, ds_u8, tmp_path):
    base = _spec("p1", "linf")
    p = cache_path(digits, base, 0, tmp_path)
    others = [cache_path(digits, dataclasses.replace(base, eps=0.2), 0, tmp_path),
              cache_path(digits, base, 1, tmp_path),
              cache_path(digits, dataclasses.replace(base, method="p2"), 0, tmp_path),
              cache_path(digits, dataclasses.replace(base, norm="l2"), 0, tmp_path),
              cache_path(digits, dataclasses.replace(base, steps=21), 0, tmp_path),
              cache_path(digits, dataclasses.replace(base, source_model_kwargs={"hidden": [64]}), 0, tmp_path),
              cache_path(digits, dataclasses.replace(base, source_epochs=6), 0, tmp_path),
              cache_path(ds_u8, base, 0, tmp_path),
              cache_path(dataclasses.replace(digits, y_train=digits.y_train.roll(1)), base, 0, tmp_path)]
    assert len({p, *others}) == len(others) + 1
    assert all(q.parent == tmp_path and q.suffix == ".pt" for q in others)
    # step_size None is eps/5; fields that do not influence a set stay out of its key
    assert cache_path(digits, dataclasses.replace(base, step_size=base.eps / 5), 0, tmp_path) == p
    noise = VariantSpec("noise")
    assert cache_path(digits, dataclasses.replace(noise, eps=0.2, method="p3"), 0, tmp_path) == cache_path(digits, noise, 0, tmp_path)
    p5 = _spec("p5", "linf")
    assert cache_path(digits, dataclasses.replace(p5, source_epochs=1, steps=3), 0, tmp_path) == cache_path(digits, p5, 0, tmp_path)
    with pytest.raises(ValueError, match=r"^variant\.name:"):
        cache_path(digits, VariantSpec("quality"), 0, tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong_content"])
def test_corrupted_cache_file_is_recomputed(digits, tmp_path, count_trainers, damage):
    spec = _spec("p2", "l2", steps=5, source_epochs=2)
    a = build_training_set(digits, spec, seed=0, cache_dir=tmp_path)
    path = cache_path(digits, spec, 0, tmp_path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a readable file holding something else (e.g. another set copied over it)
        torch.save({"format": V.FORMAT_VERSION, "key": "0" * 64, "x": torch.zeros(3)}, path)
    b = build_training_set(digits, spec, seed=0, cache_dir=tmp_path)
    assert len(count_trainers) == 2
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert path.read_bytes() == raw or torch.equal(torch.load(path, weights_only=True)["x"], a[0])
    build_training_set(digits, spec, seed=0, cache_dir=tmp_path)
    assert len(count_trainers) == 2  # repaired on disk


CONCURRENT_SPEC = VariantSpec("poisoning", method="p3", eps=0.3, steps=10, source_epochs=3)


def _concurrent_worker(ds, cache_dir: str, marker_dir: str, out: str, barrier) -> None:
    torch.set_num_threads(1)
    import hyporay.variants as variants
    import hyporay.variants.build as build

    real = build._generate

    def marked(*args, **kwargs):
        Path(marker_dir, f"computed-{os.getpid()}").write_text("1")
        time.sleep(1.0)  # widen the window in which the others arrive
        return real(*args, **kwargs)

    build._generate = marked
    barrier.wait(timeout=120)
    x, y = variants.build_training_set(ds, CONCURRENT_SPEC, seed=0, cache_dir=cache_dir)
    torch.save({"x": x, "y": y}, out)


def test_concurrent_processes_compute_once(digits, tmp_path):
    ctx = mp.get_context("spawn")
    cache, markers = tmp_path / "cache", tmp_path / "markers"
    markers.mkdir()
    barrier = ctx.Barrier(3)
    outs = [tmp_path / f"out{i}.pt" for i in range(3)]
    procs = [ctx.Process(target=_concurrent_worker, args=(digits, str(cache), str(markers), str(o), barrier)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert len(list(markers.iterdir())) == 1  # the expensive part ran once
    results = [torch.load(o, weights_only=True) for o in outs]
    for r in results[1:]:
        assert torch.equal(r["x"], results[0]["x"]) and torch.equal(r["y"], results[0]["y"])
    assert cache_path(digits, CONCURRENT_SPEC, 0, cache).is_file()
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("field,value", [
    ("name", "clean"), ("method", "p6"), ("norm", "l1"), ("eps", -0.1), ("eps", float("nan")), ("eps", "8/255"),
    ("steps", 0), ("steps", 2.5), ("step_size", 0.0), ("step_size", -1.0), ("source_model", "resnet9000"),
    ("source_model_kwargs", {"hidden": object()}), ("source_model_kwargs", [1]), ("source_epochs", -1),
    ("source_lr", 0), ("source_batch_size", 0), ("source_batch_size", True),
])
def test_bad_spec_one_line_error_naming_the_field(field, value):
    with pytest.raises(ValueError) as err:
        VariantSpec(**{field: value})
    msg = str(err.value)
    assert msg.startswith(f"variant.{field}:") and "\n" not in msg


def test_names():
    assert VARIANTS == ("quality", "naive", "noise", "mislabeling", "poisoning")
    assert POISON_METHODS == ("p1", "p2", "p3", "p4", "p5")
    assert "variant.name: unknown 'x'; known: quality, naive" in _err(name="x")


def _err(**kw) -> str:
    try:
        VariantSpec(**kw)
    except ValueError as e:
        return str(e)
    return ""
