"""Mechanism checks of study `neuroflux` (METHODS.md in this folder; bench/checks.py).

One row per cell (method, group, seed):

``two_blocks`` (neuroflux)
    the partition has at least two blocks (one block is end-to-end training at a smaller batch
    than backprop's: the degenerate partition the first implementation produced).
``batch_non_decreasing`` (neuroflux)
    the blocks' batches never decrease with depth. Reported, not required by the claims: with
    the first-unit rule it cannot hold together with ``first_block_batch`` where the first
    unit is much lighter than the second (VGG's 3-channel stem conv before its 64-channel
    conv + pool: the stem alone gets a batch > 2x that of any block holding unit 2), which is
    the case at every binding budget of config/paper.yaml (README, "Mechanism checks"). The
    harmful decrease, to a batch at or below backprop's for most of the network, is what
    ``most_units_above_backprop`` catches.
``first_block_batch`` (neuroflux)
    the first block's batch is at least half the b* of its first unit (the first-unit rule:
    the batch did not halve again and again).
``most_units_above_backprop`` (neuroflux; required)
    more than half of the network's units train in blocks whose batch is above backprop's
    under the same budget and seed. The method's idea: a block holds part of the network, so
    under the same budget it fits a larger batch than end-to-end backprop, and that larger
    batch is where the speed-up comes from. A partition that trains most of the network at
    backprop's batch or below (unit 1 alone at 128, units 2-13 at 16, backprop at 32) passes
    ``two_blocks`` and ``first_block_batch`` but has no mechanism left to be faster. Units are
    counted, not weighted (a proxy for the network's share of the work). No row where the
    group has no ok backprop cell with a batch for that seed (the claims need its pairs
    anyway).
``blocks_vs_backprop`` (neuroflux)
    every block's batch is at least backprop's batch under the same budget and seed (reported,
    not required: the first-unit rule bounds a block's batch by half its first unit's b*, so a
    minority of units at half backprop's batch can be a legitimate greedy partition).
``peak_within_budget`` (both methods)
    on an accelerator, the allocator's peak less what the budget does not bound (the dataset
    on the device; for NeuroFlux also the units and heads outside the training block) stays
    within the budget. On CPU there is no accelerator peak: the *modelled* peak is compared
    with the budget instead, the largest of history ``modelled_peak_mib`` (NeuroFlux: each
    block's a·b + c from the saved-tensor profile at its batch; backprop: the harness's params
    + grads + optimizer state + saved activations of each epoch) and final
    ``modelled_batch_memory_mib`` (backprop: the profile's a·b + c at its batch); the row says
    "cpu: modelled peak ..." with its sources, and fails when that peak exceeds the budget or
    none was recorded. A cell at budget ``none`` passes (nothing to bound).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.checks import Check, axes_of, register_checks

STUDY = "neuroflux"
REQUIRED = ("two_blocks", "first_block_batch", "most_units_above_backprop",
            "peak_within_budget")  # what every claim requires (claims.yaml)


def _ints(text: Any) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()] if text not in (None, "") else []


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _budget_mib(r: Mapping[str, Any]) -> float | None:
    label = str(r["axes"]["budget"])
    for unit, scale in (("GiB", 1024.0), ("MiB", 1.0)):
        if label.endswith(unit):
            return float(label[: -len(unit)]) * scale
    return None


def _row(r: Mapping[str, Any], check: str, passed: bool, value: str, expected: str,
         detail: str = "") -> Check:
    return Check(check, **axes_of(r), passed=bool(passed), value=value, expected=expected,
                 detail=detail)


def _partition_rows(r: Mapping[str, Any], backprop_batch: int | None) -> list[Check]:
    f = r.get("final") or {}
    batches = _ints(f.get("block_batch_sizes"))
    units = str(f.get("block_units") or "")
    shown = f"{len(batches)} blocks, units {units.replace(',', ' | ')}, batches " \
            + ",".join(map(str, batches))
    rows = [
        _row(r, "two_blocks", len(batches) >= 2, shown, ">= 2 blocks"),
        _row(r, "batch_non_decreasing", all(a <= b for a, b in zip(batches, batches[1:]))
             and len(batches) >= 1, "batches " + ",".join(map(str, batches)),
             "non-decreasing with depth"),
    ]
    bstar = _num(f.get("first_block_bstar"))
    if batches and bstar is not None:
        rows.append(_row(r, "first_block_batch", batches[0] >= bstar / 2,
                         f"{batches[0]} (b* of unit {units.split('-')[0] or 1}: {int(bstar)})",
                         ">= b*/2 of its first unit"))
    else:
        rows.append(_row(r, "first_block_batch", False, "not recorded",
                         ">= b*/2 of its first unit"))
    if backprop_batch is not None:
        rows.append(_majority_row(r, batches, units, backprop_batch))
    if batches and backprop_batch is not None:
        rows.append(_row(r, "blocks_vs_backprop", min(batches) >= backprop_batch,
                         f"smallest {min(batches)}, first {batches[0]} vs backprop "
                         f"{backprop_batch}", "every block >= backprop's batch"))
    return rows


def _block_sizes(units: str) -> list[int] | None:
    """Units per block from final `block_units` ("1-2,3-6,..."; 1-based, inclusive), None when
    it is not that."""
    sizes = []
    for part in units.split(","):
        first, sep, last = part.strip().partition("-")
        if not (sep and first.isdigit() and last.isdigit()) or int(last) < int(first):
            return None
        sizes.append(int(last) - int(first) + 1)
    return sizes or None


def _majority_row(r: Mapping[str, Any], batches: list[int], units: str,
                  backprop_batch: int) -> Check:
    """`most_units_above_backprop`: more than half the units train above backprop's batch."""
    expected = f"> half the units in blocks at a batch above backprop's {backprop_batch}"
    sizes = _block_sizes(units)
    if not batches or sizes is None or len(sizes) != len(batches):
        return _row(r, "most_units_above_backprop", False,
                    f"partition not recorded (block_units {units!r}, block_batch_sizes "
                    f"{','.join(map(str, batches))!r})", expected)
    above = sum(n for n, b in zip(sizes, batches) if b > backprop_batch)
    total = sum(sizes)
    blocks = " | ".join(f"{u.strip()}@{b}" for u, b in zip(units.split(","), batches))
    return _row(r, "most_units_above_backprop", 2 * above > total,
                f"{above} of {total} units above backprop's {backprop_batch} ({blocks})",
                expected)


