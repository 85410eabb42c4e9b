"""cifar10, cifar100: torchvision's datasets, read from `data_root` after verifying checksums.

Before torchvision reads anything, the md5 of every file it expects (`train_list`, `test_list`,
`meta` under `base_folder`) is compared with the expected one: torchvision's official md5s, or
those given by the `checksums: {filename: md5}` data option (tests build a small archive in the
same on-disk format and pass its md5s). torchvision's own constructor is then run through a
subclass carrying the same md5s, so it checks against what we checked.

Where the folder is missing: an archive (`cifar-10-python.tar.gz` / `cifar-100-python.tar.gz`)
in `data_root` is verified and extracted; otherwise `download: true` runs torchvision's download;
otherwise a DataError says where the files were expected and how to get them there.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import download_and_extract_archive, extract_archive

from bench.data import (
    DATASETS,
    DatasetSplits,
    channel_stats,
    check_image_size,
    resize_images,
    resolve_options,
)
from bench.errors import ConfigError, DataError

DEFAULTS: dict[str, Any] = {
    "image_size": None,  # pixels; null keeps the native 32 (e.g. 128 for TraDy-style runs)
    "download": False,  # fetch with torchvision where the folder and archive are both missing
    "checksums": None,  # {filename: md5} overriding torchvision's official md5s
}
NATIVE_SIZE = 32  # pixels
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def md5sum(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def data_files(base: type[CIFAR10]) -> list[str]:
    """The files torchvision reads from `base_folder`: train batches, test batches, meta."""
    return [name for name, _ in base.train_list + base.test_list] + [base.meta["filename"]]


def official_md5s(base: type[CIFAR10]) -> dict[str, str]:
    """torchvision's md5 for every data file and for the archive."""
    md5s = {name: md5 for name, md5 in base.train_list + base.test_list}
    md5s[base.meta["filename"]] = base.meta["md5"]
    md5s[base.filename] = base.tgz_md5
    return md5s


def expected_md5s(
    dataset: str, base: type[CIFAR10], overrides: Mapping[str, str] | None
) -> dict[str, str]:
    """Official md5s updated with the `checksums` option (keys must be files torchvision knows)."""
    md5s = official_md5s(base)
    if overrides is None:
        return md5s
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"{dataset}: checksums must map file names to md5 strings, got {overrides!r}"
        )
    unknown = sorted(set(overrides) - set(md5s))
    if unknown:
        raise ConfigError(
            f"{dataset}: checksums names unknown file(s) {', '.join(unknown)}; "
            f"valid files: {', '.join(md5s)}"
        )
    for name, md5 in overrides.items():
        if not isinstance(md5, str) or len(md5) != 32:
            raise ConfigError(
                f"{dataset}: checksums['{name}'] must be a 32-hex-digit md5, got {md5!r}"
            )
        md5s[name] = md5.lower()
    return md5s


