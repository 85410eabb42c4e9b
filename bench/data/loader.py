"""Device-resident batches: slice, augment and normalise on the device the images live on.

No torch DataLoader and no per-image Python loop: the whole split sits on the device as uint8
(N, C, H, W); an epoch is one `torch.randperm` and a series of index slices, and augmentation
(random crop with zero padding, random horizontal flip) is vectorised over the batch, as in
airbench. Every random draw comes from one `torch.Generator` on the data's device, so saving
`generator.get_state()` at an epoch boundary and restoring it replays the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1] (a new tensor)."""
    return x.to(torch.float32) / 255.0


def _channel_tensor(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel constants as a float32 (1, C, 1, 1) tensor on `like`'s device."""
    t = torch.as_tensor(values, dtype=torch.float32, device=like.device)
    return t.reshape(1, -1, 1, 1)  # (1, C, 1, 1)


def normalize(
    x01: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """(x01 - mean) / std per channel; x01 is float (B, C, H, W) in [0, 1] pixel units."""
    if x01.dim() != 4 or x01.shape[1] != len(mean) or x01.shape[1] != len(std):
        raise ValueError(
            f"normalize: expected (B, C, H, W) with C = {len(mean)} channels, "
            f"got {tuple(x01.shape)}"
        )
    return (x01 - _channel_tensor(mean, x01)) / _channel_tensor(std, x01)


def crop(
    x: torch.Tensor, padding: int, offset_y: torch.Tensor, offset_x: torch.Tensor
) -> torch.Tensor:
    """Crop every image of x (B, C, H, W) from its zero-padded copy at its own offset.

    offset_y, offset_x: int64 (B,), in [0, 2 * padding]; offset (padding, padding) is the identity.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p), zeros outside
    device = x.device
    rows = offset_y[:, None] + torch.arange(h, device=device)  # (B, H) row in the padded image
    cols = offset_x[:, None] + torch.arange(w, device=device)  # (B, W) column in the padded image
    batch = torch.arange(b, device=device)[:, None, None, None]  # (B, 1, 1, 1)
    channel = torch.arange(c, device=device)[None, :, None, None]  # (1, C, 1, 1)
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding: per-image offsets drawn uniformly in [0, 2 * padding]."""
    if padding == 0:
        return x
    offsets = torch.randint(
        0, 2 * padding + 1, (2, x.shape[0]), device=x.device, generator=generator
    )  # (2, B): row offsets, column offsets
    return crop(x, padding, offsets[0], offsets[1])


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of x (B, C, H, W) left-right with probability 1/2."""
    flip_mask = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5  # (B,)
    return torch.where(flip_mask[:, None, None, None], x.flip(3), x)


class DeviceLoader:
    """Iterate (inputs float32 normalised (B, C, H, W), labels int64 (B,)) over device tensors.

    x: uint8 (N, C, H, W) pixels 0..255 and y: int64 (N,), both already on the training device.
    mean, std: per channel, in [0, 1] pixel units. generator: on x's device; it drives the
    shuffle and the augmentation (None uses torch's default generator, which a checkpoint does
    not capture). The last, smaller batch is kept unless drop_last.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        shuffle: bool,
        augment: bool,
        crop_padding: int = 4,
        flip: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(
                f"DeviceLoader: x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"DeviceLoader: y must be ({x.shape[0]},), got {tuple(y.shape)}")
        if y.device != x.device:
            raise ValueError(f"DeviceLoader: x is on {x.device} but y is on {y.device}")
        if batch_size <= 0:
            raise ValueError(f"DeviceLoader: batch_size must be positive, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"DeviceLoader: crop_padding must be >= 0 pixels, got {crop_padding}")
        if len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise ValueError(
                f"DeviceLoader: mean/std need {x.shape[1]} values (one per channel), "
                f"got {len(mean)}/{len(std)}"
            )
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(
                f"DeviceLoader: the generator is on {generator.device} but the data is on "
                f"{x.device}; create it with torch.Generator(device=x.device)"
            )
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.mean = _channel_tensor(mean, x)  # (1, C, 1, 1)
        self.std = _channel_tensor(std, x)  # (1, C, 1, 1)
        self.shuffle = shuffle
        self.augment = augment
        self.crop_padding = crop_padding
        self.flip = flip
        self.generator = generator
        self.drop_last = drop_last

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def n_images(self) -> int:
        """Images per epoch (all of them, unless drop_last drops the last partial batch)."""
        n = int(self.x.shape[0])
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-self.n_images // self.batch_size)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """(x01 - mean) / std with this loader's constants; x01 float (B, C, H, W) in [0, 1]."""
        return (x01 - self.mean) / self.std

    def augment_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop (if crop_padding > 0) then random flip (if flip) of uint8 (B, C, H, W)."""
        x = random_crop(x, self.crop_padding, self.generator)
        if self.flip:
            x = random_flip(x, self.generator)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = None
        if self.shuffle:
            order = torch.randperm(self.x.shape[0], device=self.device, generator=self.generator)
        for start in range(0, self.n_images, self.batch_size):
            stop = min(start + self.batch_size, self.n_images)
            if order is None:
                xb, yb = self.x[start:stop], self.y[start:stop]  # (B, C, H, W), (B,)
            else:
                index = order[start:stop]
                xb, yb = self.x[index], self.y[index]  # (B, C, H, W), (B,)
            if self.augment:
                xb = self.augment_batch(xb)
            yield self.normalize(to_unit(xb)), yb
