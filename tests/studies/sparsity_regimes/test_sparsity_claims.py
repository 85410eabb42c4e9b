"""The claims of study `sparsity_regimes` (claims.yaml) with bench.claims and the study's
mechanism checks: a reversed gain never reads `reproduced`; a failed mechanism check withholds
every claim about S1 / S2; the file validates against the study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import claims as cl
from bench.checks import checks_table
from bench.config import ROOT, check_config, claims_path, load_config
from bench.studies.sparsity_regimes.checks import checks as study_checks  # noqa: F401 (registers)
from bench.studies.sparsity_regimes.controllers import (
    AccuracyTargetedController,
    LossGuardedController,
    Probe,
    SawtoothController,
    open_loop_ratios,
)

STUDY = "sparsity_regimes"
GROUP = ("wrn28_4", "cifar10", "none")
ADAPTIVE_CLAIMS = ("topk_s1_val_acc", "topk_s2_val_acc", "topk_s1_beats_dense",
                   "topk_s2_beats_dense")


def doc():
    return cl.load_claims(claims_path(STUDY))


def cells(values):
    rows = [{"study": STUDY, "method": m, "model": GROUP[0], "dataset": GROUP[1],
             "budget": GROUP[2], "seed": seed, "status": "ok", "val_acc": v}
            for m, vals in values.items() for seed, v in enumerate(vals)]
    return pd.DataFrame(rows)


def mechanism(probe, seeds, epochs=14, natural=0.5):
    """The study's mechanism-check rows for controllers driven by `probe(r)` (no training)."""
    results = []
    for seed in range(seeds):
        for method, c in (("topk_s1", LossGuardedController()),
                          ("topk_s2", AccuracyTargetedController()),
                          ("topk_sawtooth", SawtoothController())):
            history = []
            for epoch in range(epochs):
                history.append({"epoch": epoch, "keep_ratio": c.r,
                                "effective_activation_rate": min(c.r, natural)})
                c.step(probe(c.r))
                history[-1]["reset_cause"] = c.reset_cause
            results.append({"axes": {"study": STUDY, "method": method, "model": GROUP[0],
                                     "dataset": GROUP[1], "budget": GROUP[2], "seed": seed},
                            "status": "ok", "history": history, "config": {}})
    return checks_table(STUDY, results)


def adaptive(r):  # sparsity costs once r is below the natural density (0.5): both guards trip
    cut = max(0.0, 0.5 - r)  # there, differently
    return Probe(1.0, 0.95, 1.0 + 2.0 * cut, 0.95 - 0.2 * cut)


def open_loop(r):  # no measurable cost: no guard trips, S1 = S2 = the open-loop schedule
    return Probe(1.0, 0.95, 1.0, 0.95)


def verdicts(values, checks):
    rows = cl.evaluate_claims(doc(), cells(values), study=STUDY, mechanism_checks=checks)
    return {r["claim_id"]: r for r in rows}


def test_the_claims_file_is_valid_for_the_study():
    cfg = check_config(load_config([ROOT / "config" / "paper.yaml"]))
    assert cl.check_claims_file(claims_path(STUDY), STUDY, cfg["studies"][STUDY]) == []
    by_id = {c["id"]: c for c in doc()["claims"]}
    for cid in ("dense_val_acc", "topk_s1_val_acc", "topk_s2_val_acc"):
        c = by_id[cid]
        assert (c["kind"], c["scope"]) == ("value", "paper") and c["margin"] > 0
        assert c["margin_reason"]
    for cid, gain in (("topk_s1_beats_dense", 0.0107), ("topk_s2_beats_dense", 0.0112)):
        c = by_id[cid]
        assert (c["kind"], c["scope"], c["versus"]) == ("superiority", "thesis", "dense")
        assert float(c["value"]) == pytest.approx(gain)
    for cid in ADAPTIVE_CLAIMS:
        assert set(by_id[cid]["requires"]) == {"trajectories_differ", "guard_reset",
                                               "not_degenerate", "sparsity_bites"}