def checked_class(base: type[CIFAR10], md5s: Mapping[str, str]) -> type[CIFAR10]:
    """A subclass of torchvision's class whose integrity checks use `md5s`."""
    return type(
        f"Checked{base.__name__}",
        (base,),
        {
            "train_list": [[name, md5s[name]] for name, _ in base.train_list],
            "test_list": [[name, md5s[name]] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": md5s[base.meta["filename"]]},
            "tgz_md5": md5s[base.filename],
        },
    )


def _how_to_fix(base: type[CIFAR10], data_root: Path) -> str:
    return (
        f"set the data option `download: true` on a machine with network access, or copy "
        f"{base.filename} (from {base.url}) into {data_root} (it is verified and extracted on "
        f"first use), or point `data_root` at a folder that holds a good {base.base_folder}/"
    )


def verify_file(
    dataset: str, path: Path, expected_md5: str, base: type[CIFAR10], data_root: Path
) -> None:
    """DataError unless `path` exists and its md5 is `expected_md5`."""
    if not path.is_file():
        raise DataError(
            f"{dataset}: file '{path.name}' is missing from {path.parent}. The folder is "
            f"incomplete: delete {path.parent} and {_how_to_fix(base, data_root)}."
        )
    actual = md5sum(path)
    if actual != expected_md5:
        raise DataError(
            f"{dataset}: checksum mismatch for '{path.name}' in {path.parent} (data_root "
            f"{data_root}): expected md5 {expected_md5}, got md5 {actual}. The file is corrupted "
            f"or incomplete. Delete {path} (and {data_root / base.base_folder}, if extracted from "
            f"it) and download again with `download: true`, or point `data_root` at a good copy."
        )


def prepare(
    dataset: str, base: type[CIFAR10], data_root: Path, md5s: Mapping[str, str], download: bool
) -> None:
    """Make sure `data_root/base_folder` holds every file with its expected md5."""
    folder = data_root / base.base_folder
    archive = data_root / base.filename
    if not folder.is_dir():
        if archive.is_file():
            verify_file(dataset, archive, md5s[base.filename], base, data_root)
            extract_archive(archive, data_root)
            if not folder.is_dir():
                raise DataError(
                    f"{dataset}: {archive} did not contain the folder {base.base_folder}/; "
                    f"it is not a {dataset} archive. Replace it with {base.url}."
                )
        elif download:
            try:  # the body of torchvision's CIFAR10.download, with our expected archive md5
                download_and_extract_archive(
                    base.url, str(data_root), filename=base.filename, md5=md5s[base.filename]
                )
            except (OSError, RuntimeError, ValueError) as e:
                raise DataError(
                    f"{dataset}: downloading {base.url} into {data_root} failed ({e}). Without "
                    f"network access, copy {base.filename} into {data_root} instead."
                ) from e
        else:
            raise DataError(
                f"{dataset}: not found. Expected the folder {folder} (files "
                f"{', '.join(data_files(base))}) or the archive {archive}. To fix: "
                f"{_how_to_fix(base, data_root)}."
            )
    for name in data_files(base):
        verify_file(dataset, folder / name, md5s[name], base, data_root)


def load_cifar(
    dataset: str, base: type[CIFAR10], num_classes: int, options: dict[str, Any], data_root: Path
) -> DatasetSplits:
    """Verify, then load both splits through torchvision; images as uint8 (N, 3, S, S)."""
    opts = resolve_options(dataset, options, DEFAULTS)
    image_size = check_image_size(dataset, opts["image_size"]) or NATIVE_SIZE
    data_root = Path(data_root).resolve()
    if not isinstance(opts["download"], bool):
        raise ConfigError(f"{dataset}: download must be true or false, got {opts['download']!r}")
    md5s = expected_md5s(dataset, base, opts["checksums"])
    prepare(dataset, base, data_root, md5s, opts["download"])

    checked = checked_class(base, md5s)
    try:
        train = checked(root=str(data_root), train=True)
        test = checked(root=str(data_root), train=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        folder = data_root / base.base_folder
        raise DataError(f"{dataset}: torchvision could not read {folder}: {e}") from e

    def images(ds: CIFAR10) -> torch.Tensor:
        hwc = torch.from_numpy(ds.data)  # (N, 32, 32, 3) uint8: a view of the file's (N, 3, 32, 32)
        chw = hwc.permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32), no copy: back to file order
        return chw if image_size == NATIVE_SIZE else resize_images(chw, image_size)  # (N, 3, S, S)

    train_x, val_x = images(train), images(test)
    mean, std = channel_stats(train_x)
    return DatasetSplits(
        train_x=train_x,
        val_x=val_x,
        train_y=torch.tensor(train.targets, dtype=torch.int64),
        val_y=torch.tensor(test.targets, dtype=torch.int64),
        num_classes=num_classes,
        mean=mean,
        std=std,
        name=dataset,
    )


@DATASETS.register("cifar10")
def load_cifar10(options: dict[str, Any], data_root: Path) -> DatasetSplits:
    """CIFAR-10: 50000 train / 10000 test images, 32x32 RGB, 10 classes."""
    return load_cifar("cifar10", CIFAR10, 10, options, data_root)


@DATASETS.register("cifar100")
def load_cifar100(options: dict[str, Any], data_root: Path) -> DatasetSplits:
    """CIFAR-100 with its 100 fine labels: 50000 train / 10000 test images, 32x32 RGB."""
    return load_cifar("cifar100", CIFAR100, 100, options, data_root)
