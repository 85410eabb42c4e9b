"""VGG-16 and VGG-19 with BatchNorm (`vgg16`, `vgg19`), with a head for small inputs.

Layout: `features, pool, fc`, children applied in order. `features` is a flat `nn.Sequential`
of Conv2d(3x3, bias) - BatchNorm2d - ReLU triples with a MaxPool2d(2) after each stage, exactly
as torchvision's `vgg16_bn`/`vgg19_bn` (configurations D and E of Simonyan & Zisserman 2015), so a
block-wise method can cut it into conv-BN-ReLU(-maxpool) units.

Head [deliberately not torchvision's]: torchvision pools to 7x7 and applies three linear layers
(4096-4096-classes, ~120M parameters) sized for 224x224 ImageNet inputs. For the small inputs of
this harness (32x32 -> 1x1 after the five max-pools) the head is the common CIFAR one: adaptive
average pool to 1x1, flatten, one linear layer 512 -> classes (as in kuangliu/pytorch-cifar).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from bench.models import MODELS, GlobalAvgPool, check_width, scale_channels

# Channel counts per conv; "M" is a 2x2 max-pool (stride 2).
# fmt: off
CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# fmt: on


def make_features(
    cfg: list[int | str], in_channels: int, width: float
) -> tuple[nn.Sequential, int]:
    """Flat Sequential of conv-BN-ReLU (and max-pool) modules; returns it and its out channels."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            c = scale_channels(int(v), width)
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers), c_in


class VGG(nn.Sequential):
    """`features, pool, fc`; the forward applies them in order."""

    def __init__(
        self, cfg: list[int | str], num_classes: int, in_channels: int, width: float
    ) -> None:
        features, c_out = make_features(cfg, in_channels, width)
        head = [("pool", GlobalAvgPool()), ("fc", nn.Linear(c_out, num_classes))]
        super().__init__(OrderedDict([("features", features), *head]))


@MODELS.register("vgg16")
def vgg16(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """VGG-16 with BatchNorm (13 conv-BN-ReLU, 5 max-pools), avg-pool + linear head."""
    return VGG(CFGS["vgg16"], num_classes, in_channels, check_width(width))


@MODELS.register("vgg19")
def vgg19(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """VGG-19 with BatchNorm (16 conv-BN-ReLU, 5 max-pools), avg-pool + linear head."""
    return VGG(CFGS["vgg19"], num_classes, in_channels, check_width(width))