def _peak_row(r: Mapping[str, Any]) -> Check:
    f, hist = r.get("final") or {}, r.get("history") or []
    budget = _budget_mib(r)
    modelled = [v for h in hist if (v := _num(h.get("modelled_peak_mib"))) is not None]
    expected = f"<= {budget:g} MiB" if budget is not None else "<= budget"
    device = str((r.get("provenance") or {}).get("device") or "")
    if budget is None:
        none = str(r["axes"]["budget"]) == "none"
        return _row(r, "peak_within_budget", none, "no budget" if none else
                    f"budget {r['axes']['budget']!r} is not in MiB or GiB", expected)
    if not device.startswith("cuda"):
        # no accelerator peak on CPU: the modelled peak is what the budget bounds here
        sources = {"history modelled_peak_mib": max(modelled) if modelled else None,
                   "final modelled_batch_memory_mib": _num(f.get("modelled_batch_memory_mib"))}
        known = {k: v for k, v in sources.items() if v is not None}
        what = ("no accelerator: modelled, not measured (saved tensors + state at the batch the "
                "budget chose), compared with the budget: "
                + (", ".join(f"{k} {v:.1f} MiB" for k, v in known.items()) or "none recorded"))
        if not known:
            return _row(r, "peak_within_budget", False, "cpu: no modelled peak recorded",
                        expected, what)
        peak = max(known.values())
        return _row(r, "peak_within_budget", peak <= budget,
                    f"cpu: modelled peak {peak:.1f} MiB", expected, what)
    if r["axes"]["method"] == STUDY:
        measured = [v for h in hist if (v := _num(h.get("measured_peak_mib"))) is not None]
        what = "allocator peak less data and the units outside the block"
    else:
        data = _num(f.get("device_data_mib")) or 0.0
        measured = [v - data for h in hist if (v := _num(h.get("peak_alloc_mib"))) is not None]
        what = f"allocator peak less {data:.1f} MiB of data on the device"
    if not measured or budget is None:
        return _row(r, "peak_within_budget", False, "no measured peak", expected)
    peak = max(measured)
    return _row(r, "peak_within_budget", peak <= budget, f"{peak:.1f} MiB", expected, what)


CHECKS = ("two_blocks", "batch_non_decreasing", "first_block_batch", "most_units_above_backprop",
          "blocks_vs_backprop", "peak_within_budget")


@register_checks(STUDY, *CHECKS)
def checks(results: Sequence[Mapping[str, Any]]) -> Iterable[Check]:
    ok = [r for r in results if r.get("status") == "ok"]
    bp_batch: dict[tuple[str, ...], int] = {}
    for r in ok:
        if r["axes"]["method"] == "backprop":
            b = _num((r.get("final") or {}).get("batch_size"))
            if b is not None:
                a = axes_of(r)
                bp_batch[(a["model"], a["dataset"], a["budget"], str(a["seed"]))] = int(b)
    out: list[Check] = []
    for r in ok:
        a = axes_of(r)
        if a["method"] == STUDY:
            key = (a["model"], a["dataset"], a["budget"], str(a["seed"]))
            out.extend(_partition_rows(r, bp_batch.get(key)))
        out.append(_peak_row(r))
    return out