@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_a_reversed_gain_never_reads_reproduced(seeds):
    """Dense above S1 / S2 in the mean (the mechanism checks all passing), at any spread and
    level, with absolute values near the paper's: no gain claim, and no pair of absolute values,
    reads reproduced."""
    checks = mechanism(adaptive, seeds)
    assert checks["passed"].all()
    rng = np.random.default_rng(seeds)
    for _ in range(60):
        level = float(rng.uniform(0.86, 0.89))
        sd = float(rng.uniform(1e-4, 0.01))
        shared = rng.normal(0, float(rng.uniform(0, 0.005)), seeds)
        values = {"dense": level + shared + rng.normal(0, sd, seeds)}
        for m in ("topk_s1", "topk_s2"):
            diff = rng.normal(0, sd, seeds)
            diff -= diff.mean() + float(rng.uniform(1e-4, 0.02))  # mean gain strictly < 0
            values[m] = values["dense"] + diff
        rows = verdicts(values, checks)
        for cid in ("topk_s1_beats_dense", "topk_s2_beats_dense"):
            assert rows[cid]["estimate"] < 0
            assert rows[cid]["verdict"] != "reproduced", rows[cid]
        for m in ("topk_s1", "topk_s2"):
            assert not (rows["dense_val_acc"]["verdict"] == "reproduced"
                        == rows[f"{m}_val_acc"]["verdict"]), (rows["dense_val_acc"],
                                                              rows[f"{m}_val_acc"])


def test_a_real_gain_reads_reproduced_only_while_the_mechanism_is_alive():
    rng = np.random.default_rng(0)
    seeds = 5
    shared = rng.normal(0, 0.002, seeds)
    values = {"dense": 0.869 + shared + rng.normal(0, 3e-4, seeds),
              "topk_s1": 0.8797 + shared + rng.normal(0, 3e-4, seeds),
              "topk_s2": 0.8802 + shared + rng.normal(0, 3e-4, seeds)}
    alive = verdicts(values, mechanism(adaptive, seeds))
    for cid in ("dense_val_acc", *ADAPTIVE_CLAIMS):
        assert alive[cid]["verdict"] == "reproduced", alive[cid]
    dead = verdicts(values, mechanism(open_loop, seeds))
    assert dead["dense_val_acc"]["verdict"] == "reproduced"  # dense has no controller
    for cid in ADAPTIVE_CLAIMS:
        v = dead[cid]["verdict"]
        assert v.startswith("withheld (mechanism check failed:"), v
        assert "not_degenerate" in v and "guard_reset" in v and "trajectories_differ" in v
        assert "verdict would be reproduced" in dead[cid]["reason"]


# --- the catalogue of degenerate mechanisms: each ends `withheld`, naming its check ----------


def steep(r):  # guards that trip as soon as r < 0.9: S1 and S2 stay above the natural density
    cut = max(0.0, 0.9 - r)
    return Probe(1.0, 0.95, 1.0 + 2.0 * cut, 0.95 - 0.4 * cut)


def _gain():
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 0.002, 3)
    return {"dense": 0.869 + shared + rng.normal(0, 3e-4, 3),
            "topk_s1": 0.8797 + shared + rng.normal(0, 3e-4, 3),
            "topk_s2": 0.8802 + shared + rng.normal(0, 3e-4, 3)}


def _scripted(s1, s2, saw=None, natural=0.5, seeds=3, **opts):
    """Result documents with the given (ratios, causes) per adaptive method, the same in every
    seed, through the study's checks."""
    results = []
    for seed in range(seeds):
        for method, (ratios, causes) in (("topk_s1", s1), ("topk_s2", s2),
                                         *((("topk_sawtooth", saw),) if saw else ())):
            history = [{"epoch": i, "keep_ratio": r, "reset_cause": c,
                        "effective_activation_rate": min(r, natural)}
                       for i, (r, c) in enumerate(zip(ratios, causes, strict=True))]
            results.append({"axes": {"study": STUDY, "method": method, "model": GROUP[0],
                                     "dataset": GROUP[1], "budget": GROUP[2], "seed": seed},
                            "status": "ok", "history": history,
                            "config": {"method_options": opts}})
    return checks_table(STUDY, results)


def _run(controller, probe, epochs=14):
    ratios, causes = [], []
    for _ in range(epochs):
        ratios.append(controller.r)
        controller.step(probe(controller.r))
        causes.append(controller.reset_cause)
    return ratios, causes


