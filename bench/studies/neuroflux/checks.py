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
    the case at every binding budget of config/paper.yaml (README, "Mechanism checks").
``first_block_batch`` (neuroflux)
    the first block's batch is at least half the b* of its first unit (the first-unit rule:
    the batch did not halve again and again).
``blocks_vs_backprop`` (neuroflux)
    every block's batch is at least backprop's batch under the same budget and seed (the
    adaptive batch is where NeuroFlux's speed-up comes from; reported, not required).
``peak_within_budget`` (both methods)
    on an accelerator, the allocator's peak less what the budget does not bound (the dataset
    on the device; for NeuroFlux also the units and heads outside the training block) stays
    within the budget. On CPU the budget is a modelled one: the row passes with value
    "cpu: modelled" and names the modelled peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.checks import Check, axes_of, register_checks

STUDY = "neuroflux"
REQUIRED = ("two_blocks", "first_block_batch", "peak_within_budget")  # what the claims require


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
    if batches and backprop_batch is not None:
        rows.append(_row(r, "blocks_vs_backprop", min(batches) >= backprop_batch,
                         f"smallest {min(batches)}, first {batches[0]} vs backprop "
                         f"{backprop_batch}", "every block >= backprop's batch"))
    return rows


def _peak_row(r: Mapping[str, Any]) -> Check:
    f, hist = r.get("final") or {}, r.get("history") or []
    budget = _budget_mib(r)
    modelled = [v for h in hist if (v := _num(h.get("modelled_peak_mib"))) is not None]
    expected = f"<= {budget:g} MiB" if budget is not None else "<= budget"
    device = str((r.get("provenance") or {}).get("device") or "")
    if not device.startswith("cuda"):
        detail = (f"modelled peak {max(modelled):.1f} MiB" if modelled else "no modelled peak")
        return _row(r, "peak_within_budget", True, "cpu: modelled", expected, detail)
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


CHECKS = ("two_blocks", "batch_non_decreasing", "first_block_batch", "blocks_vs_backprop",
          "peak_within_budget")


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
