"""Model registry: names map to factories `f(num_classes, in_channels=3, width=1.0, **options)`.

Every model is an `nn.Sequential` subclass whose top-level children, applied in order, are the
forward pass (e.g. `stem, layer1, ..., pool, fc`), so block-wise methods can cut a network into
units by name or by slicing. `width` scales every channel count so CPU configs can shrink a model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from bench.errors import ConfigError
from bench.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")

# Arguments of a factory that build_model passes itself; they are not `options`.
_POSITIONAL_ARGS = ("num_classes", "in_channels")


def scale_channels(channels: int, width: float, minimum: int = 1) -> int:
    """`channels * width`, rounded to the nearest integer, at least `minimum`."""
    return max(minimum, int(round(channels * width)))


def check_width(width: float) -> float:
    """Reject a non-positive or non-numeric width multiplier with a ConfigError."""
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ConfigError(f"model option 'width' must be a positive number, got {width!r}")
    return float(width)


class GlobalAvgPool(nn.Sequential):
    """(B, C, H, W) -> (B, C): adaptive average pool to 1x1, then flatten."""

    def __init__(self) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def accepted_options(name: str) -> list[str]:
    """The option names model `name` accepts (keyword arguments of its factory), sorted."""
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters.values()
    return sorted(
        p.name
        for p in params
        if p.name not in _POSITIONAL_ARGS
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def build_model(
    name: str, num_classes: int, in_channels: int, options: Mapping[str, Any] | None = None
) -> nn.Module:
    """Build registered model `name`; `options` holds `width` and model-specific options.

    An unknown model name or option is a ConfigError that lists the valid ones.
    """
    factory = MODELS.get(name)
    options = dict(options or {})
    accepted = accepted_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model '{name}' does not accept option(s) {', '.join(map(repr, unknown))}. "
            f"Accepted options: {', '.join(accepted)}"
        )
    return factory(num_classes, in_channels=in_channels, **options)


# Explicit imports (no folder scanning): each module registers its factories on import.
from bench.models import mobilenetv2, resnet, vgg, wrn  # noqa: E402, F401

__all__ = [
    "MODELS",
    "GlobalAvgPool",
    "accepted_options",
    "build_model",
    "check_width",
    "scale_channels",
]
