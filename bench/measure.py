"""The one module that measures: memory (bytes, MiB), FLOPs and time.

- Model-state memory: `param_bytes`, `grad_bytes`, `optimizer_state_bytes`.
- Device-independent activation memory: `saved_activation_bytes` counts the bytes autograd saves
  for backward (via `torch.autograd.graph.saved_tensors_hooks`), deduplicated by storage,
  parameters excluded. It is the memory figure CI can check on CPU.
- Accelerator memory: `AcceleratorPeak` (peak allocated / reserved MiB, None on CPU);
  `resident_bytes` (the device-resident dataset) and `without_resident` give the paper-comparable
  peaks `peak_train_mib` / `peak_eval_mib` (a paper's training process keeps its data on the host).
- FLOPs: `count_flops` with `torch.utils.flop_counter.FlopCounterMode`, with the weight-gradient
  count of grouped/depthwise convolutions corrected (torch's formula overcounts it by `groups`).
- Time: `sync`, `Stopwatch` (synchronise before reading the clock).

Measurements never perturb training: `count_flops` and `activation_bytes_of_step` restore the
model's gradients, buffers (BatchNorm running statistics) and the RNG state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

MIB = 2**20  # bytes per MiB

LossFn = Callable[[Tensor, Tensor], Tensor]


# --- model-state memory ---------------------------------------------------------------------


def _tensor_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def param_bytes(model: nn.Module) -> int:
    """Bytes of all parameters (trainable or not), each parameter counted once."""
    return sum(_tensor_bytes(p) for p in model.parameters())


def grad_bytes(model: nn.Module) -> int:
    """Bytes the gradients of the trainable parameters take (same dtype and size as each)."""
    return sum(_tensor_bytes(p) for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in `optimizer.state` (momentum buffers, Adam moments, steps, ...)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                total += _tensor_bytes(value)
    return total


# --- activation memory (saved for backward) ---------------------------------------------------


def _storage_key(t: Tensor) -> tuple[str, int] | None:
    """(device, address) of t's storage; None for tensors without a plain storage."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested, functional wrappers
        return None
    return (str(t.device), storage.data_ptr())


class _SavedTally:
    """Live deduplicated bytes of saved tensors, and their peak.

    Each saved tensor is packed in a `_Saved` holder; the holder is released when autograd
    frees the saved tensor (backward without retain_graph, or the graph being dropped), which
    lowers the live count of its storage. Storages are counted once however many saved tensors
    (views, in-place results) share them.
    """

    def __init__(self, exclude: Iterable[Tensor]) -> None:
        self.excluded = {k for t in exclude if (k := _storage_key(t)) is not None}
        self.refs: dict[tuple[str, int], int] = {}  # storage key -> live saved tensors
        self.sizes: dict[tuple[str, int], int] = {}  # storage key -> bytes
        self.live_bytes = 0
        self.peak_bytes = 0

    def add(self, t: Tensor) -> tuple[str, int] | None:
        """Count t's storage if it is new; return the key to release, None if not counted."""
        key = _storage_key(t)
        if key is None:  # no plain storage (sparse, nested): its own elements, unshared
            key, size = ("unshared", id(t)), _tensor_bytes(t)
        elif key in self.excluded or key[1] == 0:  # parameters (or buffers); empty storages
            return None
        else:
            size = t.untyped_storage().nbytes()
        if key not in self.refs:
            self.refs[key] = 0
            self.sizes[key] = size
            self.live_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.refs[key] += 1
        return key

    def release(self, key: tuple[str, int]) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live_bytes -= self.sizes.pop(key)


class _Saved:
    """What autograd keeps instead of a saved tensor: the tensor plus a release callback."""

    __slots__ = ("tensor", "tally", "key")

    def __init__(self, tensor: Tensor, tally: _SavedTally) -> None:
        self.tensor = tensor  # keeps the storage (and an "unshared" id) alive while counted
        self.tally = tally
        self.key = tally.add(tensor)

    def __del__(self) -> None:
        if self.key is not None:
            self.tally.release(self.key)


