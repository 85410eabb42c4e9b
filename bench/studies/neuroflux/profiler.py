"""The NeuroFlux profiler: memory of one training step of a unit with its head, fitted as a*b + c,
and the step's wall time, fitted as alpha*b + beta (the `optimal` partition's cost model).

See README.md and METHODS.md in this folder."""

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import measure
from bench.errors import ConfigError
from bench.studies.neuroflux.split import DEFAULT_PROFILE_BATCHES

# ----------------------------------------------------------------------------- profiler


@dataclass
class UnitProfile:
    """Memory of a training step = a * batch + c (bytes), fitted on `points` (batch, bytes);
    its wall time = alpha * batch + beta (seconds), fitted on `times` (batch, seconds; empty
    when not measured); `in_bytes_per_sample`: the unit's input per sample as an fp16 cache."""

    a_bytes_per_sample: float
    c_bytes: float
    r2: float
    points: list[tuple[int, float]] = field(default_factory=list)
    times: list[tuple[int, float]] = field(default_factory=list)
    in_bytes_per_sample: float = 0.0

    def memory(self, batch: int) -> float:
        return self.a_bytes_per_sample * batch + self.c_bytes

    def step_s(self, batch: int) -> float:
        """Modelled seconds of one training step at `batch`: least squares alpha*b + beta over
        `times` with beta >= 0; a fit whose slope is not positive (timing noise) falls back to
        proportional time at the fastest measured seconds per sample."""
        if not self.times:
            raise ValueError("step_s: the profile has no step times")
        per_sample = min(t / b for b, t in self.times)
        if len(self.times) == 1:
            return per_sample * batch
        alpha, beta, _ = fit_linear(self.times)
        if alpha <= 0:
            return per_sample * batch
        if beta < 0:
            alpha, beta = float(np.dot([b for b, _ in self.times], [t for _, t in self.times])
                                / np.dot([b for b, _ in self.times], [b for b, _ in self.times])), 0.0
        return alpha * batch + beta

    def to_dict(self) -> dict[str, Any]:
        return {"a_bytes_per_sample": self.a_bytes_per_sample, "c_bytes": self.c_bytes,
                "r2": self.r2, "points": [list(p) for p in self.points],
                "times": [list(t) for t in self.times],
                "in_bytes_per_sample": self.in_bytes_per_sample}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UnitProfile":
        return cls(float(d["a_bytes_per_sample"]), float(d["c_bytes"]), float(d["r2"]),
                   [(int(b), float(m)) for b, m in d["points"]],
                   [(int(b), float(t)) for b, t in d["times"]], float(d["in_bytes_per_sample"]))


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
    """Memory (bytes) of SGD training steps of `modules` chained then `head`, at `batch`."""
    return step_profile(modules, head, in_shape, num_classes, batch, device, momentum=momentum,
                        steps=steps, mode=mode)[0]


def step_profile(modules: Sequence[nn.Module], head: nn.Module, in_shape: Sequence[int],
                 num_classes: int, batch: int, device: torch.device, *, momentum: float = 0.9,
                 steps: int = 2, mode: str = "auto") -> tuple[float, float]:
    """(bytes, seconds) of SGD training steps of `modules` chained then `head`, at `batch`:
    the memory as `mode` measures it, and the median wall time of the steps after the first
    (at least one more step is run in saved mode, whose measured step runs under hooks).

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

        def timed() -> float:
            measure.sync(device)
            t0 = time.perf_counter()
            step()
            measure.sync(device)
            return time.perf_counter() - t0

        times: list[float] = []
        if mode == "allocator":
            torch.cuda.reset_peak_memory_stats(device)
            step()
            times = [timed() for _ in range(max(1, steps) - 1)]
            torch.cuda.synchronize(device)
            total = float(torch.cuda.max_memory_allocated(device) - base)
            if not times:
                times = [timed()]
        else:
            state = [*net.parameters(), *net.buffers()]
            saved = measure.saved_activation_bytes(step, exclude=state)
            total = float(saved + measure.param_bytes(net) + measure.grad_bytes(net)
                          + measure.optimizer_state_bytes(opt))
            times = [timed() for _ in range(max(1, steps - 1))]
        del net, opt, x, y
    return total, float(np.median(times))


def profile_module(modules: Sequence[nn.Module], head: nn.Module, in_shape: Sequence[int],
                   num_classes: int, device: torch.device,
                   batch_sizes: Sequence[int] = DEFAULT_PROFILE_BATCHES, **kw: Any) -> UnitProfile:
    """Measure `step_profile` at each batch size and fit a * b + c (and the step times)."""
    measured = [(int(b), *step_profile(modules, head, in_shape, num_classes, int(b), device, **kw))
                for b in batch_sizes]
    points = [(b, m) for b, m, _ in measured]
    a, c, r2 = fit_linear(points)
    return UnitProfile(a, c, r2, points, [(b, t) for b, _, t in measured],
                       2.0 * float(np.prod(in_shape)))


def cache_read_s_per_byte(device: torch.device, *, nbytes: int = 8 * 2**20, batch_bytes: int = 2**20,
                          repeats: int = 3) -> float:
    """Seconds per byte of reading a shuffled batch from an fp16 host cache onto `device` as
    float32 (what `worker.CacheSource` does each step): the fastest of `repeats` passes."""
    device = torch.device(device)
    cols = 512
    rows, per_batch = max(nbytes // (2 * cols), 2), max(batch_bytes // (2 * cols), 1)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(rows, cols, generator=gen).to(torch.float16)
    order = torch.randperm(rows, generator=gen)
    best = float("inf")
    for _ in range(repeats):
        measure.sync(device)
        t0 = time.perf_counter()
        for start in range(0, rows, per_batch):
            data[order[start:start + per_batch]].to(device, non_blocking=True).float()
        measure.sync(device)
        best = min(best, time.perf_counter() - t0)
    return best / (rows * cols * 2)


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
