"""The NeuroFlux partitioner: contiguous blocks of units and the batch size of each under a budget.

A block's memory is additive over its units (each unit with its auxiliary head, as profiled:
a*b + c); its batch is the largest power of two in [min_batch, max_batch] whose modelled memory
fits the budget minus `slack`. b*(u) is that batch for unit u alone.

Two rules (method option `partition`):

``greedy`` (default; METHODS.md in this folder)
    the first-unit rule: unit l joins the current block B when batch(B + l) >= b*(first unit of
    B) / 2, otherwise l starts a new block. Comparing with the block's *current* batch instead
    (the first implementation) lets the batch halve again and again: the first block swallows
    the network at a small batch and NeuroFlux is slower than backprop by construction.
``optimal`` [ours: the cost model]
    the contiguous cuts that minimise the modelled epoch time sum_B (N / b_B) x t_B(b_B) by
    dynamic programming over the cut points. t_B(b) is the block's step time at batch b: the sum
    of its units' profiled step times (each fitted as alpha*b + beta) plus reading the block's
    input (b samples) from the previous block's cache, `read_s_per_byte` per byte of fp16
    input (the first block reads the images, the same for every partition). Without the read
    term every unit would be its own block (the batch never drops when a block is split).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from bench import measure
from bench.errors import BudgetError, ConfigError
from bench.studies.neuroflux.profiler import UnitProfile

RULES = ("greedy", "optimal")
MAX_BATCH = 1024  # the batch cap of a block (METHODS.md)

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
                  max_batch: int = MAX_BATCH, min_batch: int = 8) -> int | None:
    """Largest power of two b in [min_batch, max_batch] with a*b + c <= budget*(1-slack)."""
    limit = budget_bytes * (1.0 - slack)
    for b in powers_of_two(min_batch, max_batch):
        if a * b + c <= limit:
            return b
    return None


class _Model:
    """Memory and batch of contiguous unit ranges under one budget."""

    def __init__(self, profiles: Sequence[UnitProfile], budget_bytes: float, slack: float,
                 max_batch: int, min_batch: int) -> None:
        self.profiles, self.budget = list(profiles), float(budget_bytes)
        self.slack, self.max_batch, self.min_batch = slack, max_batch, min_batch

    def batch(self, idx: Sequence[int]) -> int | None:
        a = sum(self.profiles[i].a_bytes_per_sample for i in idx)
        c = sum(self.profiles[i].c_bytes for i in idx)
        return largest_batch(a, c, self.budget, slack=self.slack, max_batch=self.max_batch,
                             min_batch=self.min_batch)

    def memory(self, idx: Sequence[int], b: int) -> float:
        return sum(self.profiles[i].memory(b) for i in idx)

    def block(self, idx: Sequence[int]) -> Block:
        b = self.batch(idx)
        assert b is not None
        return Block(list(idx), int(b), self.memory(idx, b))


def unit_batches(profiles: Sequence[UnitProfile], budget_bytes: float, *, slack: float = 0.05,
                 max_batch: int = MAX_BATCH, min_batch: int = 8) -> list[int | None]:
    """b*(u) of every unit: the largest batch at which it fits alone (None: not at min_batch)."""
    m = _Model(profiles, budget_bytes, slack, max_batch, min_batch)
    return [m.batch([i]) for i in range(len(profiles))]


def _check_units_fit(m: _Model, names: Sequence[str]) -> None:
    for i, p in enumerate(m.profiles):
        if m.batch([i]) is None:
            need = p.memory(m.min_batch) / measure.MIB
            limit = m.budget * (1 - m.slack) / measure.MIB
            raise BudgetError(
                f"memory budget {m.budget / measure.MIB:.1f} MiB is too small for NeuroFlux: "
                f"unit {i + 1} ({names[i]}) with its head needs {need:.2f} MiB at the smallest "
                f"batch {m.min_batch} (modelled), more than the budget minus {m.slack:.0%} slack "
                f"({limit:.2f} MiB); raise the budget or lower method option min_batch")


def partition_greedy(m: _Model) -> list[Block]:
    """The first-unit rule (module docstring)."""
    blocks: list[Block] = []
    cur = [0]
    first_bstar = m.batch([0])
    for i in range(1, len(m.profiles)):
        b = m.batch([*cur, i])
        if b is not None and b >= first_bstar / 2:  # type: ignore[operator]
            cur.append(i)
        else:
            blocks.append(m.block(cur))
            cur, first_bstar = [i], m.batch([i])
    blocks.append(m.block(cur))
    return blocks


def block_step_s(profiles: Sequence[UnitProfile], idx: Sequence[int], batch: int,
                 read_s_per_byte: float = 0.0) -> float:
    """Modelled seconds of one training step of units `idx` at `batch`: the units' fitted step
    times plus reading the block's input from the cache (none for the first block)."""
    t = sum(profiles[i].step_s(batch) for i in idx)
    first = profiles[idx[0]]
    if idx[0] > 0:
        t += read_s_per_byte * first.in_bytes_per_sample * batch
    return t


def modelled_epoch_s(profiles: Sequence[UnitProfile], blocks: Sequence[Block], n: int,
                     read_s_per_byte: float = 0.0) -> float:
    """sum_B (n / b_B) x t_B(b_B): one epoch of every block (module docstring)."""
    return sum(n / b.batch * block_step_s(profiles, b.units, b.batch, read_s_per_byte)
               for b in blocks)


def partition_optimal(m: _Model, n: int, read_s_per_byte: float) -> list[Block]:
    """Contiguous cuts minimising `modelled_epoch_s` (dynamic programming over prefixes)."""
    missing = [i + 1 for i, p in enumerate(m.profiles) if not p.times]
    if missing:
        raise ConfigError("partition 'optimal' needs the profiler's step times; unit(s) "
                          + ", ".join(map(str, missing)) + " have none")
    L = len(m.profiles)
    inf = float("inf")
    best = [0.0] + [inf] * L  # best[j]: units 0..j-1 partitioned
    cut = [0] * (L + 1)
    for j in range(1, L + 1):
        for i in range(j):
            if best[i] == inf:
                continue
            idx = list(range(i, j))
            b = m.batch(idx)
            if b is None:
                continue
            cost = best[i] + n / b * block_step_s(m.profiles, idx, b, read_s_per_byte)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    blocks, j = [], L
    while j > 0:
        blocks.append(m.block(list(range(cut[j], j))))
        j = cut[j]
    return blocks[::-1]


def partition(profiles: Sequence[UnitProfile], budget_bytes: float, *, rule: str = "greedy",
              slack: float = 0.05, max_batch: int = MAX_BATCH, min_batch: int = 8,
              names: Sequence[str] | None = None, n_samples: int = 1,
              read_s_per_byte: float = 0.0) -> list[Block]:
    """Contiguous blocks by `rule` (module docstring). Raises BudgetError naming the first unit
    that does not fit the budget even alone at `min_batch`. `n_samples` (the training images)
    and `read_s_per_byte` enter the `optimal` rule's cost only."""
    if not profiles:
        raise ValueError("partition: no units")
    if rule not in RULES:
        raise ConfigError(f"partition must be one of {', '.join(RULES)}, not {rule!r}")
    names = list(names) if names is not None else [f"unit{i + 1}" for i in range(len(profiles))]
    m = _Model(profiles, budget_bytes, slack, max_batch, min_batch)
    _check_units_fit(m, names)
    if rule == "optimal":
        return partition_optimal(m, n_samples, read_s_per_byte)
    return partition_greedy(m)
