"""VGG-16 with BatchNorm, CIFAR style (as in the False-Friends / kuangliu code)."""

from __future__ import annotations

from torch import nn

from .registry import register_model

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@register_model("vgg16")
def vgg16(*, in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """13 x [Conv3x3 -> BatchNorm -> ReLU] with 5 max-pools, global average pool, Linear(512, K).

    A max-pool is skipped once the feature map is already 1 pixel high or wide, so 8x8 inputs work;
    for 32x32 inputs the network is exactly the CIFAR VGG-16 (1x1 map before the classifier).
    """
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for v in VGG16_CFG:
        if v == "M":
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    net = nn.Sequential(*layers)
    for m in net.modules():  # torchvision's VGG init, as in the authors' code
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return net
