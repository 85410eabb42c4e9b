"""MobileNetV2 (Sandler et al. 2018): ImageNet strides (`mobilenetv2`) and CIFAR strides
(`mobilenetv2_cifar`).

Layout: `features, pool, dropout, fc`, children applied in order. `features` is an
`nn.Sequential` of the stem ConvBNReLU6, the 17 inverted-residual blocks and the final 1x1
ConvBNReLU6, as torchvision's `mobilenet_v2`, with the same width rule: channels
`_make_divisible(c * width, 8)` (multiples of 8, at least 8, never more than 10% below c * width)
and last channel `_make_divisible(1280 * max(1, width), 8)`. Depthwise convs are `groups=C`.

`mobilenetv2_cifar` is the common CIFAR variant (kuangliu/pytorch-cifar): stem conv stride 1 and
the second stage (t=6, c=24) stride 1, total stride 8 (32x32 -> 4x4). Unlike kuangliu's file it
keeps torchvision's block (ReLU6, residual only when stride 1 and in == out channels, no 1x1
projection shortcut) so both variants share one block definition.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from bench.errors import ConfigError
from bench.models import MODELS, GlobalAvgPool, check_width

# (expand ratio t, output channels c, repeats n, stride s of the first block), torchvision's.
INVERTED_RESIDUAL_SETTING: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNEL = 1280
ROUND_TO = 8


def _make_divisible(v: float, divisor: int = ROUND_TO, min_value: int | None = None) -> int:
    """Round v to the nearest multiple of divisor, at least min_value, and not below 0.9 * v.

    The rule of the TensorFlow/torchvision reference implementations.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # rounding down must not drop more than 10%
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) - BatchNorm2d - ReLU6; `groups=in_channels` makes it depthwise."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (if t != 1) - 3x3 depthwise - 1x1 linear projection; residual if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Sequential):
    """`features, pool, dropout, fc`; the forward applies them in order."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        width: float,
        dropout: float,
        stem_stride: int,
        stage_strides: list[int],
        scale_last_channel: bool = False,
    ) -> None:
        c_in = _make_divisible(STEM_CHANNELS * width)
        # torchvision never shrinks the last 1x1 conv below 1280 channels; the MCUNet /
        # tiny-training MobileNetV2 used by TraDy does (w0.35: 448), which is what reproduces the
        # paper's full fine-tuning budget of 1,252,320 memory units exactly (tests/test_channels.py).
        scale = width if scale_last_channel else max(1.0, width)
        last_channel = _make_divisible(LAST_CHANNEL * scale)
        features: list[nn.Module] = [ConvBNReLU6(in_channels, c_in, stride=stem_stride)]
        for (t, c, n, _), s in zip(INVERTED_RESIDUAL_SETTING, stage_strides):
            c_out = _make_divisible(c * width)
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        features.append(ConvBNReLU6(c_in, last_channel, kernel_size=1))
        super().__init__(
            OrderedDict(
                [
                    ("features", nn.Sequential(*features)),
                    ("pool", GlobalAvgPool()),
                    ("dropout", nn.Dropout(dropout) if dropout > 0 else nn.Identity()),
                    ("fc", nn.Linear(last_channel, num_classes)),
                ]
            )
        )
        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def _check_dropout(dropout: float) -> float:
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"model option 'dropout' must be in [0, 1), got {dropout!r}")
    return float(dropout)


@MODELS.register("mobilenetv2")
def mobilenetv2(
    num_classes: int, in_channels: int = 3, width: float = 1.0, dropout: float = 0.2,
    scale_last_channel: bool = False,
) -> nn.Module:
    """MobileNetV2, ImageNet strides (total 32: 128x128 -> 4x4); dropout 0.2 as torchvision.

    `scale_last_channel`: scale the last 1x1 conv with `width` too (tiny-training's variant)."""
    strides = [s for (_, _, _, s) in INVERTED_RESIDUAL_SETTING]
    width, dropout = check_width(width), _check_dropout(dropout)
    return MobileNetV2(num_classes, in_channels, width, dropout, 2, strides,
                       bool(scale_last_channel))


@MODELS.register("mobilenetv2_cifar")
def mobilenetv2_cifar(
    num_classes: int, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0,
    scale_last_channel: bool = False,
) -> nn.Module:
    """MobileNetV2 with CIFAR strides: stem and second stage stride 1 (total 8; 32x32 -> 4x4).

    No dropout by default, as kuangliu/pytorch-cifar.
    """
    strides = [s for (_, _, _, s) in INVERTED_RESIDUAL_SETTING]
    strides[1] = 1
    width, dropout = check_width(width), _check_dropout(dropout)
    return MobileNetV2(num_classes, in_channels, width, dropout, 1, strides,
                       bool(scale_last_channel))
