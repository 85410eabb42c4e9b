"""Tests for bench.data: every registered dataset, CIFAR's checksum/extract paths, DeviceLoader.

CIFAR is exercised through torchvision's real loading code on a tiny archive written in the real
on-disk format (see `write_cifar`); no network is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import shutil
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import bench.data.cifar as cifar_module
from bench.data import (
    DATASETS,
    DatasetSplits,
    DeviceLoader,
    channel_stats,
    load_dataset,
    normalize,
    random_crop,
    random_flip,
    resize_images,
    to_unit,
)
from bench.data.loader import crop
from bench.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------
# A tiny CIFAR in the real on-disk format
# --------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes `bytes` as Python 2 `str` (SHORT_BINSTRING / BINSTRING opcodes).

    The real CIFAR pickles were written by Python 2: their keys and the arrays' raw data are
    Python 2 strings, which load as `str` with torchvision's encoding="latin1" and as `bytes`
    (b'data', b'labels', ...) with encoding="bytes". This writer produces the same opcodes.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _dump_py2(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@dataclasses.dataclass
class FakeCifar:
    root: Path
    folder: Path
    archive: Path
    train_x: torch.Tensor  # (N, 3, 32, 32) uint8, in file order
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    checksums: dict[str, str]  # every data file and the archive


CIFAR_LAYOUT = {  # name: (torchvision class, num_classes)
    "cifar10": (cifar_module.CIFAR10, 10),
    "cifar100": (cifar_module.CIFAR100, 100),
}


def write_cifar(root: Path, name: str, seed: int = 0) -> FakeCifar:
    """Write a few random images as `<root>/<base_folder>/...` plus the matching .tar.gz."""
    base, num_classes = CIFAR_LAYOUT[name]
    rng = np.random.default_rng(seed)
    folder = root / base.base_folder
    folder.mkdir(parents=True)

    def batch(n: int, label: str) -> tuple[dict[bytes, Any], np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=n)
        entry: dict[bytes, Any] = {
            b"batch_label": label.encode(),
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)],
            b"data": images.reshape(n, 3072),  # R plane, G plane, B plane, each row-major
        }
        if name == "cifar10":
            entry[b"labels"] = [int(v) for v in labels]
        else:
            entry[b"fine_labels"] = [int(v) for v in labels]
            entry[b"coarse_labels"] = [int(v) // 5 for v in labels]
        return entry, images, labels

    train_images, train_labels = [], []
    for i, (file_name, _) in enumerate(base.train_list):
        n = 3 + i if name == "cifar10" else 12  # cifar100 has a single train file
        entry, images, labels = batch(n, f"training batch {i + 1} of {len(base.train_list)}")
        _dump_py2(entry, folder / file_name)
        train_images.append(images)
        train_labels.append(labels)
    (test_name, _), = base.test_list
    entry, val_images, val_labels = batch(4, "testing batch 1 of 1")
    _dump_py2(entry, folder / test_name)
    if name == "cifar10":
        meta = {
            b"num_cases_per_batch": 3,
            b"label_names": [f"class{i}".encode() for i in range(10)],
            b"num_vis": 3072,
        }
    else:
        meta = {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        }
    _dump_py2(meta, folder / base.meta["filename"])

    archive = root / base.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=base.base_folder)
    checksums = {p.name: _md5(p) for p in folder.iterdir()}
    checksums[archive.name] = _md5(archive)
    return FakeCifar(
        root=root,
        folder=folder,
        archive=archive,
        train_x=torch.from_numpy(np.concatenate(train_images)),
        train_y=torch.from_numpy(np.concatenate(train_labels)).long(),
        val_x=torch.from_numpy(val_images),
        val_y=torch.from_numpy(val_labels).long(),
        checksums=checksums,
    )


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FakeCifar]:
    """One read-only tiny copy of each CIFAR (tests that damage files build their own)."""
    return {name: write_cifar(tmp_path_factory.mktemp(name), name) for name in CIFAR_LAYOUT}


def dataset_args(name: str, fake_cifar: dict[str, FakeCifar], tmp_path: Path) -> tuple[dict, Path]:
    """Options and data_root that make `name` loadable here (a new dataset may need an entry)."""
    if name in fake_cifar:
        return {"checksums": fake_cifar[name].checksums}, fake_cifar[name].root
    return {}, tmp_path


def test_fake_pickles_look_like_the_real_ones(fake_cifar: dict[str, FakeCifar]) -> None:
    path = fake_cifar["cifar10"].folder / "data_batch_1"
    with open(path, "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")
    assert set(as_bytes) == {b"batch_label", b"filenames", b"data", b"labels"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (3, 3072)
    with open(path, "rb") as f:
        assert "data" in pickle.load(f, encoding="latin1")  # what torchvision reads


# --------------------------------------------------------------------------------------------
# Registry-driven: every dataset
# --------------------------------------------------------------------------------------------


def test_registry_holds_the_documented_datasets() -> None:
    assert {"digits", "cifar10", "cifar100", "synthetic"} <= set(DATASETS.names())


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_contract(name: str, fake_cifar: dict[str, FakeCifar], tmp_path: Path) -> None:
    options, root = dataset_args(name, fake_cifar, tmp_path)
    splits = load_dataset(name, options, root)
    assert isinstance(splits, DatasetSplits)
    assert splits.name == name
    for x, y in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y)):
        assert x.dtype == torch.uint8 and x.dim() == 4
        assert x.shape[1:] == (splits.in_channels, splits.image_size, splits.image_size)
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        assert 0 <= int(y.min()) and int(y.max()) < splits.num_classes
    assert len(splits.mean) == len(splits.std) == splits.in_channels
    assert all(0.0 < m < 1.0 for m in splits.mean) and all(0.0 < s < 1.0 for s in splits.std)
    mean, std = channel_stats(splits.train_x)
    assert splits.mean == pytest.approx(mean) and splits.std == pytest.approx(std)

    moved = splits.to("cpu")
    assert moved is not splits and torch.equal(moved.train_x, splits.train_x)


@pytest.mark.parametrize("name", DATASETS.names())
def test_image_size_option(name: str, fake_cifar: dict[str, FakeCifar], tmp_path: Path) -> None:
    options, root = dataset_args(name, fake_cifar, tmp_path)
    splits = load_dataset(name, {**options, "image_size": 12}, root)
    assert splits.image_size == 12 and splits.val_x.shape[2:] == (12, 12)


@pytest.mark.parametrize("name", DATASETS.names())
def test_unknown_option_lists_the_accepted_ones(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(name, {"imagesize": 32}, tmp_path)
    message = str(info.value)
    assert "imagesize" in message and "image_size" in message and name in message


@pytest.mark.parametrize("name", DATASETS.names())
def test_subset_is_fixed(name: str, fake_cifar: dict[str, FakeCifar], tmp_path: Path) -> None:
    options, root = dataset_args(name, fake_cifar, tmp_path)
    options = {**options, "train_subset": 5, "val_subset": 3}
    a, b = load_dataset(name, options, root), load_dataset(name, options, root)
    assert a.train_x.shape[0] == 5 and a.val_x.shape[0] == 3
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)


def test_loader_options_are_ignored_by_load_dataset_only() -> None:
    options = {"augment": True, "crop_padding": 4, "flip": False, "image_size": 8}
    splits = load_dataset("digits", options, "unused")
    assert splits.image_size == 8
    with pytest.raises(ConfigError, match="augment"):
        DATASETS.get("digits")({"augment": True}, Path("unused"))  # not a dataset option


def test_subset_picks_images_of_the_split() -> None:
    full = load_dataset("digits", {"image_size": 8}, "unused")
    part = full.subset(100, None)
    assert part.val_x.shape[0] == full.val_x.shape[0] and part.train_x.shape[0] == 100
    flat_full = full.train_x.reshape(full.n_train, -1)
    for image, label in zip(part.train_x.reshape(100, -1), part.train_y):
        matches = (flat_full == image).all(dim=1) & (full.train_y == label)
        assert matches.any()
    assert not torch.equal(part.train_y, full.train_y[:100])  # a permutation, not the head
    with pytest.raises(ConfigError, match="train_subset=5000"):
        full.subset(5000, None)
    with pytest.raises(ConfigError, match="val_subset"):
        load_dataset("digits", {"val_subset": 0}, "unused")


def test_splits_validate_their_tensors() -> None:
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    ok = dict(
        train_x=x, val_x=x, train_y=y, val_y=y, num_classes=2, mean=(0.5,), std=(0.2,), name="t"
    )
    DatasetSplits(**ok)
    with pytest.raises(DataError, match="uint8"):
        DatasetSplits(**{**ok, "train_x": x.float()})
    with pytest.raises(DataError, match="labels"):
        DatasetSplits(**{**ok, "val_y": y + 2})


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_split_is_fixed_and_stratified() -> None:
    a = load_dataset("digits", {}, "unused")
    b = load_dataset("digits", {}, "unused")
    assert (a.n_train, a.n_val, a.num_classes) == (1437, 360, 10)
    assert (a.in_channels, a.image_size) == (1, 32)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    all_counts = torch.bincount(torch.cat([a.train_y, a.val_y]), minlength=10).double()
    val_counts = torch.bincount(a.val_y, minlength=10).double()
    assert (val_counts - 0.2 * all_counts).abs().max() <= 1.0


def test_digits_pixels_are_scaled_then_resized_then_rounded() -> None:
    bunch = load_digits()
    train_idx, val_idx = train_test_split(
        np.arange(len(bunch.target)), test_size=0.2, stratify=bunch.target, random_state=0
    )
    native = load_dataset("digits", {"image_size": None}, "unused")
    resized = load_dataset("digits", {"image_size": 32}, "unused")
    for split, index in (("train", train_idx), ("val", val_idx)):
        scaled = torch.from_numpy(bunch.images[index]).float()[:, None] * (255 / 16)  # (N, 1, 8, 8)
        assert torch.equal(getattr(native, f"{split}_x"), scaled.round().to(torch.uint8))
        assert torch.equal(getattr(native, f"{split}_y"), torch.from_numpy(bunch.target[index]))
        expected = F.interpolate(scaled, size=(32, 32), mode="bilinear", align_corners=False)
        expected = expected.round().clamp(0, 255).to(torch.uint8)  # quantised after resizing
        assert torch.equal(getattr(resized, f"{split}_x"), expected)
    assert native.val_x.max() == 255


def test_digits_cache_is_written_once_and_a_planted_or_corrupt_one_is_replaced(
    tmp_path, monkeypatch
) -> None:
    """The cache that spares each cell scikit-learn's import gives what scikit-learn gives;
    a file with other content (planted labels, a truncated write) is ignored and rewritten."""
    from bench.data import digits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = digits.cache_path()
    assert not path.exists()
    fresh = load_dataset("digits", {"image_size": None}, "unused")  # scikit-learn, then cached
    assert path.is_file() and path.parent == tmp_path / "memrepro"
    cached = load_dataset("digits", {"image_size": None}, "unused")
    assert torch.equal(fresh.train_x, cached.train_x) and torch.equal(fresh.val_y, cached.val_y)

    good = dict(np.load(path))
    planted = {**good, "labels": (good["labels"] + 1) % 10}  # every label shifted
    np.savez(path.with_suffix(".tmp.npz"), **planted)
    path.with_suffix(".tmp.npz").replace(path)
    assert digits._from_cache(path) is None
    again = load_dataset("digits", {"image_size": None}, "unused")
    assert torch.equal(again.train_y, fresh.train_y)
    assert digits._from_cache(path) is not None  # rewritten with the right content

    path.write_bytes(path.read_bytes()[:1000])  # truncated
    assert digits._from_cache(path) is None
    assert torch.equal(load_dataset("digits", {}, "unused").val_y, fresh.val_y)


def test_digits_loads_when_the_cache_cannot_be_written(tmp_path, monkeypatch) -> None:
    from bench.data import digits

    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # memrepro/ cannot be made under a file
    splits = load_dataset("digits", {}, "unused")
    assert splits.n_train == 1437 and not digits.cache_path().exists()

# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------


def test_synthetic_options_and_determinism() -> None:
    options = dict(n_train=60, n_val=30, num_classes=3, channels=2, image_size=16, seed=7)
    a = load_dataset("synthetic", options, "unused")
    b = load_dataset("synthetic", options, "unused")
    c = load_dataset("synthetic", {**options, "seed": 8}, "unused")
    assert a.train_x.shape == (60, 2, 16, 16) and a.val_x.shape == (30, 2, 16, 16)
    assert a.num_classes == 3 and torch.bincount(a.train_y).tolist() == [20, 20, 20]
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_synthetic_labels_are_learnable() -> None:
    splits = load_dataset("synthetic", {}, "unused")
    x_train = to_unit(splits.train_x).flatten(1)  # (N, C*H*W)
    centroids = torch.stack([x_train[splits.train_y == k].mean(0) for k in range(10)])  # (10, D)
    predicted = torch.cdist(to_unit(splits.val_x).flatten(1), centroids).argmin(1)
    assert (predicted == splits.val_y).float().mean() > 0.9


# --------------------------------------------------------------------------------------------
# CIFAR through torchvision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CIFAR_LAYOUT))
def test_cifar_pixels_round_trip(name: str, fake_cifar: dict[str, FakeCifar]) -> None:
    fake = fake_cifar[name]
    splits = load_dataset(name, {"checksums": fake.checksums}, fake.root)
    assert splits.num_classes == CIFAR_LAYOUT[name][1]
    assert torch.equal(splits.train_x, fake.train_x) and torch.equal(splits.train_y, fake.train_y)
    assert torch.equal(splits.val_x, fake.val_x) and torch.equal(splits.val_y, fake.val_y)
    assert splits.train_x.is_contiguous()


def test_cifar_resize_happens_at_load(fake_cifar: dict[str, FakeCifar]) -> None:
    fake = fake_cifar["cifar10"]
    splits = load_dataset("cifar10", {"checksums": fake.checksums, "image_size": 64}, fake.root)
    expected = F.interpolate(fake.val_x.float(), size=64, mode="bilinear", align_corners=False)
    assert torch.equal(splits.val_x, expected.round().clamp(0, 255).to(torch.uint8))
    assert torch.equal(resize_images(fake.val_x, 32), fake.val_x)


def test_cifar_default_checksums_are_torchvisions(fake_cifar: dict[str, FakeCifar]) -> None:
    fake = fake_cifar["cifar10"]
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", {}, fake.root)
    assert "c99cafc152244af753f735de768cd75f" in str(info.value)  # official md5 of data_batch_1


@pytest.mark.parametrize("name", list(CIFAR_LAYOUT))
def test_cifar_corrupted_file_is_a_checksum_error(name: str, tmp_path: Path) -> None:
    fake = write_cifar(tmp_path, name)
    first = cifar_module.data_files(CIFAR_LAYOUT[name][0])[0]
    path = fake.folder / first
    raw = bytearray(path.read_bytes())
    raw[200:208] = bytes(b ^ 0xFF for b in raw[200:208])
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as info:
        load_dataset(name, {"checksums": fake.checksums}, fake.root)
    message = str(info.value)
    assert f"'{first}'" in message and "checksum" in message and "md5" in message
    assert fake.checksums[first] in message and _md5(path) in message
    assert str(fake.root) in message and "download" in message


def test_cifar_missing_file_says_which(tmp_path: Path) -> None:
    fake = write_cifar(tmp_path, "cifar10")
    (fake.folder / "test_batch").unlink()
    with pytest.raises(DataError, match="'test_batch' is missing"):
        load_dataset("cifar10", {"checksums": fake.checksums}, fake.root)


@pytest.mark.parametrize("name", list(CIFAR_LAYOUT))
def test_cifar_missing_root_says_how_to_fix(name: str, tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset(name, {}, root)
    message = str(info.value)
    base = CIFAR_LAYOUT[name][0]
    assert str(root / base.base_folder) in message
    assert "download: true" in message and base.filename in message
    assert not root.exists()


def test_cifar_archive_is_verified_and_extracted(tmp_path: Path) -> None:
    fake = write_cifar(tmp_path / "made", "cifar100")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(fake.archive, root)
    splits = load_dataset("cifar100", {"checksums": fake.checksums}, root)
    assert (root / "cifar-100-python" / "train").is_file()
    assert torch.equal(splits.train_x, fake.train_x) and torch.equal(splits.val_y, fake.val_y)


def test_cifar_corrupted_archive_is_not_extracted(tmp_path: Path) -> None:
    fake = write_cifar(tmp_path / "made", "cifar10")
    root = tmp_path / "root"
    root.mkdir()
    archive = root / fake.archive.name
    archive.write_bytes(fake.archive.read_bytes()[:-10])
    with pytest.raises(DataError, match="checksum mismatch for 'cifar-10-python.tar.gz'"):
        load_dataset("cifar10", {"checksums": fake.checksums}, root)
    assert not (root / "cifar-10-batches-py").exists()


def test_cifar_download_uses_torchvision_with_expected_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = write_cifar(tmp_path / "made", "cifar10")
    root = tmp_path / "root"
    calls: list[tuple[str, str, str | None, str | None]] = []

    def fake_download(
        url: str, download_root: str, filename: str | None = None, md5: str | None = None
    ) -> None:
        calls.append((url, download_root, filename, md5))
        Path(download_root).mkdir(parents=True, exist_ok=True)
        shutil.copy(fake.archive, download_root)
        cifar_module.extract_archive(Path(download_root) / fake.archive.name, download_root)

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", fake_download)
    splits = load_dataset("cifar10", {"checksums": fake.checksums, "download": True}, root)
    assert calls == [(cifar_module.CIFAR10.url, str(root.resolve()), "cifar-10-python.tar.gz",
                      fake.checksums["cifar-10-python.tar.gz"])]
    assert torch.equal(splits.train_x, fake.train_x)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", no_network)
    with pytest.raises(DataError, match="network unreachable.*copy cifar-10-python.tar.gz"):
        load_dataset("cifar10", {"download": True}, tmp_path / "empty")


def test_cifar_checksums_option_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_batch_9.*valid files: data_batch_1"):
        load_dataset("cifar10", {"checksums": {"data_batch_9": "0" * 32}}, tmp_path)
    with pytest.raises(ConfigError, match="download"):
        load_dataset("cifar10", {"download": "yes"}, tmp_path)


# --------------------------------------------------------------------------------------------
# DeviceLoader and augmentation
# --------------------------------------------------------------------------------------------


def indexed_images(n: int, channels: int = 3, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels all equal their index (mod 256), labels = index."""
    y = torch.arange(n)
    x = (y % 256).to(torch.uint8)[:, None, None, None].expand(n, channels, size, size).contiguous()
    return x, y