def _withheld_by(checks, check, claims=ADAPTIVE_CLAIMS):
    failed = set(checks.loc[~checks["passed"], "check"])
    rows = verdicts(_gain(), checks)
    for cid in claims:
        v = rows[cid]["verdict"]
        assert v.startswith("withheld (mechanism check failed:") and check in v, (cid, v)
        assert "verdict would be reproduced" in rows[cid]["reason"]
    assert rows["dense_val_acc"]["verdict"] == "reproduced"
    return failed


def test_sparsity_that_never_bites_is_withheld():
    # both guards trip above the natural density (0.5): S1 1, 0.8, reset; S2 holds 0.8, reset
    checks = mechanism(steep, 3)
    bites = checks[checks["check"] == "sparsity_bites"]
    assert len(bites) == 6 and not bites["passed"].any()
    assert bites["value"].str.startswith("0 of 14 epochs below").all()
    # ... while the other three checks pass: only sparsity_bites sees it
    assert _withheld_by(checks, "sparsity_bites") == {"sparsity_bites"}


def test_a_controller_whose_floor_is_above_the_natural_density_is_withheld():
    # r_min 0.6 > the density 0.55: S1 and S2 compress to the floor and reset there
    checks = mechanism(adaptive, 3, natural=0.55)
    assert checks["passed"].all()  # the same controllers with the default floor bite
    s1 = _run(LossGuardedController(r_min=0.6), adaptive)
    s2 = _run(AccuracyTargetedController(r_min=0.6), adaptive)
    checks = _scripted(s1, s2, natural=0.55, r_min=0.6)
    assert not checks[checks["check"] == "sparsity_bites"]["passed"].any()
    assert "sparsity_bites" in _withheld_by(checks, "sparsity_bites")


def test_identical_s1_and_s2_trajectories_are_withheld():
    # S2 runs S1's (adaptive, guard-reset, biting) trajectory: only trajectories_differ fails
    s1 = _run(LossGuardedController(), adaptive)
    checks = _scripted(s1, s1)
    assert _withheld_by(checks, "trajectories_differ") == {"trajectories_differ"}


def test_resets_only_at_the_floor_are_withheld():
    # S2's accuracy guard holds once, recovers, then compresses to the floor and resets there:
    # its trajectory differs from S1's and from the open-loop schedule, but no guard reset
    def dip(r):  # one violation at r = 0.41 that the next epoch's probe no longer shows
        return Probe(1.0, 0.95, 1.0, 0.95 - (0.05 if abs(r - 0.4096) < 1e-3 and dip.n < 1 else 0))
    dip.n = 0

    c = AccuracyTargetedController()
    ratios, causes = [], []
    for _ in range(20):
        ratios.append(c.r)
        c.step(dip(c.r))
        if c.action == "hold":
            dip.n += 1
        causes.append(c.reset_cause)
    assert dip.n == 1 and "guard" not in causes and "floor" in causes
    assert ratios != open_loop_ratios(0.05, 0.8, 20)  # the hold made it differ
    s1 = _run(LossGuardedController(), adaptive, 20)
    checks = _scripted(s1, (ratios, causes))
    g = checks[(checks["check"] == "guard_reset") & (checks["method"] == "topk_s2")]
    assert not g["passed"].any() and g["value"].str.endswith("floor resets").all()
    failed = _withheld_by(checks, "guard_reset", ("topk_s2_val_acc", "topk_s2_beats_dense"))
    assert failed == {"guard_reset"}, failed
    rows = verdicts(_gain(), checks)
    assert rows["topk_s1_beats_dense"]["verdict"] == "reproduced"  # S1's guard did reset


def test_a_trajectory_equal_to_the_sawtooth_is_withheld():
    saw = _run(SawtoothController(), adaptive, 14)
    s2 = _run(AccuracyTargetedController(), adaptive)
    checks = _scripted(saw, s2, saw=saw)
    nd = checks[(checks["check"] == "not_degenerate") & (checks["method"] == "topk_s1")]
    assert not nd["passed"].any()
    assert nd["value"].str.contains("equals topk_sawtooth's trajectory").all()
    rows = verdicts(_gain(), checks)
    for cid in ("topk_s1_val_acc", "topk_s1_beats_dense"):
        assert "not_degenerate (topk_s1" in rows[cid]["verdict"], rows[cid]["verdict"]
