"""The NeuroFlux partitioner: contiguous blocks of units and the batch size of each under a budget.

See the study README and ../shared/METHODS.md (study `neuroflux`)."""

from collections.abc import Sequence
from dataclasses import dataclass

from bench import measure
from bench.errors import BudgetError
from bench.studies.neuroflux.profiler import UnitProfile

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
