"""Datasets: one registry of loaders, the `DatasetSplits` they return, and `load_dataset`.

A loader is `load(options: dict, data_root: Path) -> DatasetSplits`, registered with
`@DATASETS.register("name")` in one file per dataset family. Pixels stay uint8 (0..255) until a
batch is drawn: `DeviceLoader` (loader.py) slices, augments and normalises on the device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence, Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.data.loader import DeviceLoader, normalize, random_crop, random_flip, to_unit
from bench.errors import ConfigError, DataError
from bench.registry import Registry

__all__ = [
    "DATASETS",
    "LOADER_OPTIONS",
    "SUBSET_OPTIONS",
    "DatasetSplits",
    "DeviceLoader",
    "channel_stats",
    "check_image_size",
    "load_dataset",
    "normalize",
    "random_crop",
    "random_flip",
    "resize_images",
    "resolve_options",
    "to_unit",
]

# A loader: load(options, data_root) -> DatasetSplits.
Loader = Callable[[dict[str, Any], Path], "DatasetSplits"]
DATASETS: Registry[Loader] = Registry("dataset")

# Keys of the config's `data` block that are not dataset options: DeviceLoader consumes these,
# load_dataset accepts and ignores them.
LOADER_OPTIONS: tuple[str, ...] = ("augment", "crop_padding", "flip")
# Applied by load_dataset to every dataset, after the loader ran.
SUBSET_OPTIONS: tuple[str, ...] = ("train_subset", "val_subset", "classes")

SUBSET_SEED = 0  # the fixed permutation behind train_subset / val_subset


@dataclasses.dataclass
class DatasetSplits:
    """A dataset as uint8 pixel tensors, with its per-channel normalisation constants.

    train_x, val_x: uint8 (N, C, H, W), pixel values 0..255. train_y, val_y: int64 (N,).
    mean, std: per channel, in [0, 1] pixel units (computed from the train split).
    """

    train_x: torch.Tensor
    val_x: torch.Tensor
    train_y: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("val", self.val_x, self.val_y)):
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DataError(
                    f"{self.name}: {split}_x must be uint8 (N, C, H, W), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(
                    f"{self.name}: {split}_y must be int64 ({x.shape[0]},), "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DataError(
                    f"{self.name}: {split} labels must lie in [0, {self.num_classes}), "
                    f"got [{int(y.min())}, {int(y.max())}]"
                )
        if self.val_x.shape[1:] != self.train_x.shape[1:]:
            raise DataError(
                f"{self.name}: train and val images differ in shape: "
                f"{tuple(self.train_x.shape[1:])} vs {tuple(self.val_x.shape[1:])}"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise DataError(
                f"{self.name}: mean/std need one value per channel ({self.in_channels}), "
                f"got {len(self.mean)}/{len(self.std)}"
            )

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Image height in pixels (images are square)."""
        return int(self.train_x.shape[2])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_x.shape[0])

    def to(self, device: torch.device | str) -> DatasetSplits:
        """A copy whose tensors live on `device` (this object is left as it is)."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            val_x=self.val_x.to(device),
            train_y=self.train_y.to(device),
            val_y=self.val_y.to(device),
        )

    def select_classes(self, classes: Sequence[int] | None) -> DatasetSplits:
        """Keep only the images of `classes`, relabelled 0..k-1 in the order given (e.g. an
        upstream task on digits 0-4 and a held-out downstream task on digits 5-9)."""
        if classes is None:
            return self
        classes = list(classes)
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int)
               or not 0 <= c < self.num_classes]
        if bad or not classes or len(set(classes)) != len(classes):
            raise ConfigError(
                f"{self.name}: classes must be distinct class indices in 0..{self.num_classes - 1}, "
                f"got {classes}"
            )
        lut = torch.full((self.num_classes,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(len(classes))

        def keep(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            new = lut.to(y.device)[y]  # (N,) new label, -1 = dropped
            mask = new >= 0
            return x[mask], new[mask]

        train_x, train_y = keep(self.train_x, self.train_y)
        val_x, val_y = keep(self.val_x, self.val_y)
        return dataclasses.replace(self, train_x=train_x, train_y=train_y, val_x=val_x,
                                   val_y=val_y, num_classes=len(classes))

    def subset(self, train_n: int | None, val_n: int | None) -> DatasetSplits:
        """The first `train_n` / `val_n` images of a fixed permutation (None keeps a split whole).

        Deterministic: the permutation comes from a generator seeded with SUBSET_SEED, and the
        chosen images keep their original order. mean/std stay those of the full train split.
        """
        train_idx = _subset_indices(self.name, "train_subset", self.n_train, train_n, offset=0)
        val_idx = _subset_indices(self.name, "val_subset", self.n_val, val_n, offset=1)
        if train_idx is None and val_idx is None:
            return self
        splits = self
        if train_idx is not None:
            train_idx = train_idx.to(self.train_x.device)
            splits = dataclasses.replace(
                splits, train_x=self.train_x[train_idx], train_y=self.train_y[train_idx]
            )
        if val_idx is not None:
            val_idx = val_idx.to(self.val_x.device)
            splits = dataclasses.replace(
                splits, val_x=self.val_x[val_idx], val_y=self.val_y[val_idx]
            )
        return splits


def _subset_indices(
    dataset: str, option: str, n_total: int, n: int | None, offset: int
) -> torch.Tensor | None:
    """Sorted indices of the first n entries of a fixed permutation of range(n_total)."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ConfigError(f"{dataset}: {option} must be a positive integer or null, got {n!r}")
    if n > n_total:
        raise ConfigError(
            f"{dataset}: {option}={n} but the split has only {n_total} images; "
            f"use at most {n_total} or null for all of them"
        )
    generator = torch.Generator().manual_seed(SUBSET_SEED + offset)
    permutation = torch.randperm(n_total, generator=generator)
    return permutation[:n].sort().values


