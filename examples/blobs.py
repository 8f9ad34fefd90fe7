"""Your own data set and model in a sweep: a module that registers them, named in the trial's ``imports``.

    python sweeps/thrm_lambda.py --profile local --set 'imports=[examples/blobs.py]' --set data.name=blobs \
        --set model.name=wide_mlp --lambdas 0,10 --seeds 2

Every Ray worker imports this file before it reads the trial's config, so ``blobs`` and ``wide_mlp`` are known
wherever the trial runs (on a cluster the file must be at the same path on every node: inside the project, which
``ray up`` copies to each node). Inputs are feature vectors (N x D) in [0, 1]: hyporay keeps them as
N x 1 x 1 x D and the MLP takes them as they are; eps is in the same [0, 1] units.
"""
from __future__ import annotations

import torch

from hyporay.data import register_dataset
from hyporay.models import register_model
from hyporay.models.small import mlp


@register_dataset("blobs")
def blobs(seed: int = 0, test_fraction: float = 0.3):
    """Four Gaussian blobs in [0, 1]^16, 1200 points; the split follows ``seed`` (``data.split_seed``)."""
    g = torch.Generator().manual_seed(1234)               # the blobs themselves are fixed
    centres = torch.rand(4, 16, generator=g) * 0.6 + 0.2
    y = torch.arange(1200) % 4
    x = (centres[y] + 0.08 * torch.randn(1200, 16, generator=g)).clamp(0, 1)
    order = torch.randperm(1200, generator=torch.Generator().manual_seed(seed))
    n_test = int(1200 * test_fraction)
    test, train = order[:n_test], order[n_test:]
    # (x_train, y_train, x_test, y_test, num_classes, mean, std): None, None = no normalisation inside the model
    return x[train], y[train], x[test], y[test], 4, None, None


@register_model("wide_mlp")
def wide_mlp(*, in_shape, num_classes, width: int = 512):
    """One hidden layer of ``width`` units."""
    return mlp(in_shape=in_shape, num_classes=num_classes, hidden=(width,))
