"""Small helpers the tests share: tiny models and a plain SGD fit on in-memory tensors."""
from __future__ import annotations

import os

import torch
from torch import nn


def sweep_env() -> dict:
    """Environment for sweep subprocesses: local Ray on 127.0.0.1 and the local SQLite store, whatever the
    developer's shell exports (a cluster address, a tracking server, remote storage)."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    for var in ("MLFLOW_TRACKING_URI", "HYPORAY_STORAGE_PATH", "RAY_ADDRESS"):
        env.pop(var, None)
    return env


def tiny_model(name: str, ds, seed: int) -> nn.Module:
    """A registry model sized for ``ds``, initialised from ``seed``."""
    from hyporay.models import build_model

    torch.manual_seed(seed)
    return build_model(name, in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 0.05, seed: int = 0):
    """Plain natural training (SGD, momentum 0.9, batch 64); returns the model in eval mode, no .grad left."""
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
    return model.eval()
