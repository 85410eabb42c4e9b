"""digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no download).

Pixel values 0..16 are scaled to 0..255, resized (bilinear) to `image_size` and only then
rounded to uint8, so upsampling keeps the original grey levels. The train/val split is fixed
and stratified: train_test_split(test_size=0.2, stratify=y, random_state=0) -> 1437 / 360.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bench.data import (
    DATASETS,
    DatasetSplits,
    channel_stats,
    check_image_size,
    resize_images,
    resolve_options,
)

DEFAULTS: dict[str, Any] = {"image_size": 32}  # pixels; null keeps the native 8
NATIVE_SIZE = 8  # pixels
CHANNELS = 1  # grey
NUM_CLASSES = 10
MAX_VALUE = 16.0  # sklearn's digits pixels lie in 0..16
VAL_FRACTION = 0.2
SPLIT_SEED = 0


@DATASETS.register("digits")
def load(options: dict[str, Any], data_root: Path) -> DatasetSplits:
    """Load digits; `data_root` is unused (the data ships with scikit-learn)."""
    opts = resolve_options("digits", options, DEFAULTS)
    image_size = check_image_size("digits", opts["image_size"]) or NATIVE_SIZE

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float() * (255.0 / MAX_VALUE)  # (N, 8, 8) in 0..255
    images = images[:, None]  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).long()  # (N,)

    train_idx, val_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=VAL_FRACTION,
        stratify=bunch.target,
        random_state=SPLIT_SEED,
    )
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    train_x = resize_images(images[train_idx], image_size)  # (1437, 1, S, S) uint8
    val_x = resize_images(images[val_idx], image_size)  # (360, 1, S, S) uint8
    mean, std = channel_stats(train_x)
    return DatasetSplits(
        train_x=train_x,
        val_x=val_x,
        train_y=labels[train_idx],
        val_y=labels[val_idx],
        num_classes=10,
        mean=mean,
        std=std,
        name="digits",
    )
