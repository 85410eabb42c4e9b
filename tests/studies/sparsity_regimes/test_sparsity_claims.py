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


def mechanism(probe, seeds, epochs=14):
    """The study's mechanism-check rows for controllers driven by `probe(r)` (no training)."""
    results = []
    for seed in range(seeds):
        for method, c in (("topk_s1", LossGuardedController()),
                          ("topk_s2", AccuracyTargetedController()),
                          ("topk_sawtooth", SawtoothController())):
            history = []
            for epoch in range(epochs):
                history.append({"epoch": epoch, "keep_ratio": c.r})
                c.step(probe(c.r))
                history[-1]["reset_cause"] = c.reset_cause
            results.append({"axes": {"study": STUDY, "method": method, "model": GROUP[0],
                                     "dataset": GROUP[1], "budget": GROUP[2], "seed": seed},
                            "status": "ok", "history": history, "config": {}})
    return checks_table(STUDY, results)


def adaptive(r):  # the cost of sparsity grows as r falls: both guards trip, differently
    return Probe(1.0, 0.95, 1.0 + 0.6 * (1 - r), 0.95 - 0.05 * (1 - r))


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
                                               "not_degenerate"}


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
