"""Mechanism checks of study `tradyn` (METHODS.md in this folder: "every epoch of every
budgeted cell uses >= 99% of its budget (or all of its pool); the selection of dynamic methods
changes between epochs and that of static ones does not").

Read from each ok cell's result.json (history and final, written by `base.TraDyBase`), one row
per cell (method, group, seed):

``budget_used``
    every epoch's selected memory units / budget units >= 0.99, or the whole pool was taken
    (a pool that fits the budget cannot fill it). A selection that stops at the first
    overflowing channel (`fill: stop`) wastes budget, and the wasted part is a handicap of the
    strategy with expensive channels in its pool, not a property of the strategy.
``selection_dynamics``
    dynamic methods: a new selection at every epoch boundary (random rule), at least one new
    selection (RGN rule: the highest-RGN channels may legitimately stay the same for a while,
    but a D-Det-RGN that never changes is S-Det-RGN); static methods: one selection for every
    epoch. Needs >= 2 epochs; with one, the row fails and says so.

Methods without a channel selection (full_ft, last_layer: no `selection_rule` in final) get no
rows. Imports no torch: it reads parsed result dicts only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.checks import Check, axes_of, register_checks

MIN_UTILISATION = 0.99  # METHODS.md: >= 99% of the budget every epoch


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def budget_used(result: Mapping[str, Any]) -> Check:
    """`budget_used` of one cell: the lowest epoch's utilisation, or the pool taken whole."""
    a = axes_of(result)
    history = result.get("history") or []
    worst: tuple[float, int] | None = None
    short = []
    for h in history:
        used = _number(h.get("budget_utilisation"))
        if used is None:
            short.append(f"epoch {h.get('epoch')}: no budget_utilisation")
            continue
        if worst is None or used < worst[0]:
            worst = (used, int(h.get("epoch", 0)))
        if used < MIN_UTILISATION and not _number(h.get("pool_taken")):
            short.append(f"epoch {h.get('epoch')}: {used:.4f}")
    expected = f">= {MIN_UTILISATION:g} of the budget every epoch, or the whole pool taken"
    if worst is None:
        return Check("budget_used", passed=False, value="no epoch recorded a utilisation",
                     expected=expected, **a)
    pool_taken = [h for h in history if _number(h.get("pool_taken"))]
    value = f"min {worst[0]:.4f} (epoch {worst[1]})"
    if pool_taken:
        value += f"; whole pool taken in {len(pool_taken)} of {len(history)} epochs"
    detail = "; ".join(short[:5]) + (" ..." if len(short) > 5 else "")
    return Check("budget_used", passed=not short, value=value, expected=expected,
                 detail=detail, **a)


def selection_dynamics(result: Mapping[str, Any]) -> Check:
    """`selection_dynamics` of one cell: how often the selection changed between epochs."""
    a = axes_of(result)
    final = result.get("final") or {}
    mode, rule = final.get("selection_mode"), final.get("selection_rule")
    ids = [h.get("selection_id") for h in result.get("history") or []]
    changes = sum(x != y for x, y in zip(ids, ids[1:]))
    boundaries = max(len(ids) - 1, 0)
    value = f"{len(set(ids))} distinct selections in {len(ids)} epochs ({changes} of " \
            f"{boundaries} boundaries changed)"
    if mode == "static":
        expected = "one selection kept for every epoch (static)"
        passed = boundaries > 0 and changes == 0
    elif rule == "random":
        expected = "a new selection at every epoch boundary (dynamic, random)"
        passed = boundaries > 0 and changes == boundaries
    else:
        expected = "the selection changes at >= 1 epoch boundary (dynamic, RGN)"
        passed = changes >= 1
    detail = "" if boundaries else "one epoch: nothing to compare"
    return Check("selection_dynamics", passed=passed, value=value, expected=expected,
                 detail=detail, **a)


def selecting(results: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ok cells of methods that select channels (final has a selection_rule)."""
    return [r for r in results if r.get("status") == "ok"
            and (r.get("final") or {}).get("selection_rule") is not None]


@register_checks("tradyn", "budget_used", "selection_dynamics")
def checks(results: Sequence[Mapping[str, Any]]) -> list[Check]:
    cells = selecting(results)
    return [budget_used(r) for r in cells] + [selection_dynamics(r) for r in cells]
