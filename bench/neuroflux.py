"""NeuroFlux building blocks (study `neuroflux`; ../shared/METHODS.md, seed 003).

Block-wise local learning under a memory budget:

- **Units** (`split_units`, `split_named_units`): each conv-BN-ReLU of a VGG's `features` (a
  following max-pool attaches to it); the stem and each BasicBlock of a ResNet-18. Units are the
  model's own modules (shared, not copied), so training a unit trains the model.
- **Adaptive auxiliary heads** (`AuxHead`, `head_filters`, `build_heads`): every unit but the
  last gets conv3x3 (C -> F) + BN + ReLU + adaptive avg-pool 2x2 + linear (4F -> classes) with
  F = clip(8192 // (H*W), 8, C) for the unit's output resolution H x W; when C < 8 (very narrow
  models) F = C. The last unit's head is the model's own `pool` + `fc`.
- **Profiler** (`profile_units`, `profile_model`, `UnitProfile`): the memory of one training step
  of a unit with its head as a function of the batch size, fitted as a*b + c by least squares
  (R^2 recorded). On CUDA: `torch.cuda.max_memory_allocated` around a few steps, minus the memory
  allocated before the unit's copy existed (so params, grads, optimizer state, the input batch and
  the activations are counted, the resident dataset is not). On CPU (and with mode "saved"): the
  device-independent measure, bytes saved for backward (`measure.saved_activation_bytes`) plus
  param + grad + optimizer-state bytes. Profiling works on deep copies: the run's weights, BN
  statistics and RNG streams are untouched.
- **Partitioner** (`partition`, `largest_batch`, `Block`): greedy contiguous blocks with an
  additive memory model; a block's batch is the largest power of two in [min_batch, max_batch]
  whose modelled memory fits budget * (1 - slack); a unit joins the current block unless the
  block's batch would drop by more than `max_drop` (2x); a unit that does not fit even at
  `min_batch` alone is a `BudgetError` naming it.
- **Activation cache** (`ActivationCache`, `ImageSource`, `CacheSource`, `run_block`): after a
  block is trained, its outputs over the train and validation splits (eval mode, no grad, no
  augmentation) are stored as fp16 on the host, or in a `numpy.memmap` file when they exceed the
  host limit; the next block reads them and earlier blocks are never run again.
- **Early exit** (`select_exit`, `ExitModel`, `count_params`, `measure_throughput`).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench import measure
from bench.data.loader import DeviceLoader
from bench.errors import BudgetError, ConfigError

SUPPORTED_MODELS = ("vgg16", "vgg19", "resnet18_cifar")
DEFAULT_PROFILE_BATCHES = (8, 16, 32, 64, 128)
R2_MIN = 0.99  # the profiler's linear model is checked against this (a warning, not an error)


# ----------------------------------------------------------------------------- units


def split_named_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, unit) in forward order. VGG: one `nn.Sequential(conv, bn, relu[, maxpool])` per conv
    of `features`, named by the conv's index in `features` ("features.0"); ResNet: "stem" and
    each basic block ("layer1.0", ...). The final head (`model.pool`, `model.fc`) is not a unit."""
    features = getattr(model, "features", None)
    vgg_layers = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)
    if (isinstance(features, nn.Sequential) and hasattr(model, "fc")
            and all(isinstance(m, vgg_layers) for m in features)):
        units: list[tuple[str, list[nn.Module]]] = []
        for idx, module in enumerate(features):
            if isinstance(module, nn.Conv2d):
                units.append((f"features.{idx}", [module]))
            elif units:
                units[-1][1].append(module)  # BN, ReLU, and a max-pool attach to the last conv
            else:
                raise ConfigError(f"NeuroFlux cannot cut this VGG: a {type(module).__name__} "
                                  "comes before its first conv")
        return [(name, nn.Sequential(*mods)) for name, mods in units]
    names = ("stem", "layer1", "layer2", "layer3", "layer4")
    if all(hasattr(model, n) for n in names) and hasattr(model, "fc"):
        out: list[tuple[str, nn.Module]] = [("stem", model.stem)]
        for n in names[1:]:
            out += [(f"{n}.{i}", block) for i, block in enumerate(getattr(model, n))]
        return out
    raise ConfigError(f"NeuroFlux cannot cut a {type(model).__name__} into units; supported "
                      f"models: {', '.join(SUPPORTED_MODELS)}")


