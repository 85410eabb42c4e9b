"""synthetic: random uint8 images of any shape, for throughput and memory measurements.

Labels are learnable by construction: each class has a fixed random prototype image, and an
image of class k is round(0.5 * prototype_k + 0.5 * uniform noise), pixels 0..255. Classes are
balanced (label = position mod num_classes, shuffled). Everything comes from one CPU
torch.Generator seeded with `seed`, drawn in a fixed order (prototypes, then train, then val),
so the same options give the same tensors on every machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.data import DATASETS, DatasetSplits, channel_stats, check_image_size, resolve_options
from bench.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "n_train": 512,
    "n_val": 256,
    "num_classes": 10,
    "channels": 3,
    "image_size": 32,  # pixels; null means the default 32
    "seed": 0,
}
SIGNAL_WEIGHT = 0.5  # share of the class prototype in each pixel (the rest is noise)
CHUNK = 1024  # images generated per step (part of the fixed draw order)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"synthetic: {name} must be a positive integer, got {value!r}")
    return value


def _draw(
    n: int, prototypes: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n balanced labels and their images; prototypes float (K, C, H, W) in 0..255."""
    num_classes = prototypes.shape[0]
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]  # (n,)
    images = torch.empty((n, *prototypes.shape[1:]), dtype=torch.uint8)  # (n, C, H, W)
    for start in range(0, n, CHUNK):  # chunks keep the float intermediates small
        part = labels[start : start + CHUNK]
        noise = torch.rand((len(part), *prototypes.shape[1:]), generator=generator) * 255.0
        mixed = SIGNAL_WEIGHT * prototypes[part] + (1.0 - SIGNAL_WEIGHT) * noise  # (b, C, H, W)
        images[start : start + CHUNK] = mixed.round().clamp(0, 255).to(torch.uint8)
    return images, labels


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The resolved options, checked (a ConfigError names the bad one); also what
    `bench.config` calls to vet a config before any job."""
    for key in ("n_train", "n_val", "num_classes", "channels"):
        _positive_int(key, opts[key])
    if opts["n_train"] < 2:
        raise ConfigError(f"synthetic: n_train must be at least 2 (a training batch needs two "
                          f"images), got {opts['n_train']}")
    seed = opts["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"synthetic: seed must be an integer, got {seed!r}")
    return {**opts, "image_size": check_image_size("synthetic", opts["image_size"])
            or DEFAULTS["image_size"]}


@DATASETS.register("synthetic")
def load(options: dict[str, Any], data_root: Path) -> DatasetSplits:
    """Generate the synthetic dataset; `data_root` is unused."""
    opts = check_options(resolve_options("synthetic", options, DEFAULTS))
    n_train, n_val = opts["n_train"], opts["n_val"]
    num_classes, channels = opts["num_classes"], opts["channels"]
    size, seed = opts["image_size"], opts["seed"]

    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand((num_classes, channels, size, size), generator=generator) * 255.0
    train_x, train_y = _draw(n_train, prototypes, generator)
    val_x, val_y = _draw(n_val, prototypes, generator)
    mean, std = channel_stats(train_x)
    return DatasetSplits(
        train_x=train_x,
        val_x=val_x,
        train_y=train_y,
        val_y=val_y,
        num_classes=num_classes,
        mean=mean,
        std=std,
        name="synthetic",
    )
