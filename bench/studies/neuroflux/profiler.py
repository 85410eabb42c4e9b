"""The NeuroFlux profiler: memory of one training step of a unit with its head, fitted as a*b + c.

See the study README and ../shared/METHODS.md (study `neuroflux`)."""

import copy
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