def make_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, **kwargs: Any) -> DeviceLoader:
    settings: dict[str, Any] = dict(
        mean=(0.5,) * x.shape[1], std=(0.25,) * x.shape[1], shuffle=True, augment=False,
        generator=torch.Generator(device=x.device).manual_seed(0),
    )
    return DeviceLoader(x, y, batch_size, **{**settings, **kwargs})


def reference_crop(x: torch.Tensor, padding: int, dy: int, dx: int) -> torch.Tensor:
    """Slow, obviously right crop of one image (C, H, W) from its zero-padded copy."""
    c, h, w = x.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=x.dtype)
    padded[:, padding : padding + h, padding : padding + w] = x
    return padded[:, dy : dy + h, dx : dx + w]


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_covers_every_image_once(shuffle: bool) -> None:
    x, y = indexed_images(103)
    loader = make_loader(x, y, 10, shuffle=shuffle)
    assert len(loader) == 11 and loader.n_images == 103
    batches = list(loader)
    assert len(batches) == 11 and [len(b) for _, b in batches] == [10] * 10 + [3]
    labels = torch.cat([b for _, b in batches])
    assert sorted(labels.tolist()) == list(range(103))
    assert (labels.tolist() == list(range(103))) != shuffle
    for inputs, targets in batches:  # inputs and labels sliced with the same index
        assert inputs.dtype == torch.float32 and targets.dtype == torch.int64
        pixels = (inputs * 0.25 + 0.5) * 255  # undo the normalisation
        expected = targets.float()[:, None, None, None].expand_as(pixels)  # (B, C, H, W)
        assert torch.allclose(pixels, expected, atol=1e-3)


