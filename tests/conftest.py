"""Shared fixtures: the offline digits data set and tiny models trained on it in the test session."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray binds 127.0.0.1 only
torch.set_num_threads(1)  # steadier than 2 on a shared 2-core machine


@pytest.fixture(scope="session")
def digits():
    from hyporay.data import load_dataset

    return load_dataset("digits", seed=0)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return model


@pytest.fixture(scope="session")
def natural_mlp(digits):
    """An MLP trained naturally on digits (clean accuracy ~0.97)."""
    from hyporay.models import build_model

    torch.manual_seed(0)
    m = build_model("mlp", in_shape=digits.in_shape, num_classes=digits.num_classes, mean=digits.mean,
                    std=digits.std)
    return _train(m, digits.x_train, digits.y_train, epochs=30, lr=0.05)


@pytest.fixture(scope="session")
def bn_cnn(digits):
    """A small CNN with BatchNorm, trained briefly (train/eval mode matters for it)."""
    from hyporay.models import build_model

    torch.manual_seed(1)
    m = build_model("cnn", in_shape=digits.in_shape, num_classes=digits.num_classes, mean=digits.mean,
                    std=digits.std)
    return _train(m, digits.x_train, digits.y_train, epochs=3, lr=0.05)


@pytest.fixture(scope="session")
def naive_mlp(digits):
    """The paper's Naive substandard model: randomly initialised, never trained."""
    from hyporay.models import build_model

    torch.manual_seed(2)
    return build_model("mlp", in_shape=digits.in_shape, num_classes=digits.num_classes, mean=digits.mean,
                       std=digits.std).eval()
