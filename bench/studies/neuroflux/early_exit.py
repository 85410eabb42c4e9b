"""Early exit of NeuroFlux: choosing the exit head, the exit model, its size and throughput.

See README.md and METHODS.md in this folder."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from bench import measure
from bench.errors import ConfigError
from bench.studies.neuroflux.split import eval_mode

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
