"""Mechanism checks of study `sparsity_regimes` (bench/studies/sparsity_regimes/checks.py) on
scripted result documents."""

from __future__ import annotations

import pytest

from bench.checks import checks_table, failures
from bench.studies.sparsity_regimes.checks import open_loop
from bench.studies.sparsity_regimes.controllers import (
    AccuracyTargetedController,
    LossGuardedController,
    Probe,
    SawtoothController,
)

STUDY = "sparsity_regimes"


NATURAL = 0.5  # natural density of the hooked ReLU outputs (METHODS.md: about 0.5)


def result(method, seed, ratios, causes=None, natural=NATURAL, **opts):
    """A scripted result; the effective activation rate is min(r, natural density) (global
    top-k keeps r of the entries, and nothing below the ReLUs' own density)."""
    causes = causes or [""] * len(ratios)
    history = [{"epoch": i, "keep_ratio": r, "reset_cause": c,
                "effective_activation_rate": min(r, natural)}
               for i, (r, c) in enumerate(zip(ratios, causes, strict=True))]
    return {"axes": {"study": STUDY, "method": method, "model": "wrn28_4", "dataset": "digits",
                     "budget": "none", "seed": seed},
            "status": "ok", "history": history, "config": {"method_options": opts}}


def run_controller(controller, probe, epochs):
    ratios, causes = [], []
    for _ in range(epochs):
        ratios.append(controller.r)
        controller.step(probe(controller.r))
        causes.append(controller.reset_cause)
    return ratios, causes


def costly(r):  # sparsity costs loss and accuracy once r is below the natural density
    cut = max(0.0, NATURAL - r)
    return Probe(1.0, 0.95, 1.0 + 2.0 * cut, 0.95 - 0.2 * cut)


def steep(r):  # guards that trip as soon as r < 0.9: both controllers stay above the density
    cut = max(0.0, 0.9 - r)
    return Probe(1.0, 0.95, 1.0 + 2.0 * cut, 0.95 - 0.4 * cut)


def free(r):  # sparsity costs nothing measurable: no guard ever trips
    return Probe(1.0, 0.95, 1.0, 0.95)


def cells(probe, epochs=14, seeds=(0, 1, 2)):
    out = []
    for seed in seeds:
        for method, c in (("topk_s1", LossGuardedController()),
                          ("topk_s2", AccuracyTargetedController()),
                          ("topk_sawtooth", SawtoothController())):
            out.append(result(method, seed, *run_controller(c, probe, epochs)))
    return out


def rows(table, check, method=None):
    t = table[table["check"] == check]
    return t if method is None else t[t["method"] == method]


def test_adaptive_controllers_pass_every_check():
    table = checks_table(STUDY, cells(costly))
    assert len(rows(table, "trajectories_differ")) == 6  # 2 methods x 3 seeds
    assert table["passed"].all(), table[~table["passed"]].to_dict("records")
    assert set(rows(table, "not_degenerate")["value"]) == {"adaptive"}
    assert failures(table, ["trajectories_differ", "guard_reset", "not_degenerate"],
                    ["topk_s1", "dense"]) == []


def test_the_open_loop_collapse_fails_every_check_and_withholds_the_claims():
    # the first controllers' failure mode: no guard ever trips, S1 = S2 = open-loop schedule
    table = checks_table(STUDY, cells(free))
    for check in ("trajectories_differ", "guard_reset", "not_degenerate"):
        assert not rows(table, check)["passed"].any(), check
    assert rows(table, "trajectories_differ")["value"].str.startswith("identical").all()
    assert rows(table, "not_degenerate")["value"].str.startswith("degenerate").all()
    assert rows(table, "guard_reset")["value"].iloc[0] == "0 guard, 0 floor resets"
    lines = failures(table, ["not_degenerate"], ["topk_s2", "dense"],
                     {"model": "wrn28_4", "dataset": "digits", "budget": "none"})
    assert len(lines) == 3 and all("degenerate" in line and "topk_s2" in line for line in lines)


def test_trajectories_differ_is_not_applicable_within_one_cycle():
    table = checks_table(STUDY, cells(free, epochs=10))
    t = rows(table, "trajectories_differ")
    assert t["passed"].all() and t["value"].str.startswith("n/a").all()
    # a run longer than the sawtooth's own period counts
    docs = cells(free, epochs=5)
    for d in docs:
        if d["axes"]["method"] == "topk_sawtooth":
            d["config"]["method_options"] = {"period": 4}
    assert not rows(checks_table(STUDY, docs), "trajectories_differ")["passed"].any()


def test_differ_in_one_seed_only_fails_the_other_seeds():
    docs = cells(costly, seeds=(0,)) + cells(free, seeds=(1,))
    t = rows(checks_table(STUDY, docs), "trajectories_differ")
    assert t.set_index(["method", "seed"])["passed"].to_dict() == {
        ("topk_s1", 0): True, ("topk_s2", 0): True, ("topk_s1", 1): False, ("topk_s2", 1): False}


def test_a_missing_partner_fails_trajectories_differ():
    docs = [d for d in cells(costly, seeds=(0,)) if d["axes"]["method"] != "topk_s2"]
    t = rows(checks_table(STUDY, docs), "trajectories_differ")
    assert len(t) == 1 and not t["passed"].iloc[0] and "no topk_s2" in t["value"].iloc[0]


