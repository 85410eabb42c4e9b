"""Mechanism checks of study `tradyn` (METHODS.md in this folder, "Mechanism checks": the budget
used every epoch, the selection of dynamic methods changing between epochs and that of static
ones not, the top-K pool leaving part of the network out).

Read from each ok cell's result.json (history and final, written by `base.TraDyBase`), one row
per cell (method, group, seed):

``budget_used``
    every epoch's selected memory units / budget units >= 0.99. A selection that stops at the
    first overflowing channel (`fill: stop`) wastes budget, and the wasted part is a handicap
    of the strategy with expensive channels in its pool, not a property of the strategy. A pool
    taken whole below 99% of the budget fails too (stricter than the first wording, "or all of
    its pool"): the method then trained at a smaller budget than the strategies it is compared with
    "at equal budget", which is the same handicap, and it did not select at all (the budget did
    not bind; choose a budget its pool can fill). The row says which: the selection stopped
    short of a pool it had not exhausted, or the whole pool fit (from the recorded
    `selected_memory_units` and `pool_memory_units`, not from the `pool_taken` flag alone).
``selection_dynamics``
    dynamic methods: a new selection at every epoch boundary (random rule), at least one new
    selection (RGN rule: the highest-RGN channels may legitimately stay the same for a while,
    but a D-Det-RGN that never changes is S-Det-RGN); static methods: one selection for every
    epoch. Needs >= 2 epochs; with one, the row fails and says so.
``topk_restricts`` (methods whose pool is the top-K ranked layers: TraDy, S-TopK-Random)
    the pool leaves part of the network out: its memory units (history `pool_memory_units`)
    are below those of every conv channel (final `full_memory_units`), and K (final
    `ranking_k`, when recorded) is below the number of conv layers. A top-K pool equal to the
    whole network (a ranking that keeps every layer, or option `ranking: all`) makes TraDy's
    selections D-Full-Random's and S-TopK-Random's S-Full-Random's: the restriction the
    claims are about did nothing.

Methods without a channel selection (full_ft, last_layer: no `selection_rule` in final) get no
rows; `topk_restricts` has rows only for top-K pools (final `selection_pool` "topk"; results
written before it was recorded: methods tradyn and s_topk_random). Imports no torch: it reads
parsed result dicts only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.checks import Check, axes_of, register_checks

MIN_UTILISATION = 0.99  # METHODS.md: >= 99% of the budget every epoch


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def budget_used(result: Mapping[str, Any]) -> Check:
    """`budget_used` of one cell: the lowest epoch's utilisation, and why any epoch fell short."""
    a = axes_of(result)
    history = result.get("history") or []
    worst: tuple[float, int] | None = None
    short, whole = [], 0
    for h in history:
        used = _number(h.get("budget_utilisation"))
        if used is None:
            short.append(f"epoch {h.get('epoch')}: no budget_utilisation")
            continue
        if worst is None or used < worst[0]:
            worst = (used, int(h.get("epoch", 0)))
        if used >= MIN_UTILISATION:
            continue
        selected = _number(h.get("selected_memory_units"))
        pool = _number(h.get("pool_memory_units"))
        if selected is not None and pool is not None and selected >= pool:
            whole += 1
            why = f"the whole pool ({pool:g} units) fit: the budget did not bind"
        elif selected is not None and pool is not None:
            why = f"stopped at {selected:g} of a pool of {pool:g} units"
            if _number(h.get("pool_taken")):
                why += " (pool_taken claimed, but the pool was not used up)"
        else:
            why = "stopped short"
        short.append(f"epoch {h.get('epoch')}: {used:.4f} ({why})")
    expected = f">= {MIN_UTILISATION:g} of the budget every epoch"
    if worst is None:
        return Check("budget_used", passed=False, value="no epoch recorded a utilisation",
                     expected=expected, **a)
    value = f"min {worst[0]:.4f} (epoch {worst[1]})"
    if whole:
        value += f"; the whole pool fit the budget in {whole} of {len(history)} epochs"
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


TOPK_METHODS = ("tradyn", "s_topk_random")  # results without final selection_pool


def topk_pool(result: Mapping[str, Any]) -> bool:
    """Whether the cell's pool is the top-K ranked layers (TraDy, S-TopK-Random)."""
    pool = (result.get("final") or {}).get("selection_pool")
    if pool is not None:
        return pool == "topk"
    return str(result["axes"]["method"]) in TOPK_METHODS


def topk_restricts(result: Mapping[str, Any]) -> Check:
    """`topk_restricts` of one top-K cell: its pool is a strict part of the network."""
    a = axes_of(result)
    final = result.get("final") or {}
    full = _number(final.get("full_memory_units"))
    pools = [p for h in result.get("history") or []
             if (p := _number(h.get("pool_memory_units"))) is not None]
    k, layers = _number(final.get("ranking_k")), _number(final.get("conv_layers"))
    expected = "a pool smaller than the whole network (K < conv layers)"
    if full is None or not pools:
        return Check("topk_restricts", passed=False, value="pool or network cost not recorded "
                     "(history pool_memory_units, final full_memory_units)", expected=expected,
                     **a)
    pool = max(pools)
    value = f"pool {pool:g} of {full:g} units ({pool / full:.1%})"
    if k is not None and layers is not None:
        value += f", K = {k:g} of {layers:g} conv layers"
    else:
        value += ", K not recorded (no ranking file read)"
    passed = pool < full and (k is None or layers is None or k < layers)
    detail = "" if passed else ("the top-K pool is the whole network: its selections are those "
                                "of the all-channel strategy (D-Full-Random / S-Full-Random)")
    return Check("topk_restricts", passed=passed, value=value, expected=expected, detail=detail,
                 **a)


def selecting(results: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ok cells of methods that select channels (final has a selection_rule)."""
    return [r for r in results if r.get("status") == "ok"
            and (r.get("final") or {}).get("selection_rule") is not None]


@register_checks("tradyn", "budget_used", "selection_dynamics", "topk_restricts")
def checks(results: Sequence[Mapping[str, Any]]) -> list[Check]:
    cells = selecting(results)
    return ([budget_used(r) for r in cells] + [selection_dynamics(r) for r in cells]
            + [topk_restricts(r) for r in cells if topk_pool(r)])
