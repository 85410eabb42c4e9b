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


def test_budget_used_needs_99_percent_every_epoch_or_the_whole_pool():
    ok = checks.budget_used(result("tradyn", "abc", [0.995, 1.0, 0.991]))
    assert ok.passed and ok.value.startswith("min 0.9910 (epoch 2)")
    low = checks.budget_used(result("d_full_random", "abc", [0.995, 0.42, 0.99]))
    assert not low.passed and "epoch 1: 0.4200" in low.detail
    # a pool smaller than the budget is taken whole: nothing more could be selected
    small = checks.budget_used(result("tradyn", "aaa", [0.6, 0.6, 0.6], pool_taken=[1, 1, 1]))
    assert small.passed and "whole pool taken in 3 of 3" in small.value
    empty = checks.budget_used(result("tradyn", "", []))
    assert not empty.passed


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
    assert len(table) == 4
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