def test_loader_drop_last_and_new_order_each_epoch() -> None:
    x, y = indexed_images(103)
    loader = make_loader(x, y, 10, drop_last=True)
    assert len(loader) == 10 and loader.n_images == 100
    first = torch.cat([b for _, b in loader])
    second = torch.cat([b for _, b in loader])
    assert len(first) == 100 and len(set(first.tolist())) == 100
    assert not torch.equal(first, second)


def test_loader_replays_batches_from_generator_state() -> None:
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (50,))
    loader = make_loader(x, y, 16, augment=True, crop_padding=2)
    list(loader)  # advance the generator past one epoch, as a resumed run would have
    state = loader.generator.get_state()
    run_a = list(loader)
    loader.generator.set_state(state)
    run_b = list(loader)
    fresh = make_loader(x, y, 16, augment=True, crop_padding=2)
    fresh.generator.set_state(state)
    run_c = list(fresh)
    for (xa, ya), (xb, yb), (xc, yc) in zip(run_a, run_b, run_c, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, xc) and torch.equal(ya, yc)


@pytest.mark.parametrize("padding", [1, 3])
def test_crop_matches_reference(padding: int) -> None:
    x = torch.randint(1, 256, (6, 2, 5, 7), dtype=torch.uint8)
    offsets = torch.tensor([[0, 2 * padding, padding, 1, 2 * padding, 0],
                            [2 * padding, 0, padding, 2, 1, 0]])
    out = crop(x, padding, offsets[0], offsets[1])
    assert out.shape == x.shape
    for i in range(6):
        expected = reference_crop(x[i], padding, int(offsets[0, i]), int(offsets[1, i]))
        assert torch.equal(out[i], expected)
    assert torch.equal(out[2], x[2])  # offset (padding, padding) is the identity


