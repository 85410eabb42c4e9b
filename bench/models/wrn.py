"""Pre-activation Wide-ResNet-28-4 (`wrn28_4`) with BatchNorm or RMSNorm.

Layout: `stem, layer1, layer2, layer3, final, pool, fc`, children applied in order. Depth 28 gives
(28 - 4) / 6 = 4 blocks per group; widen factor 4 gives widths 64/128/256 after a 16-channel stem
(Zagoruyko & Komodakis 2016; block layout as in xternalz/WideResNet-pytorch). Every ReLU inside
a residual block is its own `nn.ReLU` instance (`relu1`, `relu2`) so a method can insert a module
(e.g. top-k sparsification) after each of them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.models import MODELS, GlobalAvgPool, check_width, scale_channels

DEPTH = 28
WIDEN_FACTOR = 4
STEM_CHANNELS = 16
GROUP_CHANNELS = (16 * WIDEN_FACTOR, 32 * WIDEN_FACTOR, 64 * WIDEN_FACTOR)  # 64, 128, 256
GROUP_STRIDES = (1, 2, 2)
BLOCKS_PER_GROUP = (DEPTH - 4) // 6  # 4
NORMS = ("batch", "rms")


class RMSNorm2d(nn.Module):
    """RMS norm over channels at each spatial position: y = x / sqrt(mean_c x^2 + eps) * g_c.

    Input (B, C, H, W); learnable gain g of shape (C,), initialised to 1; no bias, no mean.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))  # g, (C,)

    def forward(self, x: Tensor) -> Tensor:
        rms_inv = torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)  # (B, 1, H, W)
        return x * rms_inv * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer: `batch` -> BatchNorm2d, `rms` -> RMSNorm2d."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "rms":
        return RMSNorm2d(channels)
    raise ConfigError(f"model option 'norm' must be one of {', '.join(NORMS)}, got {kind!r}")


class PreActBlock(nn.Module):
    """norm-ReLU-conv3x3-norm-ReLU-(dropout)-conv3x3 plus shortcut.

    When the shape changes, the 1x1 projection shortcut takes the pre-activated input (as in the
    reference implementations); otherwise the shortcut is the raw input.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: str, dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.equal_in_out = stride == 1 and in_channels == out_channels
        self.shortcut: nn.Module = (
            nn.Identity()
            if self.equal_in_out
            else nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.norm1(x))
        out = self.conv2(self.dropout(self.relu2(self.norm2(self.conv1(pre)))))
        return out + self.shortcut(x if self.equal_in_out else pre)


class WideResNet(nn.Sequential):
    """`stem, layer1..layer3, final (norm + ReLU), pool, fc`; forward applies them in order."""

    def __init__(
        self, num_classes: int, in_channels: int, width: float, norm: str, dropout: float
    ) -> None:
        stem_c = scale_channels(STEM_CHANNELS, width)
        layers: list[tuple[str, nn.Module]] = [
            ("stem", nn.Conv2d(in_channels, stem_c, 3, 1, 1, bias=False))
        ]
        c_in = stem_c
        for i, (c, stride) in enumerate(zip(GROUP_CHANNELS, GROUP_STRIDES), 1):
            c = scale_channels(c, width)
            blocks = []
            for b in range(BLOCKS_PER_GROUP):
                blocks.append(PreActBlock(c_in, c, stride if b == 0 else 1, norm, dropout))
                c_in = c
            layers.append((f"layer{i}", nn.Sequential(*blocks)))
        layers += [
            ("final", nn.Sequential(make_norm(norm, c_in), nn.ReLU(inplace=True))),
            ("pool", GlobalAvgPool()),
            ("fc", nn.Linear(c_in, num_classes)),
        ]
        super().__init__(OrderedDict(layers))
        # Initialisation of the reference implementation (norm gains 1, biases 0 by default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)


@MODELS.register("wrn28_4")
def wrn28_4(
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    norm: str = "batch",
    dropout: float = 0.0,
) -> nn.Module:
    """Pre-activation WRN-28-4; `norm` is "batch" or "rms"; `dropout` between the block's convs."""
    width = check_width(width)
    if norm not in NORMS:
        raise ConfigError(f"model option 'norm' must be one of {', '.join(NORMS)}, got {norm!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"model option 'dropout' must be in [0, 1), got {dropout!r}")
    return WideResNet(num_classes, in_channels, width, norm, float(dropout))
