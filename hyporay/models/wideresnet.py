"""WideResNet-depth-k with pre-activation blocks, as in the TRADES / False-Friends code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class WideBlock(nn.Module):
    """Pre-activation block: conv(relu(bn(conv(relu(bn(x)))))) + shortcut, where the 1x1 shortcut
    conv (used when shape changes) sees the activated input, as in the reference code."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = F.relu(self.bn2(self.conv1(o)), inplace=True)
        if self.dropout > 0:
            o = F.dropout(o, p=self.dropout, training=self.training)
        return self.conv2(o) + skip


class WideResNet(nn.Module):
    """Stem conv (16 ch) -> 3 groups of (depth-4)/6 blocks of width 16k, 32k, 64k (strides 1, 2, 2)
    -> BN -> ReLU -> global average pool -> Linear."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"model wrn: depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for g, stride in enumerate((1, 2, 2)):
            for j in range(n):
                blocks.append(WideBlock(cin, widths[g + 1], stride if j == 0 else 1, dropout))
                cin = widths[g + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # the authors' init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))), inplace=True)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wrn28_10")
def wrn28_10(
    *, in_shape: tuple[int, int, int], num_classes: int, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0
) -> WideResNet:
    return WideResNet(in_shape[0], num_classes, depth, widen_factor, dropout)
