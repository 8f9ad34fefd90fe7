"""Small models for CPU work: ``mlp`` and ``cnn``. Inputs are normalised N x C x H x W; outputs N x K logits."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .registry import register_model


@register_model("mlp")
def mlp(*, in_shape: tuple[int, int, int], num_classes: int, hidden: Sequence[int] = (256, 256)) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per entry of ``hidden`` -> Linear to K logits.

    The authors' CIFAR MLP is ``hidden=(3072, 3072, 3072)`` (their code omits the ReLU after the middle
    layers; here every hidden layer has one).
    """
    c, h, w = in_shape
    widths = [c * h * w, *(int(n) for n in hidden)]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


@register_model("cnn")
def cnn(
    *, in_shape: tuple[int, int, int], num_classes: int, bn: bool = True, channels: Sequence[int] = (32, 64), pool_size: int = 4
) -> nn.Sequential:
    """[Conv3x3 -> (BatchNorm) -> ReLU] per entry of ``channels`` -> MaxPool 2 -> AdaptiveAvgPool to
    ``pool_size`` x ``pool_size`` -> Linear. Trains in seconds on 8x8 digits; works for any H, W >= 2."""
    layers: list[nn.Module] = []
    cin = in_shape[0]
    for cout in channels:
        layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
        cin = cout
    layers += [nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(pool_size), nn.Flatten(), nn.Linear(cin * pool_size**2, num_classes)]
    return nn.Sequential(*layers)