def test_guard_reset_counts_only_guard_resets_above_the_floor():
    floor_only = result("topk_s1", 0, [1.0, 0.5, 0.25, 1.0], ["", "", "floor", ""],
                        r_min=0.25, beta=0.5)
    at_floor = result("topk_s2", 0, [1.0, 0.5, 0.25, 1.0], ["", "", "guard", ""],
                      r_min=0.25, beta=0.5)
    above = result("topk_s1", 1, [1.0, 0.5, 1.0, 0.5], ["", "guard", "", ""],
                   r_min=0.25, beta=0.5)
    unrecorded = result("topk_s2", 1, [1.0, 0.5, 1.0, 0.5], r_min=0.25, beta=0.5)
    for h in unrecorded["history"]:
        del h["reset_cause"]
    t = rows(checks_table(STUDY, [floor_only, at_floor, above, unrecorded]), "guard_reset")
    got = t.set_index(["method", "seed"])[["passed", "value"]].to_dict("index")
    assert got[("topk_s1", 0)] == {"passed": False, "value": "0 guard, 1 floor resets"}
    assert got[("topk_s2", 0)] == {"passed": False, "value": "0 guard, 1 floor resets"}
    assert got[("topk_s1", 1)] == {"passed": True, "value": "1 guard, 0 floor resets"}
    assert got[("topk_s2", 1)]["passed"] is False


def test_an_adaptive_trajectory_equal_to_the_sawtooth_is_degenerate():
    saw = run_controller(SawtoothController(), free, 12)
    docs = [result("topk_s1", 0, *saw), result("topk_sawtooth", 0, *saw),
            result("topk_s2", 0, *run_controller(AccuracyTargetedController(), costly, 12))]
    t = rows(checks_table(STUDY, docs), "not_degenerate").set_index("method")
    assert not t.loc["topk_s1", "passed"]
    assert t.loc["topk_s1", "value"] == "degenerate: equals topk_sawtooth's trajectory"
    assert t.loc["topk_s2", "passed"]


def test_open_loop_matches_the_controllers_helper():
    from bench.studies.sparsity_regimes.controllers import open_loop_ratios

    assert open_loop(0.05, 0.8, 40) == pytest.approx(open_loop_ratios(0.05, 0.8, 40))
    assert open_loop(0.25, 0.5, 6) == [1.0, 0.5, 0.25, 1.0, 0.5, 0.25]


def test_the_checks_defaults_are_the_methods_defaults():
    from bench.methods import METHODS
    from bench.studies.sparsity_regimes.checks import DEFAULTS

    for name in ("topk_s1", "topk_s2"):
        opts = METHODS.get(name).resolve_options({})
        assert (opts["r_min"], opts["beta"]) == (DEFAULTS["r_min"], DEFAULTS["beta"])
    assert METHODS.get("topk_sawtooth").resolve_options({})["period"] == DEFAULTS["period"]


def test_sparsity_bites_needs_an_epoch_below_the_natural_density():
    alive = rows(checks_table(STUDY, cells(costly)), "sparsity_bites")
    assert len(alive) == 6 and alive["passed"].all()  # S1 and S2 go below 0.5, per seed
    assert alive["value"].str.contains("vs density 0.5").all()
    never = rows(checks_table(STUDY, cells(steep)), "sparsity_bites")
    assert len(never) == 6 and not never["passed"].any()
    assert never["value"].str.startswith("0 of 14 epochs below").all()
    assert failures(checks_table(STUDY, cells(steep)), ["sparsity_bites"],
                    ["topk_s1", "dense"]) != []


def test_natural_density_is_the_cells_own_dense_epoch_else_the_dense_cell():
    from bench.studies.sparsity_regimes.checks import natural_density

    own = result("topk_s1", 0, [1.0, 0.8, 0.64, 1.0, 0.8], natural=0.7)["history"]
    assert natural_density(own, None) == [0.7] * 5
    own[3]["effective_activation_rate"] = 0.6  # the density measured at the next r = 1 epoch
    assert natural_density(own, None) == [0.7, 0.7, 0.7, 0.6, 0.6]
    # no epoch at r = 1 (a controller that starts sparse): the dense cell's, epoch by epoch
    start = result("topk_s2", 0, [0.9, 0.72, 0.9], natural=0.95)["history"]
    dense = result("dense", 0, [1.0, 1.0, 1.0], natural=0.55)["history"]
    assert natural_density(start, dense) == [0.55, 0.55, 0.55]
    t = rows(checks_table(STUDY, [
        result("topk_s2", 0, [0.9, 0.72, 0.9], ["", "guard", ""]),
        result("dense", 0, [1.0, 1.0, 1.0], natural=0.55)]), "sparsity_bites")
    assert t["passed"].tolist() == [False] and "lowest r 0.72 in epoch 2" in t["value"].iloc[0]
    t = rows(checks_table(STUDY, [
        result("topk_s2", 0, [0.9, 0.72, 0.9], ["", "guard", ""]),
        result("dense", 0, [1.0, 1.0, 1.0], natural=0.8)]), "sparsity_bites")
    assert t["passed"].tolist() == [True]  # 0.72 < 0.8: top-k removed activations
    # nothing measured: the check fails and says what to record
    bare = result("topk_s1", 0, [0.9, 0.72])
    for h in bare["history"]:
        del h["effective_activation_rate"]
    t = rows(checks_table(STUDY, [bare]), "sparsity_bites")
    assert not t["passed"].iloc[0] and t["value"].iloc[0] == "no natural density measured"
    assert "effective_activation_rate" in t["detail"].iloc[0]