def load_dataset(
    name: str, options: Mapping[str, Any] | None = None, data_root: str | Path = "data"
) -> DatasetSplits:
    """Load dataset `name` with the config's `data` options; see the module docstring.

    `augment`, `crop_padding` and `flip` are accepted and ignored here (DeviceLoader uses them);
    `classes` (keep these classes, relabelled 0..k-1) and then `train_subset` / `val_subset`
    are applied to every dataset after loading; every other key is
    passed to the dataset's loader, which rejects keys it does not know.
    """
    load = DATASETS.get(name)
    dataset_options = dict(options or {})
    for key in LOADER_OPTIONS:
        dataset_options.pop(key, None)
    train_n = dataset_options.pop("train_subset", None)
    val_n = dataset_options.pop("val_subset", None)
    classes = dataset_options.pop("classes", None)
    splits = load(dataset_options, Path(data_root))
    return splits.select_classes(classes).subset(train_n, val_n)


def resolve_options(
    dataset: str, options: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """`defaults` updated with `options`; an unknown key is a ConfigError naming accepted ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        accepted = ", ".join(sorted(defaults))
        generic = ", ".join(SUBSET_OPTIONS + LOADER_OPTIONS)
        raise ConfigError(
            f"unknown data option(s) {', '.join(repr(k) for k in unknown)} for dataset "
            f"'{dataset}'. Accepted options: {accepted} (and, for every dataset: {generic})"
        )
    return {**defaults, **options}


def check_image_size(dataset: str, image_size: Any) -> int | None:
    """Validate the `image_size` option: a positive int, or None for the native size."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ConfigError(
            f"{dataset}: image_size must be a positive integer (pixels) or null for the native "
            f"size, got {image_size!r}"
        )
    return image_size


def resize_images(x: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize (N, C, H, W) images with pixel values in 0..255 (uint8 or float) to size x size.

    Bilinear interpolation (align_corners=False), then rounding to uint8. Done in chunks of
    `chunk` images so that upsampling a whole CIFAR split does not hold it as float32 at once.
    """
    n, c, h, w = x.shape
    out = torch.empty((n, c, size, size), dtype=torch.uint8, device=x.device)
    for start in range(0, n, chunk):
        part = x[start : start + chunk].float()  # (b, C, H, W)
        if (h, w) != (size, size):
            part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False)
        out[start : start + chunk] = part.round().clamp(0, 255).to(torch.uint8)
    return out


def channel_stats(
    x: torch.Tensor, chunk: int = 1024
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 (N, C, H, W) images, in [0, 1] pixel units.

    Exact: counts the 256 pixel values per channel, then takes the moments of the histogram.
    """
    n_channels = x.shape[1]
    counts = torch.zeros(n_channels, 256, dtype=torch.float64)
    for part in x.split(chunk):
        for c in range(n_channels):
            counts[c] += torch.bincount(part[:, c].reshape(-1), minlength=256).cpu().double()
    values = torch.arange(256, dtype=torch.float64) / 255.0  # (256,) pixel value in [0, 1]
    n_pixels = counts.sum(dim=1)  # (C,)
    mean = (counts * values).sum(dim=1) / n_pixels  # (C,)
    var = (counts * (values - mean[:, None]) ** 2).sum(dim=1) / n_pixels  # (C,)
    std = var.sqrt()
    if not all(math.isfinite(s) and s > 0 for s in std.tolist()):
        raise DataError(
            f"cannot normalise: a channel of the train split is constant (std={std.tolist()})"
        )
    return tuple(mean.tolist()), tuple(std.tolist())


# Registration: each dataset module registers its loaders when imported, and is imported the
# first time one of its datasets is loaded (no folder scanning). Lazy, so that a run on
# synthetic data (the GPU check) needs neither scikit-learn nor torchvision's datasets.
DATASETS.lazy("cifar10", "bench.data.cifar:load_cifar10")
DATASETS.lazy("cifar100", "bench.data.cifar:load_cifar100")
DATASETS.lazy("digits", "bench.data.digits:load")
DATASETS.lazy("synthetic", "bench.data.synthetic:load")
