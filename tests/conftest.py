"""Shared fixtures: the offline digits data set and tiny models trained on it in the test session."""
from __future__ import annotations

import os

import pytest
import torch

from helpers import fit, tiny_model

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray binds 127.0.0.1 only
torch.set_num_threads(1)  # steadier than 2 on a shared 2-core machine


@pytest.fixture(scope="session")
def digits():
    from hyporay.data import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def natural_mlp(digits):
    """An MLP trained naturally on digits (clean accuracy ~0.97)."""
    return fit(tiny_model("mlp", digits, seed=0), digits.x_train, digits.y_train, epochs=30, lr=0.05)


@pytest.fixture(scope="session")
def bn_cnn(digits):
    """A small CNN with BatchNorm, trained briefly (train/eval mode matters for it)."""
    return fit(tiny_model("cnn", digits, seed=1), digits.x_train, digits.y_train, epochs=3, lr=0.05)


@pytest.fixture(scope="session")
def naive_mlp(digits):
    """The paper's Naive substandard model: randomly initialised, never trained."""
    return tiny_model("mlp", digits, seed=2).eval()
