"""The NeuroFlux worker: activation cache, data sources, running and training one block.

See README.md and METHODS.md in this folder."""

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import measure
from bench.data import DatasetSplits
from bench.data.loader import DeviceLoader
from bench.studies.neuroflux.split import eval_mode

# ----------------------------------------------------------------------------- data sources + cache


class ActivationCache:
    """fp16 outputs (N, C, H, W) of a block over one split: host memory, or a disk memmap when
    `path` is given. `read(index)` returns a float16 CPU tensor."""

    def __init__(self, n: int, shape: Sequence[int], path: Path | None = None) -> None:
        self.shape = (int(n), *[int(s) for s in shape])
        self.path = Path(path) if path is not None else None
        self._mm: np.memmap | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._mm = np.memmap(self.path, dtype=np.float16, mode="w+", shape=self.shape)
            self.data = torch.from_numpy(self._mm)
        else:
            self.data = torch.empty(self.shape, dtype=torch.float16)

    @property
    def storage(self) -> str:
        return "disk" if self.path is not None else "host"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 2

    def write(self, start: int, x: Tensor) -> None:
        self.data[start:start + x.shape[0]] = x.detach().to("cpu", torch.float16)

    def read(self, index: slice | Tensor) -> Tensor:
        return self.data[index]

    def flush(self) -> None:
        if self._mm is not None:
            self._mm.flush()

    def close(self) -> None:
        """Release the memory; delete the memmap file."""
        self.data = torch.empty(0, dtype=torch.float16)
        if self._mm is not None:
            del self._mm
            self._mm = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def cache_bytes(n: int, shape: Sequence[int]) -> int:
    return int(n) * int(np.prod(shape)) * 2


def device_data_mib(data: DatasetSplits, extra: Sequence[Tensor] = ()) -> float:
    """MiB of the dataset's tensors (and `extra`) that live on an accelerator (0 on CPU): part
    of the allocator's peak that the memory budget does not bound."""
    tensors = (data.train_x, data.train_y, data.val_x, data.val_y, *extra)
    return sum(t.numel() * t.element_size() for t in tensors
               if t.device.type != "cpu") / measure.MIB


class ImageSource:
    """Normalised images of a uint8 split on the device (the first block's input)."""

    def __init__(self, x: Tensor, y: Tensor, mean: Sequence[float], std: Sequence[float], *,
                 augment: bool = False, crop_padding: int = 4, flip: bool = True,
                 generator: torch.Generator | None = None) -> None:
        self.x, self.y, self.mean, self.std = x, y, mean, std
        self.augment, self.crop_padding, self.flip = augment, crop_padding, flip
        self.generator = generator

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch: int, shuffle: bool) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled + augmented (training) or in order, plain (evaluation, caching)."""
        loader = DeviceLoader(self.x, self.y, batch, mean=self.mean, std=self.std, shuffle=shuffle,
                              augment=self.augment and shuffle, crop_padding=self.crop_padding,
                              flip=self.flip, generator=self.generator if shuffle else None)
        return iter(loader)


class CacheSource:
    """A previous block's cached outputs (float32 batches on `device`) with the split's labels."""

    def __init__(self, cache: ActivationCache, y: Tensor, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        self.cache, self.y, self.device, self.generator = cache, y, torch.device(device), generator

    @property
    def n(self) -> int:
        return int(self.cache.shape[0])

    def batches(self, batch: int, shuffle: bool) -> Iterator[tuple[Tensor, Tensor]]:
        order = None
        if shuffle:
            gen_device = self.generator.device if self.generator is not None else self.y.device
            order = torch.randperm(self.n, device=gen_device, generator=self.generator).cpu()
        for start in range(0, self.n, batch):
            stop = min(start + batch, self.n)
            if order is None:
                xb, yb = self.cache.read(slice(start, stop)), self.y[start:stop]
            else:
                idx = order[start:stop]
                xb, yb = self.cache.read(idx), self.y[idx.to(self.y.device)]
            yield xb.to(self.device, non_blocking=True).float(), yb


Source = ImageSource | CacheSource


def run_block(units: Sequence[nn.Module], heads: Sequence[nn.Module] | None, source: Source,
              batch: int, device: torch.device, cache: ActivationCache | None = None
              ) -> list[tuple[float, float]]:
    """One pass (eval mode, no grad, in order, no augmentation) of `units` over `source`.

    Writes the last unit's outputs into `cache` (if given) and returns each head's
    (mean cross-entropy, accuracy) over the split (empty when `heads` is None)."""
    n_heads = len(heads) if heads is not None else 0
    loss_sum = [torch.zeros((), device=device) for _ in range(n_heads)]
    correct = [torch.zeros((), device=device, dtype=torch.long) for _ in range(n_heads)]
    seen = 0
    start = 0
    modules = [*units, *(heads or [])]
    with torch.no_grad(), eval_mode(modules):
        for x, y in source.batches(batch, shuffle=False):
            for i, u in enumerate(units):
                x = u(x)
                if heads is not None:
                    logits = heads[i](x)
                    loss_sum[i] += F.cross_entropy(logits.float(), y, reduction="sum")
                    correct[i] += (logits.argmax(1) == y).sum()
            if cache is not None:
                cache.write(start, x)
            start += x.shape[0]
            seen += int(y.shape[0])
    if cache is not None:
        cache.flush()
    seen = max(seen, 1)
    return [(loss_sum[i].item() / seen, correct[i].item() / seen) for i in range(n_heads)]


def train_block_epoch(units: Sequence[nn.Module], heads: Sequence[nn.Module],
                      optimizer: torch.optim.Optimizer, source: Source, batch: int, *,
                      set_lr: Callable[[float], None] | None = None,
                      label_smoothing: float = 0.0, measure_first_step: bool = True
                      ) -> dict[str, Any]:
    """One epoch of a block: each unit learns from its own head's loss on a detached input.

    The local losses are summed and back-propagated once (the inputs are detached between
    units, so each unit's gradient is its own local gradient; all the block's activations are
    alive at once, which is what the additive memory model assumes). Returns the last unit's
    head train loss/accuracy, the images seen, and the bytes saved for backward in the first step.
    """
    modules = [*units, *heads]
    for m in modules:
        m.train()
    state = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    n_steps = max(1, -(-source.n // batch))
    device = next(iter(units[0].parameters())).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    saved_bytes: int | None = None
    for step, (x, y) in enumerate(source.batches(batch, shuffle=True)):
        if set_lr is not None:
            set_lr(step / n_steps)
        out: dict[str, Tensor] = {}

        def one_step(x: Tensor = x, y: Tensor = y) -> None:
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            h = x
            for unit, head in zip(units, heads, strict=True):
                h = unit(h.detach())
                logits = head(h)
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                total = total + loss
            total.backward()
            optimizer.step()
            out["loss"], out["logits"] = loss.detach(), logits.detach()

        if step == 0 and measure_first_step:
            saved_bytes = measure.saved_activation_bytes(one_step, exclude=state)
        else:
            one_step()
        b = int(y.shape[0])
        loss_sum += out["loss"].float() * b
        correct += (out["logits"].argmax(1) == y).sum()
        seen += b
    seen_ = max(seen, 1)
    return {"train_loss": loss_sum.item() / seen_, "train_acc": correct.item() / seen_,
            "images": seen, "saved_bytes": saved_bytes}