def test_random_crop_uses_offsets_in_range() -> None:
    padding = 2
    x = torch.randint(1, 256, (64, 1, 6, 6), dtype=torch.uint8)  # no zero pixels: unique matches
    out = random_crop(x, padding, torch.Generator().manual_seed(1))
    seen = set()
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(out[i], reference_crop(x[i], padding, dy, dx))
        ]
        assert len(found) == 1
        seen.add(found[0])
    every_offset = set(range(2 * padding + 1))  # [0, 2 * padding], both ends included
    assert {dy for dy, _ in seen} == every_offset and {dx for _, dx in seen} == every_offset
    assert random_crop(x, 0, None) is x


def test_random_flip() -> None:
    x = torch.randint(0, 256, (64, 3, 4, 5), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped | kept).all()) and flipped.any() and kept.any()


def test_loader_augment_off_switches() -> None:
    x = torch.randint(0, 256, (20, 3, 6, 6), dtype=torch.uint8)
    y = torch.arange(20)
    plain = list(make_loader(x, y, 8, shuffle=False))
    same = list(make_loader(x, y, 8, shuffle=False, augment=True, crop_padding=0, flip=False))
    changed = list(make_loader(x, y, 8, shuffle=False, augment=True, crop_padding=0, flip=True))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(plain, same))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(plain, changed))