def split_units(model: nn.Module) -> list[nn.Module]:
    """The model's units in forward order (see `split_named_units`)."""
    return [u for _, u in split_named_units(model)]


def final_head(model: nn.Module) -> nn.Module:
    """The model's own classifier after the last unit: `pool` then `fc` (shared modules)."""
    return nn.Sequential(model.pool, model.fc)


@contextmanager
def eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Put modules in eval mode; restore every submodule's training flag afterwards."""
    flags = [(m, m.training) for mod in modules for m in mod.modules()]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def unit_output_shapes(units: Sequence[nn.Module], in_shape: Sequence[int],
                       device: torch.device | str = "cpu") -> list[tuple[int, int, int]]:
    """(C, H, W) of each unit's output for one input of shape `in_shape` (C, H, W)."""
    shapes = []
    with torch.no_grad(), eval_mode(units):
        x = torch.zeros(1, *in_shape, device=device)
        for u in units:
            x = u(x)
            shapes.append(tuple(int(s) for s in x.shape[1:]))
    return shapes  # type: ignore[return-value]


# ----------------------------------------------------------------------------- heads


def head_filters(channels: int, height: int, width: int, numerator: int = 8192,
                 min_filters: int = 8) -> int:
    """F = clip(numerator // (H*W), min_filters, C); F = C when C < min_filters."""
    f = max(numerator // (height * width), min_filters)
    return int(min(f, channels))


class AuxHead(nn.Sequential):
    """conv3x3 (C -> F, no bias) + BN + ReLU + adaptive avg-pool 2x2 + flatten + linear."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int,
                 numerator: int = 8192, min_filters: int = 8) -> None:
        f = head_filters(channels, height, width, numerator, min_filters)
        super().__init__(OrderedDict([
            ("conv", nn.Conv2d(channels, f, 3, padding=1, bias=False)),
            ("bn", nn.BatchNorm2d(f)),
            ("relu", nn.ReLU(inplace=True)),
            ("pool", nn.AdaptiveAvgPool2d(2)),
            ("flatten", nn.Flatten(1)),
            ("fc", nn.Linear(4 * f, num_classes)),
        ]))
        self.filters = f


def build_heads(model: nn.Module, units: Sequence[nn.Module], in_shape: Sequence[int],
                num_classes: int, device: torch.device | str = "cpu", numerator: int = 8192,
                min_filters: int = 8) -> list[nn.Module]:
    """One head per unit: `AuxHead`s for all but the last; the model's pool + fc for the last."""
    shapes = unit_output_shapes(units, in_shape, device)
    heads: list[nn.Module] = [AuxHead(c, h, w, num_classes, numerator, min_filters).to(device)
                              for c, h, w in shapes[:-1]]
    heads.append(final_head(model))
    return heads


# ----------------------------------------------------------------------------- profiler


@dataclass
class UnitProfile:
    """Memory of a training step = a * batch + c (bytes), fitted on `points` (batch, bytes)."""

    a_bytes_per_sample: float
    c_bytes: float
    r2: float
    points: list[tuple[int, float]] = field(default_factory=list)

    def memory(self, batch: int) -> float:
        return self.a_bytes_per_sample * batch + self.c_bytes


def fit_linear(points: Sequence[tuple[int, float]]) -> tuple[float, float, float]:
    """Least-squares (a, c, R^2) of bytes = a * batch + c. R^2 = 1 when the data are constant."""
    b = np.asarray([p[0] for p in points], dtype=np.float64)
    m = np.asarray([p[1] for p in points], dtype=np.float64)
    if len(points) < 2:
        raise ValueError("fit_linear needs at least two (batch, bytes) points")
    a, c = np.polyfit(b, m, 1)
    ss_res = float(((m - (a * b + c)) ** 2).sum())
    ss_tot = float(((m - m.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return float(a), float(c), float(r2)


def _profile_mode(mode: str, device: torch.device) -> str:
    if mode == "auto":
        return "allocator" if device.type == "cuda" else "saved"
    if mode not in ("saved", "allocator"):
        raise ConfigError(f"profile mode must be auto, saved or allocator, not {mode!r}")
    if mode == "allocator" and device.type != "cuda":
        raise ConfigError("profile mode 'allocator' needs a CUDA device")
    return mode


def step_bytes(modules: Sequence[nn.Module], head: nn.Module, in_shape: Sequence[int],
               num_classes: int, batch: int, device: torch.device, *, momentum: float = 0.9,
               steps: int = 2, mode: str = "auto") -> float:
    """Memory (bytes) of SGD training steps of `modules` chained then `head`, at `batch`.

    Works on a deep copy under a forked RNG: the originals and the RNG streams are untouched."""
    mode = _profile_mode(mode, torch.device(device))
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        if mode == "allocator":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
        net = copy.deepcopy(nn.Sequential(*modules, head)).to(device).train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=momentum)
        x = torch.randn(batch, *in_shape, device=device)
        y = torch.randint(0, num_classes, (batch,), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        if mode == "allocator":
            torch.cuda.reset_peak_memory_stats(device)
            for _ in range(max(1, steps)):
                step()
            torch.cuda.synchronize(device)
            total = float(torch.cuda.max_memory_allocated(device) - base)
        else:
            state = [*net.parameters(), *net.buffers()]
            saved = measure.saved_activation_bytes(step, exclude=state)
            total = float(saved + measure.param_bytes(net) + measure.grad_bytes(net)
                          + measure.optimizer_state_bytes(opt))
        del net, opt, x, y
    return total


def profile_module(modules: Sequence[nn.Module], head: nn.Module, in_shape: Sequence[int],
                   num_classes: int, device: torch.device,
                   batch_sizes: Sequence[int] = DEFAULT_PROFILE_BATCHES, **kw: Any) -> UnitProfile:
    """Measure `step_bytes` at each batch size and fit a * b + c."""
    points = [(int(b), step_bytes(modules, head, in_shape, num_classes, int(b), device, **kw))
              for b in batch_sizes]
    a, c, r2 = fit_linear(points)
    return UnitProfile(a, c, r2, points)


def profile_units(units: Sequence[nn.Module], heads: Sequence[nn.Module],
                  in_shapes: Sequence[Sequence[int]], num_classes: int, device: torch.device,
                  batch_sizes: Sequence[int] = DEFAULT_PROFILE_BATCHES, **kw: Any
                  ) -> list[UnitProfile]:
    """One `UnitProfile` per unit with its head; `in_shapes[i]` is unit i's input (C, H, W)."""
    return [profile_module([u], h, s, num_classes, device, batch_sizes, **kw)
            for u, h, s in zip(units, heads, in_shapes, strict=True)]


def profile_model(model: nn.Module, in_shape: Sequence[int], num_classes: int,
                  device: torch.device, batch_sizes: Sequence[int] = DEFAULT_PROFILE_BATCHES,
                  **kw: Any) -> UnitProfile:
    """The whole model as one block (end-to-end backprop)."""
    return profile_module([model], nn.Identity(), in_shape, num_classes, device, batch_sizes, **kw)


# ----------------------------------------------------------------------------- partitioner


@dataclass
class Block:
    """Contiguous units (0-based indices), the block's batch and its modelled memory (bytes)."""

    units: list[int]
    batch: int
    memory_bytes: float


def powers_of_two(min_batch: int, max_batch: int) -> list[int]:
    """Powers of two in [min_batch, max_batch], largest first."""
    out = [2**k for k in range(0, 31) if min_batch <= 2**k <= max_batch]
    return sorted(out, reverse=True)


def largest_batch(a: float, c: float, budget_bytes: float, *, slack: float = 0.05,
                  max_batch: int = 512, min_batch: int = 8) -> int | None:
    """Largest power of two b in [min_batch, max_batch] with a*b + c <= budget*(1-slack)."""
    limit = budget_bytes * (1.0 - slack)
    for b in powers_of_two(min_batch, max_batch):
        if a * b + c <= limit:
            return b
    return None


def partition(profiles: Sequence[UnitProfile], budget_bytes: float, *, slack: float = 0.05,
              max_batch: int = 512, min_batch: int = 8, max_drop: float = 2.0,
              names: Sequence[str] | None = None) -> list[Block]:
    """Greedy contiguous blocks (see the module docstring). Raises BudgetError naming the first
    unit that does not fit the budget even alone at `min_batch`."""
    if not profiles:
        raise ValueError("partition: no units")
    names = list(names) if names is not None else [f"unit{i + 1}" for i in range(len(profiles))]

    def batch_of(idx: list[int]) -> int | None:
        a = sum(profiles[i].a_bytes_per_sample for i in idx)
        c = sum(profiles[i].c_bytes for i in idx)
        return largest_batch(a, c, budget_bytes, slack=slack, max_batch=max_batch,
                             min_batch=min_batch)

    def memory(idx: list[int], b: int) -> float:
        return sum(profiles[i].memory(b) for i in idx)

    for i, p in enumerate(profiles):
        if batch_of([i]) is None:
            need = p.memory(min_batch) / measure.MIB
            limit = budget_bytes * (1 - slack) / measure.MIB
            raise BudgetError(
                f"memory budget {budget_bytes / measure.MIB:.1f} MiB is too small for NeuroFlux: "
                f"unit {i + 1} ({names[i]}) with its head needs {need:.2f} MiB at the smallest "
                f"batch {min_batch} (modelled), more than the budget minus {slack:.0%} slack "
                f"({limit:.2f} MiB); raise the budget or lower method option min_batch")
    blocks: list[Block] = []
    cur, cur_b = [0], batch_of([0])
    for i in range(1, len(profiles)):
        cand = [*cur, i]
        b = batch_of(cand)
        if b is not None and b * max_drop >= cur_b:  # type: ignore[operator]
            cur, cur_b = cand, b
        else:
            blocks.append(Block(cur, int(cur_b), memory(cur, int(cur_b))))  # type: ignore[arg-type]
            cur, cur_b = [i], batch_of([i])
    blocks.append(Block(cur, int(cur_b), memory(cur, int(cur_b))))  # type: ignore[arg-type]
    return blocks


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


# ----------------------------------------------------------------------------- early exit


def select_exit(head_accs: Sequence[float], tolerance: float = 0.005) -> int:
    """0-based index of the shallowest head whose accuracy is within `tolerance` of the best."""
    if not head_accs:
        raise ValueError("select_exit: no head accuracies")
    best = max(head_accs)
    for i, acc in enumerate(head_accs):
        if acc >= best - tolerance - 1e-12:
            return i
    return len(head_accs) - 1  # unreachable


class ExitModel(nn.Sequential):
    """The deployed early-exit model: units 1..exit then that unit's head."""

    def __init__(self, units: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__(*units, head)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure_throughput(module: nn.Module, in_shape: Sequence[int], device: torch.device,
                       batch: int = 128, warmup: int = 3, iters: int = 10) -> float:
    """Inference images/s of `module` (eval mode, no grad) on a fixed random batch after
    `warmup` untimed forwards, timed with `measure.Stopwatch` over `iters` forwards."""
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    x = torch.randn(batch, *in_shape, device=device, generator=gen)
    with torch.no_grad(), eval_mode([module]):
        for _ in range(warmup):
            module(x)
        with measure.Stopwatch(device) as sw:
            for _ in range(iters):
                module(x)
    return batch * iters / max(sw.elapsed_s, 1e-9)


def lr_scale(batch: int, study_batch: int) -> float:
    """Linear scaling rule: lr * batch / study batch size."""
    return float(batch) / float(study_batch)


def budget_bytes_of(label: str) -> float | None:
    """Budget label -> bytes ('512MiB', '2GiB'); None for 'none'. Other units: ConfigError."""
    from bench.config import parse_budget

    parsed = parse_budget(label)
    if parsed is None:
        return None
    value, unit = parsed
    if unit == "MiB":
        return value * measure.MIB
    if unit == "GiB":
        return value * 1024 * measure.MIB
    raise ConfigError(f"budget '{label}' must be in MiB or GiB of accelerator memory")


def finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)
