"""ResNet-18 with the ImageNet stem (`resnet18`) and the CIFAR stem (`resnet18_cifar`).

Layout (both): `stem, layer1, layer2, layer3, layer4, pool, fc`, children applied in order.
Each `layerN` is an `nn.Sequential` of two `BasicBlock`s, so the stem and each basic block can
serve as a unit of a block-wise method. `resnet18_cifar` is the torchvision-style CIFAR variant
(kuangliu/pytorch-cifar): 3x3 stride-1 stem, no max-pool; 11,173,962 parameters at width 1 with
10 classes and 3 input channels.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from bench.models import MODELS, GlobalAvgPool, check_width, scale_channels

STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN, identity (or 1x1 conv-BN projection) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Sequential):
    """`stem, layer1..layer4, pool, fc`; the forward applies them in order."""

    def __init__(self, stem: nn.Module, stem_channels: int, num_classes: int, width: float) -> None:
        channels = [scale_channels(c, width) for c in STAGE_CHANNELS]
        layers: list[tuple[str, nn.Module]] = [("stem", stem)]
        in_channels = stem_channels
        for i, (c, stride, n) in enumerate(zip(channels, STAGE_STRIDES, BLOCKS_PER_STAGE), 1):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(in_channels, c, stride if b == 0 else 1))
                in_channels = c
            layers.append((f"layer{i}", nn.Sequential(*blocks)))
        layers += [("pool", GlobalAvgPool()), ("fc", nn.Linear(in_channels, num_classes))]
        super().__init__(OrderedDict(layers))


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """ResNet-18, ImageNet stem: 7x7/2 conv + BN + ReLU + 3x3/2 max-pool (total stride 32)."""
    width = check_width(width)
    c = scale_channels(STAGE_CHANNELS[0], width)
    stem = nn.Sequential(
        nn.Conv2d(in_channels, c, 7, 2, 3, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )
    return ResNet(stem, c, num_classes, width)


@MODELS.register("resnet18_cifar")
def resnet18_cifar(num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """ResNet-18, CIFAR stem: 3x3/1 conv + BN + ReLU, no max-pool (total stride 8)."""
    width = check_width(width)
    c = scale_channels(STAGE_CHANNELS[0], width)
    stem = nn.Sequential(
        nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
    )
    return ResNet(stem, c, num_classes, width)