def test_normalisation() -> None:
    x = torch.randint(0, 256, (9, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    loader = make_loader(x, torch.arange(9), 9, mean=mean, std=std, shuffle=False)
    (inputs, _), = list(loader)
    mean64 = torch.tensor(mean, dtype=torch.float64)[:, None, None]  # (C, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float64)[:, None, None]  # (C, 1, 1)
    expected = (x.double() / 255 - mean64) / std64
    assert inputs.dtype == torch.float32 and torch.allclose(inputs.double(), expected, atol=1e-6)
    assert torch.allclose(normalize(to_unit(x), mean, std), inputs)
    assert torch.allclose(loader.normalize(to_unit(x)), inputs)
    assert to_unit(x).max() <= 1.0 and to_unit(torch.tensor([255], dtype=torch.uint8)).item() == 1.0


def test_loader_rejects_bad_inputs() -> None:
    x, y = indexed_images(10)
    with pytest.raises(ValueError, match="uint8"):
        make_loader(x.float(), y, 4)
    with pytest.raises(ValueError, match="one per channel"):
        make_loader(x, y, 4, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(x, y, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda() -> None:
    splits = load_dataset("digits", {"image_size": 16}, "unused").to("cuda")
    assert splits.train_x.is_cuda and splits.val_y.is_cuda
    generator = torch.Generator(device="cuda").manual_seed(0)
    loader = DeviceLoader(
        splits.train_x, splits.train_y, 100, mean=splits.mean, std=splits.std,
        shuffle=True, augment=True, generator=generator,
    )
    state = generator.get_state()
    run_a = list(loader)
    generator.set_state(state)
    run_b = list(loader)
    assert sum(len(b) for _, b in run_a) == splits.n_train
    for (xa, ya), (xb, yb) in zip(run_a, run_b, strict=True):
        assert xa.is_cuda and torch.equal(xa, xb) and torch.equal(ya, yb)
    x = splits.train_x[:8]
    offsets = torch.randint(0, 9, (2, 8), device="cuda")
    out = crop(x, 4, offsets[0], offsets[1]).cpu()
    for i in range(8):
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(out[i], reference_crop(x[i].cpu(), 4, dy, dx))
    with pytest.raises(ValueError, match="generator"):
        DeviceLoader(splits.train_x, splits.train_y, 10, mean=splits.mean, std=splits.std,
                     shuffle=True, augment=False, generator=torch.Generator())
