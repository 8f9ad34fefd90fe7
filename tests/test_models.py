"""Model registry and architectures: shapes, in-model normalisation, gradients, eval-mode behaviour."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from hyporay.models import MODELS, Normalize, build_model, list_models, register_model

SHAPES = [(1, 8, 8), (3, 32, 32)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, OpenMP threads spinning at
    barriers make small models up to 10x slower (measured); one thread is as fast when idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
BUILTIN = ["cnn", "mlp", "resnet18", "vgg16", "wrn28_10"]


@functools.lru_cache(maxsize=None)
def _model(name: str, in_shape: tuple[int, int, int]) -> nn.Module:
    """One eval-mode instance per (name, shape): WRN-28-10 takes about a second to build."""
    torch.manual_seed(0)
    c = in_shape[0]
    return build_model(name, in_shape=in_shape, num_classes=10, mean=[0.4] * c, std=[0.2] * c).eval()


def _inputs(in_shape: tuple[int, int, int], n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, *in_shape), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_the_builtin_models() -> None:
    assert list_models() == sorted(MODELS) and set(BUILTIN) <= set(list_models())


@pytest.mark.parametrize("in_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", BUILTIN)
def test_forward_gives_logits(name: str, in_shape: tuple[int, int, int]) -> None:
    model = _model(name, in_shape)
    assert isinstance(model.normalize, Normalize)
    x = _inputs(in_shape)
    with torch.no_grad():
        logits = model(x)
        channels_last = model(x.contiguous(memory_format=torch.channels_last))  # no .view on strided tensors
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(channels_last, logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", BUILTIN)
def test_gradients_flow_to_the_input(name: str) -> None:
    model = _model(name, (1, 8, 8))
    x = _inputs((1, 8, 8)).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())  # autograd.grad leaves .grad alone


@pytest.mark.parametrize("name", BUILTIN)
def test_eval_output_of_an_example_does_not_depend_on_the_batch(name: str) -> None:
    model = _model(name, (1, 8, 8))
    x = _inputs((1, 8, 8), n=5)
    with torch.no_grad():
        alone, in_batch, other_batch = model(x[:1]), model(x)[:1], model(torch.cat([x[:1], 1 - x[1:]]))[:1]
    torch.testing.assert_close(in_batch, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(other_batch, alone, rtol=1e-4, atol=1e-4)


def test_batchnorm_makes_train_mode_batch_dependent() -> None:
    """Why attacks must switch to eval mode: in train mode BatchNorm mixes the batch."""
    torch.manual_seed(0)
    model = build_model("cnn", in_shape=(1, 8, 8), num_classes=10, mean=[0.3], std=[0.4]).train()
    x = _inputs((1, 8, 8), n=4)
    with torch.no_grad():
        assert not torch.allclose(model(x)[:1], model(torch.cat([x[:1], 1 - x[1:]]))[:1])
    no_bn = build_model("cnn", in_shape=(1, 8, 8), num_classes=10, mean=[0.3], std=[0.4], bn=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())


def test_normalize_layer_normalises_per_channel() -> None:
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.5)
    model = build_model("mlp", in_shape=(3, 4, 4), num_classes=3, mean=mean, std=std).eval()
    x = _inputs((3, 4, 4), n=6)
    manual = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], dim=1)
    torch.testing.assert_close(model.normalize(x), manual)
    torch.testing.assert_close(model(x), model.net(manual))
    assert {n for n, _ in model.named_buffers()} >= {"normalize.mean", "normalize.std"}
    one_channel = Normalize([0.5], [0.25])
    torch.testing.assert_close(one_channel(torch.ones(2, 1, 3, 3)), torch.full((2, 1, 3, 3), 2.0))


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        build_model("xyz", in_shape=(1, 8, 8), num_classes=10, mean=[0.0], std=[1.0])
    assert str(err.value) == f"model: unknown 'xyz'; known: {', '.join(list_models())}"
    assert "cnn, linf_dist, mlp, resnet18, vgg16, wrn28_10" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(name="mlp", in_shape=(1, 8, 8), mean=[0.0], std=[1.0], widht=3), "widht"),
        (dict(name="cnn", in_shape=(3, 8, 8), mean=[0.0], std=[1.0]), "len(mean)"),
        (dict(name="cnn", in_shape=(1, 8, 8), mean=[0.0], std=[0.0]), "std > 0"),
        (dict(name="wrn28_10", in_shape=(1, 8, 8), mean=[0.0], std=[1.0], depth=27), "6n+4"),
    ],
)
def test_bad_model_arguments_fail_with_one_line(kwargs: dict, needle: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ValueError) as err:
        build_model(name, num_classes=10, **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_architecture_options() -> None:
    mlp = build_model("mlp", in_shape=(1, 8, 8), num_classes=4, mean=[0.0], std=[1.0], hidden=(7, 5, 3))
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [7, 5, 3, 4]
    pools = {s: sum(isinstance(m, nn.MaxPool2d) for m in _model("vgg16", s).modules()) for s in SHAPES}
    assert pools == {(1, 8, 8): 3, (3, 32, 32): 5}  # 8 -> 4 -> 2 -> 1, then the last two pools are skipped
    wrn = build_model("wrn28_10", in_shape=(3, 16, 16), num_classes=5, mean=[0.5] * 3, std=[0.5] * 3, depth=10, widen_factor=2)
    assert wrn.net.fc.in_features == 128 and len(wrn.net.blocks) == 3
    assert wrn(_inputs((3, 16, 16))).shape == (2, 5)
    resnet = _model("resnet18", (3, 32, 32)).net
    assert sum(isinstance(m, nn.MaxPool2d) for m in resnet.modules()) == 0 and resnet.stem[0].kernel_size == (3, 3)
    assert resnet(_inputs((3, 64, 64))).shape == (2, 10)


def test_register_model_decorator_adds_a_factory() -> None:
    @register_model("linear_probe_test")
    def linear(*, in_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))

    try:
        model = build_model("linear_probe_test", in_shape=(1, 2, 2), num_classes=3, mean=[0.0], std=[1.0])
        assert "linear_probe_test" in list_models() and model(torch.rand(4, 1, 2, 2)).shape == (4, 3)
    finally:
        del MODELS["linear_probe_test"]


def test_cnn_learns_digits_in_seconds() -> None:
    from hyporay.data import iterate_batches, load_dataset

    torch.manual_seed(0)
    ds = load_dataset("digits", seed=0)
    model = build_model("cnn", in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        for x, y in iterate_batches(ds.x_train, ds.y_train, 64, shuffle=True, generator=gen):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert acc > 0.9


def test_core_packages_do_not_import_orchestration_libraries() -> None:
    import ast
    from pathlib import Path

    import hyporay

    pkg = Path(hyporay.__file__).parent
    for path in [*pkg.glob("models/*.py"), *pkg.glob("data/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("ray", "mlflow", "optuna") for n in names), f"{path.name} imports {names}"
