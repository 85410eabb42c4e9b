"""Mechanism checks of study `tradyn` (bench/studies/tradyn/checks.py) on hand-made result
documents: each check passes when the mechanism is alive and fails, saying why, when not."""

from __future__ import annotations

import pytest
import torch

from bench.checks import checks_table, failures
from bench.studies.tradyn import checks
from bench.studies.tradyn.channels import random_selection


def result(method, ids, used, *, mode="dynamic", rule="random", pool_taken=None, seed=0,
           status="ok"):
    history = []
    for epoch, (sid, u) in enumerate(zip(ids, used)):
        h = {"epoch": epoch, "selection_id": sid, "budget_utilisation": u}
        h["pool_taken"] = float(pool_taken[epoch]) if pool_taken else 0.0
        history.append(h)
    return {"axes": {"study": "tradyn", "method": method, "model": "m", "dataset": "d",
                     "budget": "7738", "seed": seed},
            "status": status, "history": history,
            "final": {"selection_mode": mode, "selection_rule": rule}}


def test_budget_used_needs_99_percent_every_epoch():
    ok = checks.budget_used(result("tradyn", "abc", [0.995, 1.0, 0.991]))
    assert ok.passed and ok.value.startswith("min 0.9910 (epoch 2)")
    low = checks.budget_used(result("d_full_random", "abc", [0.995, 0.42, 0.99]))
    assert not low.passed and "epoch 1: 0.4200" in low.detail
    empty = checks.budget_used(result("tradyn", "", []))
    assert not empty.passed


def test_budget_used_does_not_take_a_pool_used_up_at_40_percent():
    """A pool used up at 40% of the budget (it passed before on the pool_taken flag): the method
    trained at 40% of the budget it is compared at. Both readings fail, each saying which."""
    # the flag claims the pool was taken, the units say the selection stopped early
    early = result("tradyn", "abc", [0.4] * 3, pool_taken=[1, 1, 1])
    for h in early["history"]:
        h.update(selected_memory_units=3103.2, pool_memory_units=90000.0)
    row = checks.budget_used(early)
    assert not row.passed
    assert "epoch 0: 0.4000 (stopped at 3103.2 of a pool of 90000 units (pool_taken claimed, " \
        "but the pool was not used up))" in row.detail
    # the pool really fits in 40% of the budget: the budget did not bind
    small = result("s_topk_random", "aaa", [0.4] * 3, mode="static", pool_taken=[1, 1, 1])
    for h in small["history"]:
        h.update(selected_memory_units=3103.2, pool_memory_units=3103.2)
    row = checks.budget_used(small)
    assert not row.passed and "the whole pool fit the budget in 3 of 3 epochs" in row.value
    assert "the whole pool (3103.2 units) fit: the budget did not bind" in row.detail


def test_topk_restricts_fails_a_pool_of_the_whole_network():
    def topk(pool, full, k=None, layers=None, method="tradyn", **final):
        r = result(method, "abc", [1.0] * 3)
        for h in r["history"]:
            h["pool_memory_units"] = pool
        r["final"].update(full_memory_units=full, **final)
        if k is not None:
            r["final"].update(ranking_k=k, conv_layers=layers)
        return checks.topk_restricts(r)

    alive = topk(250000.0, 346744.0, 38.0, 52.0)
    assert alive.passed
    assert alive.value == "pool 250000 of 346744 units (72.1%), K = 38 of 52 conv layers"
    whole = topk(346744.0, 346744.0, 52.0, 52.0)
    assert not whole.passed and "D-Full-Random" in whole.detail
    assert not topk(346744.0, 346744.0).passed  # option ranking: all (no K recorded)
    assert not topk(300000.0, 346744.0, 52.0, 52.0).passed  # K says every layer
    assert not topk(None, 346744.0).passed  # not recorded: cannot show the restriction
    # which cells have a top-K pool: the recorded selection_pool, else the method's name
    assert checks.topk_pool(result("tradyn", "a", [1.0]))
    assert checks.topk_pool(result("s_topk_random", "a", [1.0], mode="static"))
    assert not checks.topk_pool(result("d_full_random", "a", [1.0]))
    renamed = result("my_variant", "a", [1.0])
    renamed["final"]["selection_pool"] = "topk"
    assert checks.topk_pool(renamed)


def test_selection_dynamics_dynamic_changes_static_does_not():
    assert checks.selection_dynamics(result("tradyn", "abc", [1] * 3)).passed
    repeat = checks.selection_dynamics(result("tradyn", "abb", [1] * 3))
    assert not repeat.passed
    assert "2 distinct selections in 3 epochs (1 of 2 boundaries changed)" == repeat.value
    # RGN: the top channels may stay for a while, but must change at least once
    assert checks.selection_dynamics(result("d_det_rgn", "aab", [1] * 3, rule="rgn")).passed
    frozen = checks.selection_dynamics(result("d_det_rgn", "aaa", [1] * 3, rule="rgn"))
    assert not frozen.passed and ">= 1 epoch boundary" in frozen.expected
    assert checks.selection_dynamics(result("s_topk_random", "aaa", [1] * 3,
                                            mode="static")).passed
    moving = checks.selection_dynamics(result("s_topk_random", "aab", [1] * 3, mode="static"))
    assert not moving.passed
    one = checks.selection_dynamics(result("tradyn", "a", [1]))
    assert not one.passed and "one epoch" in one.detail


def test_checks_cover_selecting_ok_cells_and_withhold_their_claims():
    results = [
        result("tradyn", "abc", [1.0] * 3),
        result("s_topk_random", "abc", [1.0] * 3, mode="static", seed=1),  # broken: moves
        result("d_full_random", "abc", [0.9] * 3, status="failed"),  # not ok: no rows
        {"axes": {"study": "tradyn", "method": "full_ft", "model": "m", "dataset": "d",
                  "budget": "none", "seed": 0}, "status": "ok", "history": [{"epoch": 0}],
         "final": {}},  # no selection: no rows
    ]
    table = checks_table("tradyn", results)
    assert sorted(set(table["method"])) == ["s_topk_random", "tradyn"]
    assert len(table) == 6  # budget_used, selection_dynamics, topk_restricts (top-K pools)
    assert set(table[table["check"] == "topk_restricts"]["method"]) == {"s_topk_random", "tradyn"}
    why = failures(table, ["selection_dynamics"], ["tradyn", "s_topk_random"],
                   {"budget": "7738"})
    assert len(why) == 1 and why[0].startswith("selection_dynamics (s_topk_random seed 1")
    assert failures(table, ["budget_used"], ["tradyn", "s_topk_random"]) == []


def test_stop_fill_is_what_budget_used_catches():
    """The first implementation's rule (stop at the first overflow) on a pool with a costly
    channel early in the order leaves budget unused; the check names the epoch."""
    pool = [(0, c) for c in range(4)] + [(1, c) for c in range(40)]
    costs = [900, 25]  # four expensive channels, forty cheap ones
    budget = 1000
    used = []
    for seed in range(20):
        sel = random_selection(pool, costs, budget, torch.Generator().manual_seed(seed), "stop")
        used.append(sum(costs[i] for i, _ in sel) / budget)
    skip = [sum(costs[i] for i, _ in random_selection(
        pool, costs, budget, torch.Generator().manual_seed(s))) / budget for s in range(20)]
    assert min(skip) >= 0.99
    assert min(used) < 0.99
    row = checks.budget_used(result("d_full_random", [str(i) for i in range(20)], used))
    assert not row.passed