def saved_activation_bytes(fn: Callable[[], object], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes saved for backward while `fn()` runs, deduplicated by storage.

    `fn` does a forward + loss and may do the backward too. A tensor whose storage is the storage
    of a tensor in `exclude` (pass the model's parameters) is not counted. Returns the peak over
    the run of the bytes of live saved storages: for a forward + loss this is the total saved;
    a backward (or a dropped graph) frees saved tensors, so micro-batched steps count their
    largest micro-batch, not the sum.
    """
    tally = _SavedTally(exclude)

    def pack(t: Tensor) -> _Saved:
        # Keep t.detach(), not t: a saved *output* still carries its grad_fn, which owns this
        # holder, and that cycle runs through C++ where gc cannot break it (a leak when no
        # backward runs). Detaching is lossless: autograd re-attaches grad_fn on unpack.
        return _Saved(t.detach(), tally)

    def unpack(saved: _Saved) -> Tensor:
        return saved.tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        fn()
    return tally.peak_bytes


@contextmanager
def _preserved_state(model: nn.Module, device: torch.device | None) -> Iterator[None]:
    """Restore the model's gradients, buffers and the RNG streams after the block."""
    grads = {p: p.grad for p in model.parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            for p in grads:
                p.grad = None
            yield
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in buffers:
                        b.copy_(buffers[name])
            for p, g in grads.items():
                p.grad = g


def activation_bytes_of_step(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn = F.cross_entropy
) -> int:
    """Bytes saved for backward by one forward + loss (no backward, no optimizer step).

    Parameters and buffers (e.g. BatchNorm running statistics) are excluded.
    The graph is freed before returning; gradients, buffers and RNG state are left as they were.
    """

    def step() -> None:
        loss = loss_fn(model(inputs), targets)
        del loss  # frees the graph and with it the saved tensors

    # Buffers are excluded too: BatchNorm saves its running statistics, which are model state.
    state = [*model.parameters(), *model.buffers()]
    with _preserved_state(model, inputs.device):
        return saved_activation_bytes(step, exclude=state)


# --- FLOPs ---------------------------------------------------------------------------------


class FlopCounts(NamedTuple):
    """FLOPs of one training step on one batch (multiply-add = 2 FLOPs, as torch counts).

    `backward` includes `weight_grad` (the part that computes parameter gradients of convs and
    linear layers); the rest of `backward` is input gradients.
    """

    forward: int
    backward: int
    weight_grad: int


def _prod(xs: Iterable[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def conv_backward_flops(
    grad_out_shape: Any,
    x_shape: Any,
    w_shape: Any,
    transposed: bool,
    groups: int,
    output_mask: Any,
) -> tuple[int, int]:
    """(grad_input FLOPs, grad_weight FLOPs) of `aten.convolution_backward`, groups-aware.

    Non-transposed conv, weight (Cout, Cin/groups, kh, kw), grad_out (N, Cout, Hout, Wout):
    both parts are 2 * N * Cout * (Cin/groups) * kh * kw * Hout * Wout, the cost of the forward.
    Transposed conv, weight (Cin, Cout/groups, kh, kw): both parts are 2 * N * Cin *
    (Cout/groups) * kh * kw * Hin * Win, with Hin, Win the spatial size of its input x.
    A part not requested by `output_mask` costs nothing.
    """
    per_position = 2 * _prod(w_shape)  # 2 * C_a * (C_b / groups) * kh * kw
    spatial = x_shape[2:] if transposed else grad_out_shape[2:]
    flops = per_position * int(x_shape[0]) * _prod(spatial)
    return (flops if output_mask[0] else 0, flops if output_mask[1] else 0)


def _grouped_conv_backward_formula(
    weight_grad_tally: list[int],
) -> Callable[..., int]:
    """A FlopCounterMode formula for `aten.convolution_backward` that adds the weight-gradient
    part to `weight_grad_tally[0]`. torch's own formula counts the weight gradient as an
    ungrouped conv, `groups` times too high (torch 2.15)."""

    def formula(
        grad_out_shape: Any,
        x_shape: Any,
        w_shape: Any,
        _bias: Any,
        _stride: Any,
        _padding: Any,
        _dilation: Any,
        transposed: bool,
        _output_padding: Any,
        groups: int,
        output_mask: Any,
        out_shape: Any = None,
        **kwargs: Any,
    ) -> int:
        grad_input, grad_weight = conv_backward_flops(
            grad_out_shape, x_shape, w_shape, transposed, groups, output_mask
        )
        weight_grad_tally[0] += grad_weight
        return grad_input + grad_weight

    return formula


@contextmanager
def _linear_weight_grad_hooks(model: nn.Module, tally: list[int]) -> Iterator[None]:
    """Add 2 * rows * in * out to tally[0] per forward of an nn.Linear with a trainable weight."""

    def hook(module: nn.Module, args: tuple[Tensor, ...], _out: Tensor) -> None:
        assert isinstance(module, nn.Linear)
        rows = args[0].numel() // module.in_features
        tally[0] += 2 * rows * module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.weight.requires_grad
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def count_flops(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    corrected: bool = True,
) -> FlopCounts:
    """FLOPs of one forward + loss and one backward on this batch (per batch, not per image).

    The model's gradients, buffers and the RNG state are restored afterwards. `corrected=False`
    uses torch's own convolution-backward formula (for comparison only; weight_grad then counts
    linear layers only).
    """
    conv_weight_grad = [0]
    linear_weight_grad = [0]
    mapping = (
        {torch.ops.aten.convolution_backward: _grouped_conv_backward_formula(conv_weight_grad)}
        if corrected
        else {}
    )
    with _preserved_state(model, inputs.device):
        with _linear_weight_grad_hooks(model, linear_weight_grad):
            with FlopCounterMode(display=False, custom_mapping=mapping) as forward_counter:
                loss = loss_fn(model(inputs), targets)
        with FlopCounterMode(display=False, custom_mapping=mapping) as backward_counter:
            loss.backward()
        del loss
    return FlopCounts(
        forward=forward_counter.get_total_flops(),
        backward=backward_counter.get_total_flops(),
        weight_grad=conv_weight_grad[0] + linear_weight_grad[0],
    )


def per_image(counts: FlopCounts, batch: int) -> dict[str, float]:
    """The contract's compute fields: FLOPs per image from per-batch counts."""
    return {
        "forward_flops_per_image": counts.forward / batch,
        "backward_flops_per_image": counts.backward / batch,
        "weight_grad_flops_per_image": counts.weight_grad / batch,
    }


# --- accelerator memory and time -----------------------------------------------------------


def _as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def sync(device: torch.device | str) -> None:
    """Wait for queued work on `device` (CUDA); nothing to do on CPU."""
    device = _as_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AcceleratorPeak:
    """Peak accelerator memory between `start()` and `stop()`, in MiB; (None, None) on CPU."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = _as_device(device)

    @property
    def active(self) -> bool:
        return self.device.type == "cuda"

    def start(self) -> None:
        """Reset the peak statistics (after finishing queued work)."""
        if self.active:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> tuple[float | None, float | None]:
        """(peak_alloc_mib, peak_reserved_mib) since `start()`."""
        if not self.active:
            return None, None
        torch.cuda.synchronize(self.device)
        return (
            torch.cuda.max_memory_allocated(self.device) / MIB,
            torch.cuda.max_memory_reserved(self.device) / MIB,
        )


def resident_bytes(tensors: Iterable[Tensor], device: torch.device | str) -> int:
    """Bytes of the tensors that live on `device` (e.g. a dataset moved there once), each
    storage counted once."""
    device = _as_device(device)
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t.device.type != device.type or device.index not in (None, t.device.index):
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def without_resident(peak_mib: float | None, resident: int) -> float | None:
    """A measured peak (MiB) minus `resident` bytes (the device-resident dataset), in MiB:
    the figure of a process that keeps its data on the host. None when nothing was measured."""
    if peak_mib is None:
        return None
    return peak_mib - resident / MIB


class Stopwatch:
    """Wall time in seconds, synchronising `device` before each clock read.

    Use as `with Stopwatch(device) as sw: ...` then `sw.elapsed_s`, or `start()` / `stop()`.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = _as_device(device)
        self.elapsed_s = 0.0
        self._t0_s: float | None = None

    def start(self) -> Stopwatch:
        sync(self.device)
        self._t0_s = time.perf_counter()
        return self

    def stop(self) -> float:
        """Stop and return the seconds since `start()` (also kept in `elapsed_s`)."""
        if self._t0_s is None:
            raise RuntimeError("Stopwatch.stop() called before start()")
        sync(self.device)
        self.elapsed_s = time.perf_counter() - self._t0_s
        self._t0_s = None
        return self.elapsed_s

    def __enter__(self) -> Stopwatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cudnn_flags() -> dict[str, bool]:
    """The cuDNN settings that affect speed and reproducibility, for provenance."""
    return {
        "benchmark": bool(torch.backends.cudnn.benchmark),
        "deterministic": bool(torch.backends.cudnn.deterministic),
    }
