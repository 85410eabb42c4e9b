"""bench.claims: the claims format, the verdict rule, its calibration, and the claims files.

The calibration is a simulation with a known truth (fixed RNG, thousands of reproductions per
claim kind and seed count, a couple of seconds of CPU): the rule's false `reproduced` and false
`contradicted` rates stay at or below alpha, and `inconclusive` shrinks as seeds are added.
"""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bench import claims as cl
from bench import stats
from bench.config import ROOT, check_config, claims_path, load_config, plan
from bench.errors import ConfigError

STUDIES = ("restwake", "tradyn", "sparsity_regimes", "neuroflux")
REPS = 20_000
MC = 3 * math.sqrt(0.05 * 0.95 / REPS)  # 3 Monte Carlo standard errors at a 5% rate


def cells_frame(rows):
    """A cells table (bench.aggregate.cells_table's columns that the claims read)."""
    df = pd.DataFrame(rows)
    df["status"] = df.get("status", "ok")
    return df.fillna({"status": "ok"})


def cells_of(study, groups, values, metric="val_acc", **extra):
    """cells for {method: [per-seed values]} in each (model, dataset, budget) group."""
    rows = []
    for model, dataset, budget in groups:
        for method, vals in values.items():
            for seed, v in enumerate(vals):
                rows.append({"study": study, "method": method, "model": model,
                             "dataset": dataset, "budget": budget, "seed": seed, metric: v,
                             **{k: e[method][seed] for k, e in extra.items()}})  # fmt: skip
    return cells_frame(rows)


def claim(**kw):
    base = {"id": "c", "source": "T1", "kind": "value", "scope": "thesis", "method": "a",
            "metric": "val_acc", "margin": 0.01, "margin_reason": "a test"}  # fmt: skip
    return {**base, **kw}


def evaluate(claims, cells, **kw):
    doc = {"claims": claims}
    cl.validate_claims(doc)
    return cl.evaluate_claims(doc, cells, study="s", **kw)


# ------------------------------------------------------------------------------ calibration


@pytest.fixture(scope="module")
def calibration():
    return cl.calibrate(reps=REPS)


def test_calibration_error_rates_at_most_alpha(calibration):
    assert {r["kind"] for r in calibration} == set(cl.KINDS)
    for r in calibration:
        where = f"{r['kind']} n={r['n']}"
        # truth on the margin's edge (the worst case of "outside the margin"): false reproduced
        assert r["edge_reproduced"] <= 0.05 + MC, where
        # the same truth is also the worst case of "the claim holds": contradicted <= 2.5%
        assert r["edge_contradicted"] <= 0.025 + MC, where
        # truth equal to the paper's value: false contradicted
        assert r["paper_contradicted"] <= 0.05, where


def test_calibration_inconclusive_shrinks_with_seeds(calibration):
    for kind in cl.KINDS:
        rows = sorted((r for r in calibration if r["kind"] == kind), key=lambda r: r["n"])
        assert [r["n"] for r in rows] == [3, 5, 10]
        inc = [r["paper_inconclusive"] for r in rows]
        assert inc[0] > inc[1] > inc[2], (kind, inc)
        assert rows[-1]["paper_reproduced"] > 0.5, kind  # 10 seeds mostly decide


def test_calibration_table_in_docs_is_this_simulation(calibration):
    text = (ROOT / "docs" / "statistics.md").read_text()
    documented = {}
    for line in text.splitlines():
        m = re.match(r"^\| (\w+) \| (\d+) \| (.+) \|$", line)
        if m and m.group(1) in cl.KINDS:
            documented[(m.group(1), int(m.group(2)))] = [
                float(x.strip().rstrip("%")) / 100 for x in m.group(3).split("|")]
    assert len(documented) == len(calibration), "regenerate: python -m bench.claims"
    for r in calibration:
        doc = documented[(r["kind"], r["n"])]
        ours = [r[k] for k in ("edge_reproduced", "edge_contradicted", "paper_reproduced",
                               "paper_contradicted", "paper_inconclusive")]
        assert ours == pytest.approx(doc, abs=0.006), (r["kind"], r["n"])


# ------------------------------------------------------------------------ sign and direction


def test_a_sign_reversed_gain_never_reads_reproduced():
    """Difference and superiority claims of a positive gain, against reproductions whose mean
    gain is negative, at every spread and seed count: never `reproduced`."""
    rng = np.random.default_rng(7)
    for _ in range(120):
        n = int(rng.integers(2, 12))
        gain = float(rng.uniform(0.001, 0.03))
        margin = float(rng.uniform(0.001, 0.05))  # may well exceed the gain
        sd = float(rng.uniform(1e-4, 0.02))
        versus = 0.85 + rng.normal(0, 0.01, n)
        diff = rng.normal(0, sd, n)
        diff -= diff.mean() + float(rng.uniform(1e-4, 0.02))  # mean gain strictly negative
        x = versus + diff
        values = {"a": list(x), "b": list(versus)}
        cells = cells_of("s", [("m", "d", "none")], values)
        rows = evaluate([
            claim(id="diff", kind="difference", versus="b", value=gain, margin=margin),
            claim(id="sup", kind="superiority", versus="b", value=gain, margin=0,
                  margin_reason="any gain"),
        ], cells)
        for row in rows:
            assert row["estimate"] < 0
            assert row["verdict"] != "reproduced", (row, n, gain, margin, sd)


def test_sparsity_thesis_is_not_reproduced_by_a_reversed_gain():
    """The issue's case: dense 0.878, S1 0.870, S2 0.8705 (a reversed gain) with the real claims
    file: no absolute value reads reproduced, and the two gain claims are contradicted."""
    doc = cl.load_claims(claims_path("sparsity_regimes"))
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 0.002, 5)
    values = {"dense": 0.878 + shared + rng.normal(0, 3e-4, 5),
              "topk_s1": 0.870 + shared + rng.normal(0, 3e-4, 5),
              "topk_s2": 0.8705 + shared + rng.normal(0, 3e-4, 5)}
    cells = cells_of("sparsity_regimes", [("wrn28_4", "cifar10", "none")], values)
    rows = {r["claim_id"]: r for r in cl.evaluate_claims(doc, cells, study="sparsity_regimes")}
    assert rows["topk_s1_beats_dense"]["verdict"] == "contradicted"
    assert rows["topk_s2_beats_dense"]["verdict"] == "contradicted"
    assert "reversed" in rows["topk_s1_beats_dense"]["reason"]
    assert all(rows[f"{m}_val_acc"]["verdict"] != "reproduced" for m in values)


def test_sparsity_absolute_margins_imply_the_sign_of_the_gain():
    """The absolute claims' margin is half the smallest claimed gain: whenever dense's and a
    strategy's values both read reproduced, the strategy's mean is above dense's."""
    doc = cl.load_claims(claims_path("sparsity_regimes"))
    doc["claims"] = [c for c in doc["claims"] if c["kind"] == "value"]
    rng = np.random.default_rng(11)
    both = 0
    for _ in range(100):
        d, s1 = rng.uniform(0.86, 0.89, 2)
        values = {"dense": d + rng.normal(0, 0.001, 4), "topk_s1": s1 + rng.normal(0, 0.001, 4),
                  "topk_s2": s1 + rng.normal(0, 0.001, 4)}
        cells = cells_of("sparsity_regimes", [("wrn28_4", "cifar10", "none")], values)
        rows = {r["claim_id"]: r for r in cl.evaluate_claims(doc, cells)}
        if rows["dense_val_acc"]["verdict"] == rows["topk_s1_val_acc"]["verdict"] == "reproduced":
            both += 1
            assert rows["topk_s1_val_acc"]["estimate"] > rows["dense_val_acc"]["estimate"]
    assert both > 0


# ----------------------------------------------------------------------------- the verdicts


def test_value_claim_reproduced_contradicted_inconclusive():
    cells = cells_of("s", [("m", "d", "none")], {"a": [0.800, 0.801, 0.799, 0.800]})
    near, far, wide = evaluate([claim(value=0.8005)], cells), \
        evaluate([claim(value=0.9)], cells), \
        evaluate([claim(value=0.8)], cells_of("s", [("m", "d", "none")], {"a": [0.78, 0.82]}))
    assert near[0]["verdict"] == "reproduced" and near[0]["test"].startswith("TOST")
    assert near[0]["ci_low"] > 0.8005 - 0.01 and near[0]["ci_high"] < 0.8005 + 0.01
    assert far[0]["verdict"] == "contradicted" and "wholly below" in far[0]["reason"]
    assert wide[0]["verdict"].startswith("inconclusive (about ")
    assert wide[0]["seeds_needed"] > 2 and wide[0]["n"] == 2
    assert f"about {wide[0]['seeds_needed']} seeds needed" in wide[0]["verdict"]


def test_seeds_needed_would_decide_at_that_spread():
    """An inconclusive verdict's N seeds, simulated at the observed mean and spread, decide the
    claim (reproduced) at least about as often as the power it was computed for."""
    x = [0.79, 0.81, 0.802]
    row = evaluate([claim(value=0.8)], cells_of("s", [("m", "d", "none")], {"a": x}))[0]
    n = row["seeds_needed"]
    mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
    sims = np.random.default_rng(0).normal(mean, sd, size=(n, 4000))
    rate = float(np.mean(cl.decide_band(sims, 0.79, 0.81).code == 0))
    assert rate >= 0.75, (n, rate)


def test_spreadless_quantities_are_decided_exactly_only_when_declared_deterministic():
    cells = cells_of("s", [("m", "d", "none")], {"a": [3.0, 3.0, 3.0], "b": [1.0, 1.0, 1.0]})
    det = {"deterministic": True}
    rows = evaluate([
        claim(id="v", value=3.0, **det),
        claim(id="sup", kind="superiority", over=1, margin=0, margin_reason="r", **det),
        claim(id="rev", kind="superiority", method="b", versus="a", margin=0, margin_reason="r",
              **det),
    ], cells)
    by = {r["claim_id"]: r for r in rows}
    assert by["v"]["verdict"] == "reproduced" and by["v"]["test"].startswith("exact")
    assert by["sup"]["verdict"] == "reproduced" and by["sup"]["estimate"] == 2.0
    assert by["rev"]["verdict"] == "contradicted"
    # the same numbers of a measured metric: no interval, no decision
    rows = evaluate([
        claim(id="v", value=3.0),
        claim(id="sup", kind="superiority", over=1, margin=0, margin_reason="r"),
        claim(id="rev", kind="superiority", method="b", versus="a", margin=0, margin_reason="r"),
    ], cells)
    for r in rows:
        assert r["verdict"] == "inconclusive (no seed-to-seed spread)", r
        assert "no seed-to-seed spread in a measured metric" in r["reason"]
        assert r["seeds_needed"] is None and math.isnan(r["p"])
    with pytest.raises(ConfigError, match="'deterministic' must be true or false"):
        evaluate([claim(deterministic="yes", value=3.0)], cells)


def test_digits_accuracy_steps_never_decide_on_zero_spread():
    """Accuracy on 360 images moves in steps of 1/360: three seeds each one image better (or
    +1e-9 better) are not a reproduced superiority, and two identical methods are not a
    reproduced equivalence; paired_tests.csv says not testable for the same pairs."""
    base = np.array([0.9, 0.93, 0.95])
    for gain in (1 / 360, 1e-9):
        cells = cells_of("s", [("m", "d", "none")], {"a": base + gain, "b": base})
        rows = evaluate([
            claim(id="sup", kind="superiority", versus="b", margin=0, margin_reason="r"),
            claim(id="eq", kind="equivalence", versus="b", margin=0.01, margin_reason="r"),
        ], cells)
        assert all(r["verdict"] == "inconclusive (no seed-to-seed spread)" for r in rows), rows
        res = stats.paired_test(dict(enumerate(base + gain)), dict(enumerate(base)))
        assert res["status"].startswith("not testable (zero variance")
    same = evaluate([claim(id="eq", kind="equivalence", versus="b", margin=0.01,
                           margin_reason="r")],
                    cells_of("s", [("m", "d", "none")], {"a": base, "b": base}))
    assert same[0]["verdict"] == "inconclusive (no seed-to-seed spread)"


def test_discrete_accuracy_false_contradicted_rate():
    """3 seeds, paired differences of whole images (spread 0.5 image), true gain 0: a
    superiority claim (margin 0) reads contradicted at most 2.5% of the time (it read 32% when
    a spreadless sample was decided exactly)."""
    rng = np.random.default_rng(3)
    diff = np.round(rng.normal(0.0, 0.5, size=(3, 20_000))) / 360
    base = 0.9 + np.zeros_like(diff)
    d = cl.decide_greater(base + diff, 0.0, base)
    assert float(np.mean(d.code == 1)) <= 0.025
    assert float(np.mean(d.code == 0)) <= 0.05


def test_range_claim_per_group_inside_outside():
    groups = [("m", "d1", "none"), ("m", "d2", "none")]
    cells = cells_of("s", groups, {"a": [3.0, 3.1, 2.9, 3.05]})
    cells.loc[cells["dataset"] == "d2", "val_acc"] += 10.0  # d2: far above the range
    rows = evaluate([claim(kind="range", range=[2.3, 6.1], margin=0, margin_reason="r")], cells)
    assert [(r["dataset"], r["verdict"]) for r in rows] == [("d1", "reproduced"),
                                                            ("d2", "contradicted")]


def test_overlap_rule_removed_with_a_reason():
    """range_rule: overlap read reproduced ~50% of the time with the truth on the range's edge
    (mean >= low is a coin flip there); it is refused with the reason and the replacement."""
    cells = cells_of("s", [("m", "d", "none")], {"a": [3.0, 3.4, 2.6, 3.2]})
    with pytest.raises(ConfigError, match="range_rule 'overlap' was removed: it read reproduced"):
        evaluate([claim(kind="range", range=[2.3, 6.1], margin=0, margin_reason="r",
                        range_rule="overlap")], cells)
    with pytest.raises(ConfigError, match="range_rule"):
        evaluate([claim(kind="range", range=[1, 2], margin=0, margin_reason="r",
                        range_rule="touching")], cells)
    with pytest.raises(ConfigError, match="range_rule"):
        evaluate([claim(range_rule="inside", value=1)], cells)
    # the old rule at the edge (truth = low): the mean is above low half the time
    rng = np.random.default_rng(5)
    x = 2.3 + rng.normal(0, 1, size=(3, 20_000))
    d = cl.decide_band(x, 2.3, 6.1)
    assert float(np.mean(d.code == 0)) <= 0.05 + MC  # the inside rule: calibrated
    assert float(np.mean(x.mean(axis=0) >= 2.3)) > 0.45  # what overlap accepted


def test_superiority_holm_over_primary_claims_secondary_unadjusted():
    rng = np.random.default_rng(1)
    base = 0.8 + rng.normal(0, 0.01, 4)
    values = {"a": base + 0.01 + rng.normal(0, 0.003, 4), "b": base,
              "c": base + 0.012 + rng.normal(0, 0.003, 4)}
    cells = cells_of("s", [("m", "d", "none")], values, val_loss=values)
    claims = [claim(id="a_b", kind="superiority", versus="b", margin=0, margin_reason="r"),
              claim(id="c_b", kind="superiority", method="c", versus="b", margin=0,
                    margin_reason="r"),
              claim(id="loss", kind="superiority", method="c", versus="b", metric="val_loss",
                    margin=0, margin_reason="r", scope="paper",
                    where={"model": "m", "dataset": "d", "budget": "none"})]
    by = {r["claim_id"]: r for r in evaluate(claims, cells)}
    ps = [by["a_b"]["p"], by["c_b"]["p"]]
    assert [by["a_b"]["p_holm"], by["c_b"]["p_holm"]] == pytest.approx(stats.holm(ps))
    assert "Holm over 2 primary" in by["a_b"]["test"]
    assert math.isnan(by["loss"]["p_holm"]) and "secondary" in by["loss"]["test"]
    # declared primary endpoints move val_loss into the family
    by = {r["claim_id"]: r for r in evaluate(claims, cells,
                                             study_cfg={"primary_endpoints": ["val_loss"]})}
    assert math.isfinite(by["loss"]["p_holm"]) and math.isnan(by["a_b"]["p_holm"])


def test_scopes_groups_and_missing_methods():
    groups = [("m", "d", "7738"), ("m", "d", "25943")]
    cells = cells_of("s", groups, {"a": [0.8, 0.81, 0.79], "b": [0.78, 0.8, 0.77]})
    claims = [
        claim(id="thesis", kind="superiority", versus="b", margin=0, margin_reason="r"),
        claim(id="paper", scope="paper", value=0.9,
              where={"model": "mbv2", "dataset": "cifar10", "budget": "27946"}),
        claim(id="pinned", kind="difference", versus="b", value=0.02, margin=0.01,
              where={"budget": "27946"}),
        claim(id="absent", kind="superiority", method="s_topk_random", versus="b", margin=0,
              margin_reason="r"),
    ]
    rows = evaluate(claims, cells, study_cfg={"methods": ["a", "b"]})
    thesis = [r for r in rows if r["claim_id"] == "thesis"]
    assert [r["budget"] for r in thesis] == ["7738", "25943"]  # every group, named
    by = {r["claim_id"]: r for r in rows}
    assert by["paper"]["verdict"] == ("not testable (the paper's setting mbv2/cifar10/27946 is "
                                      "not in this run; its groups: m/d/7738, m/d/25943)")
    assert by["paper"]["budget"] == "27946" and by["paper"]["margin"] == 0.01
    assert by["pinned"]["verdict"].startswith("not testable (no group with budget=27946")
    assert by["absent"]["verdict"] == "not testable (method s_topk_random not in this run)"


def test_versus_at_budget_none_pairs_with_every_budget():
    cells = cells_of("s", [("m", "d", "none")], {"full": [0.9, 0.91, 0.92]})
    cells = pd.concat([cells, cells_of("s", [("m", "d", "100"), ("m", "d", "200")],
                                       {"a": [0.8, 0.82, 0.81]})])
    rows = evaluate([claim(kind="superiority", method="full", versus="a", margin=0,
                           margin_reason="r")], cells.reset_index(drop=True))
    assert [r["budget"] for r in rows] == ["100", "200"]
    assert all("full at budget none" in r["reason"] for r in rows)


def test_not_testable_when_too_few_seeds_or_metric_missing():
    cells = cells_of("s", [("m", "d", "none")], {"a": [0.8, float("nan"), float("nan")]})
    rows = evaluate([claim(value=0.8), claim(id="m2", metric="fgsm_acc", value=0.1)], cells)
    assert rows[0]["verdict"].startswith("not testable (1 value of val_acc in ok cells here")
    assert rows[1]["verdict"] == "not testable (metric fgsm_acc not in the results)"


def test_scale_by_expresses_value_and_margin_in_units_of_a_metric():
    values = {"imp": [105.0, 105.0, 105.0], "orig": [100.0, 100.0, 100.0]}
    cells = cells_of("s", [("m", "d", "none")], values, "modelled_peak_mib",
                     param_mib={"imp": [10.0] * 3, "orig": [10.0] * 3})
    c = claim(kind="difference", method="imp", versus="orig", metric="modelled_peak_mib",
              value=0.5, scale_by="param_mib", margin=0.1, deterministic=True)
    row = evaluate([c], cells)[0]
    assert row["paper_value"] == 5.0 and row["margin"] == pytest.approx(1.0)
    assert row["verdict"] == "reproduced"
    cells.loc[cells["method"] == "imp", "modelled_peak_mib"] = 115.0  # 1.5 copies, not 0.5
    assert evaluate([c], cells)[0]["verdict"] == "contradicted"


# ------------------------------------------------------------------- guards and mechanism checks


def test_guard_claims_gate_the_claims_that_name_them():
    cells = cells_of("s", [("m", "d", "none")], {"nf": [0.5, 0.52, 0.51], "bp": [0.8, 0.8, 0.81]},
                     param_reduction={"nf": [20.0] * 3, "bp": [1.0] * 3})
    guard = claim(id="acc", kind="equivalence", method="nf", versus="bp")
    smaller = claim(id="small", kind="superiority", method="nf", over=1, metric="param_reduction",
                    margin=0, margin_reason="r", given=["acc"], deterministic=True)
    by = {r["claim_id"]: r for r in evaluate([guard, smaller], cells)}
    assert by["acc"]["verdict"] == "contradicted"  # a useless exit: accuracy not maintained
    assert by["small"]["verdict"] == "contradicted"
    assert "guard claim acc is contradicted" in by["small"]["reason"]
    cells.loc[cells["method"] == "nf", "val_acc"] = [0.795, 0.81, 0.80]
    by = {r["claim_id"]: r for r in evaluate([guard, smaller], cells)}
    assert by["acc"]["verdict"].startswith("inconclusive")
    assert by["small"]["verdict"].startswith("inconclusive (guard claim acc: inconclusive")


def test_failed_mechanism_check_withholds_the_verdict():
    from bench.checks import Check, checks_table, register_checks

    study = "test_withheld_study"

    @register_checks(study, "controllers_differ")
    def controllers_differ(results):
        yield Check("controllers_differ", "a", "m", "d1", "none", 0, False,
                    "identical trajectories", "S1 != S2")
        yield Check("controllers_differ", "a", "m", "d2", "none", 0, True, "differ", "S1 != S2")

    groups = [("m", "d1", "none"), ("m", "d2", "none")]
    cells = cells_of(study, groups, {"a": [0.9, 0.91, 0.92], "b": [0.8, 0.81, 0.80]})
    doc = {"claims": [claim(kind="superiority", versus="b", margin=0, margin_reason="r",
                            requires=["controllers_differ"])]}
    cl.validate_claims(doc)
    assert cl.check_against_study(doc, study, {"methods": ["a", "b"]}, "f") == []
    rows = cl.evaluate_claims(doc, cells, study=study,
                              mechanism_checks=checks_table(study, []))
    assert rows[0]["verdict"] == ("withheld (mechanism check failed: controllers_differ "
                                  "(a seed 0: identical trajectories, expected S1 != S2))")
    assert rows[0]["reason"].startswith("verdict would be reproduced")
    assert rows[1]["dataset"] == "d2" and rows[1]["verdict"] == "reproduced"
    # a claim that requires a check its study does not declare is rejected up front
    bad = {"claims": [claim(requires=["no_such_check"])]}
    problems = cl.check_against_study(bad, study, {"methods": ["a"]}, "f")
    assert "requires mechanism check 'no_such_check'" in problems[0]
    assert "declared: controllers_differ" in problems[0]


# -------------------------------------------------------------------- validation, before jobs


def test_claims_are_checked_against_the_study_before_any_job(tmp_path, monkeypatch):
    from bench import config

    cfg = load_config([ROOT / "config" / "config.yaml"])
    bad = {"study": "restwake", "claims": [
        claim(id="typo_method", method="restwake_orignal", versus="sgd", kind="equivalence"),
        claim(id="typo_metric", method="sgd", metric="val_accc", value=0.8),
        claim(id="typo_model", method="sgd", value=0.8, scope="paper",
              where={"model": "resnet81", "dataset": "cifar10", "budget": "none"}),
    ]}  # fmt: skip
    (tmp_path / "restwake.yaml").write_text(yaml.safe_dump(bad))
    monkeypatch.setattr(config, "claims_path", lambda study: tmp_path / f"{study}.yaml")
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    msg = str(e.value)
    assert "claim 'typo_method': method 'restwake_orignal' is not a method of study restwake" in msg
    assert "fix the name" in msg
    assert "claim 'typo_metric': metric 'val_accc' is not a metric of study restwake" in msg
    assert "claim 'typo_model': where.model" in msg and "resnet81" in msg
    (tmp_path / "restwake.yaml").write_text(yaml.safe_dump(
        {"claims": [{k: v for k, v in claim().items() if k != "margin"}]}))
    with pytest.raises(ConfigError, match="claim 'c': missing required keys \\['margin'\\]"):
        check_config(cfg)


@pytest.mark.parametrize("study", STUDIES)
def test_every_claim_states_its_margin_and_its_origin(study):
    doc = cl.load_claims(claims_path(study))
    assert doc["study"] == study and doc["claims"]
    for c in doc["claims"]:
        if c.get("not_testable") is not None:
            continue
        margin, origin = cl.claim_margin(c)
        assert math.isfinite(margin), c["id"]
        assert margin >= 0 or c["kind"] == "superiority", c["id"]  # < 0: non-inferiority
        assert origin.split(":")[0] in ("from_runs", "from_std", "explicit"), c["id"]
        assert len(origin) > 20, c["id"]  # says where it comes from
    for cfg_name in ("config.yaml", "paper.yaml", "smoke.yaml"):
        cfg = check_config(load_config([ROOT / "config" / cfg_name]))
        if study in cfg["studies"]:
            assert cl.check_against_study(doc, study, cfg["studies"][study], study) == []


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_has_thesis_claims_from_methods_md(study):
    doc = cl.load_claims(claims_path(study))
    thesis = [c for c in doc["claims"] if c["scope"] == "thesis"]
    assert any(c["kind"] in cl.RELATIVE for c in thesis), study


def test_restwake_comparable_robustness_is_contradicted_by_its_own_runs():
    doc = cl.load_claims(claims_path("restwake"))
    c = next(c for c in doc["claims"] if c["id"] == "restwake_original_comparable_fgsm_to_sgd")
    row = next(r for r in cl.paper_check_rows(c) if r["check"].endswith("own runs"))
    assert row["consistent"] is False and row["note"].startswith("contradicted")
    assert "paired t-test p = 0.01243" in row["note"]


# ----------------------------------------------------------------- the default quick run


def _quick_cells(cfg, study, rng):
    """Plausible results for every cell of the default config's study (no training)."""
    s = cfg["studies"][study]
    rows = []
    for c in plan(cfg, study):
        acc = 0.9 + rng.normal(0, 0.01)
        rows.append({
            "study": study, "method": c.method, "model": c.model, "dataset": c.dataset,
            "budget": c.budget, "seed": c.seed, "status": "ok", "val_acc": acc,
            "val_loss": 0.3 + rng.normal(0, 0.01), "sym_kl": 1e-3 + abs(rng.normal(0, 1e-4)),
            "fgsm_acc": 0.3 + rng.normal(0, 0.02), "param_mib": 10.0,
            "modelled_peak_mib": 100.0 + (5.0 if c.method == "restwake_improved" else 0.0),
            "mean_weight_sparsity": 0.97 + rng.normal(0, 0.002),
            "mean_activation_sparsity": 0.985 + rng.normal(0, 0.002),
            "mean_wgrad_flops_saved": 0.97 + rng.normal(0, 0.002),
            "speedup_vs_reference": 1.0 if c.method == s["reference"] else 1.3 + rng.normal(0, .1),
            "param_reduction": 4.0, "inference_throughput_gain": 1.5 + rng.normal(0, 0.1),
        })  # fmt: skip
    return cells_frame(rows)


def test_the_default_quick_run_gives_every_study_a_thesis_verdict():
    cfg = check_config(load_config([ROOT / "config" / "config.yaml"]))
    rng = np.random.default_rng(0)
    for study in STUDIES:
        doc = cl.load_claims(claims_path(study))
        rows = cl.evaluate_claims(doc, _quick_cells(cfg, study, rng), study=study,
                                  study_cfg=cfg["studies"][study])
        decided = [r for r in rows if r["scope"] == "thesis"
                   and not r["verdict"].startswith("not testable")]
        assert decided, study
        assert all(r["dataset"] == "digits" for r in decided), study  # the group is named
        paper = [r for r in rows if r["scope"] == "paper"]
        assert all(r["verdict"].startswith("not testable") for r in paper), study


def test_paired_tests_cover_declared_comparisons_with_endpoints():
    from bench.aggregate import paired_tests_table

    values = {"ref": [0.8, 0.81, 0.82], "a": [0.82, 0.84, 0.83], "b": [0.79, 0.8, 0.82]}
    cells = cells_of("s", [("m", "d", "none")], values, val_loss=values)
    p = paired_tests_table(cells, "ref", ["val_acc", "val_loss"],
                           comparisons=[("a", "b", None), ("a", "b", "val_acc")],
                           primary=["val_acc"])
    pairs = list(zip(p["method"], p["versus"], p["metric"], p["endpoint"]))
    assert ("a", "b", "val_acc", "primary") in pairs and ("a", "b", "val_loss", "secondary") in pairs
    assert len(pairs) == len(set(pairs)) == 6  # a, b vs ref and a vs b, two metrics each
    prim = p[(p["endpoint"] == "primary") & (p["status"] == "tested")]
    assert prim["p_holm"].tolist() == pytest.approx(stats.holm(prim["p"].tolist()))
    assert p[p["endpoint"] == "secondary"]["p_holm"].isna().all()


def test_old_claim_format_is_rejected_with_the_fix(tmp_path):
    old = {"claims": [{"id": "x", "source": "T", "method": "sgd", "metric": "val_acc",
                       "value": 0.8, "tolerance": {"abs": 0.01}}]}  # fmt: skip
    path = Path(tmp_path) / "c.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="no default tolerance"):
        cl.load_claims(path)


def test_study_config_declares_comparisons_and_primary_endpoints(tmp_path, capsys):
    from bench.cli import main

    cfg = load_config([ROOT / "config" / "config.yaml"])
    cfg["studies"]["tradyn"]["comparisons"] = [["tradyn", "s_topk_random"]]
    cfg["studies"]["tradyn"]["primary_endpoints"] = ["val_acc"]
    assert check_config(cfg)["studies"]["tradyn"]["comparisons"] == [["tradyn", "s_topk_random"]]
    cfg["studies"]["tradyn"]["comparisons"] = [["tradyn", "s_tpok_random"]]
    with pytest.raises(ConfigError, match="comparisons: 's_tpok_random' is not one of the study's"):
        check_config(cfg)
    cfg["studies"]["tradyn"]["comparisons"] = [["tradyn", "s_det_rgn"]]  # registered, not run
    with pytest.raises(ConfigError, match="comparisons: 's_det_rgn' is not one of the study's"):
        check_config(cfg)
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "sparsity_regimes: 5 claims valid (3 paper value, 2 thesis superiority)" in out


def test_memory_claims_refuse_cells_run_in_another_precision():
    groups = [("m", "d", "none")]
    precision = {"a": ["fp32", "bf16", "fp32"], "b": ["fp32"] * 3}
    cells = cells_of("s", groups, {"a": [100.0, 101.0, 99.0], "b": [120.0, 121.0, 119.0]},
                     metric="peak_train_mib", precision=precision)
    mem = claim(id="mem", metric="peak_train_mib", value=100.0, margin=5, margin_reason="r")
    acc_cells = cells_of("s", groups, {"a": [0.9, 0.91, 0.9]}, precision={"a": ["bf16"] * 3})
    (row,) = evaluate([mem], cells)
    assert row["verdict"].startswith("not testable (memory claim on peak_train_mib")
    assert "bf16" in row["verdict"]
    (acc,) = evaluate([claim(value=0.9)], acc_cells)
    assert not acc["verdict"].startswith("not testable")  # accuracy claims accept bf16 cells
    cells["precision"] = "fp32"
    (row,) = evaluate([mem], cells)
    assert not row["verdict"].startswith("not testable")


def test_a_negative_superiority_margin_is_non_inferiority():
    """margin -m on a superiority claim: method - versus > -m. A method clearly better than its
    versus reads reproduced (an equivalence band would call it inconclusive or contradicted for
    being better); one clearly more than m worse reads contradicted. Other kinds keep margin >= 0."""
    rng = np.random.default_rng(3)
    base = 0.9 + rng.normal(0, 0.01, 5)
    noise = rng.normal(0, 0.002, 5)
    nonin = claim(id="ni", kind="superiority", versus="b", margin=-0.01,
                  margin_reason="not more than 1 point worse")
    for shift, verdict in ((0.03, "reproduced"), (-0.002, "reproduced"), (-0.05, "contradicted")):
        cells = cells_of("s", [("m", "d", "none")], {"a": base + shift + noise, "b": base})
        (row,) = evaluate([nonin], cells)
        assert row["verdict"] == verdict, (shift, row)
    equiv = claim(id="eq", kind="equivalence", versus="b", margin=0.01, margin_reason="r")
    cells = cells_of("s", [("m", "d", "none")], {"a": base + 0.03 + noise, "b": base})
    assert evaluate([equiv], cells)[0]["verdict"] != "reproduced"
    with pytest.raises(ConfigError, match="must be >= 0"):
        cl.validate_claims({"claims": [claim(kind="equivalence", versus="b", margin=-0.01)]})


# ------------------------------------------------------------------ issue 23: verdict rules


def test_holm_columns_is_statsmodels_holm():
    p = np.random.default_rng(0).uniform(size=(4, 50))
    ours = cl.holm_columns(p)
    for j in range(50):
        assert ours[:, j] == pytest.approx(stats.holm(p[:, j]))


def test_family_wise_false_contradicted_rate_with_holm():
    """Four primary claims, each true on its margin's edge (the worst case): unadjusted, some
    claim reads contradicted in ~10% of the reproductions; with Holm over the family (the rule
    evaluate_claims applies) at most 2.5%."""
    rng = np.random.default_rng(21)
    k, n, reps = 4, 3, REPS
    x = rng.normal(0.0, 1.0, size=(k, n, reps))
    p = np.stack([cl.decide_greater(x[i], 0.0).p_contra for i in range(k)])
    codes = np.stack([cl.decide_greater(x[i], 0.0).code for i in range(k)])
    unadjusted = float(np.mean((codes == 1).any(axis=0)))
    holm = cl.holm_columns(p)
    adjusted = np.stack([cl.decide_greater(x[i], 0.0, p_contra_decide=holm[i]).code
                         for i in range(k)])
    fwer = float(np.mean((adjusted == 1).any(axis=0)))
    assert unadjusted > 0.08
    assert fwer <= 0.025 + MC, fwer


def test_contradicted_is_holm_adjusted_over_primary_claims_only():
    """The same 95% CI wholly below the band: contradicted for a lone claim, inconclusive when
    four primary claims share the family and its Holm-adjusted p is not below 0.025, and again
    contradicted when the claims are secondary (unadjusted)."""
    vals = {"a": [0.70, 0.74, 0.72]}
    groups = [("m", f"d{i}", "none") for i in range(4)]
    cells = cells_of("s", groups, vals)
    c = claim(value=0.8, margin=0.02)
    lone = evaluate([c], cells_of("s", groups[:1], vals))[0]
    assert lone["verdict"] == "contradicted" and lone["p_contradict"] < 0.025
    rows = evaluate([c], cells)
    assert all(r["p_contradict_holm"] >= 0.025 for r in rows)
    assert all(r["verdict"] == "inconclusive (about 5 seeds needed to contradict)" for r in rows)
    assert "contradicted: Holm over 4 primary claims" in rows[0]["test"]
    assert "Holm-adjusted p" in rows[0]["reason"]
    secondary = evaluate([{**c, "scope": "paper", "where": {"model": "m", "dataset": "d0",
                                                            "budget": "none"}}], cells,
                         study_cfg={"primary_endpoints": ["val_loss"]})
    assert secondary[0]["verdict"] == "contradicted"


def test_seeds_needed_says_which_verdict_it_would_reach():
    cells = cells_of("s", [("m", "d", "none")], {"a": [0.78, 0.82, 0.80]})
    inside = evaluate([claim(value=0.8, margin=0.03)], cells)[0]
    outside = evaluate([claim(value=0.84, margin=0.02)], cells)[0]
    assert re.fullmatch(r"inconclusive \(about \d+ seeds needed to reproduce\)", inside["verdict"])
    assert re.fullmatch(r"inconclusive \(about \d+ seeds needed to contradict\)",
                        outside["verdict"])
    sup = evaluate([claim(kind="superiority", over=0.81, margin=0, margin_reason="r")], cells)[0]
    assert sup["verdict"].endswith("seeds needed to contradict)")


def test_a_claim_computed_from_our_own_model_is_a_check_not_a_reproduction():
    values = {"imp": [105.0, 105.0, 105.0], "orig": [100.0, 100.0, 100.0]}
    cells = cells_of("s", [("m", "d", "none")], values, "modelled_peak_mib",
                     param_mib={"imp": [10.0] * 3, "orig": [10.0] * 3})
    c = claim(kind="difference", method="imp", versus="orig", metric="modelled_peak_mib",
              value=0.5, scale_by="param_mib", margin=0.1, deterministic=True,
              check="the value is our memory model's")
    row = evaluate([c], cells)[0]
    assert row["verdict"] == "check (consistent)"
    assert row["reason"].startswith("a consistency check of our own model, not a reproduction")
    cells.loc[cells["method"] == "imp", "modelled_peak_mib"] = 115.0
    assert evaluate([c], cells)[0]["verdict"] == "check (inconsistent)"
    with pytest.raises(ConfigError, match="'check' must say why"):
        evaluate([{**c, "check": ""}], cells)
    with pytest.raises(ConfigError, match="is a check of our own model"):
        evaluate([{**c, "id": "k"}, claim(id="g", kind="superiority", over=1, margin=0,
                                          margin_reason="r", given=["k"])], cells)
    # the Rest-Wake claim whose 'paper' value is one fp16 copy in our own memory model
    doc = cl.load_claims(ROOT / "bench" / "studies" / "restwake" / "claims.yaml")
    by = {x["id"]: x for x in doc["claims"]}
    assert by["improved_modelled_peak_exceeds_original_by_one_fp16_copy"].get("check")


def test_value_claims_need_their_methods_mechanism_checks():
    """A value claim of a method with no `requires` is withheld where a check that the file's
    other claims of that method require failed (it read a verdict before)."""
    from bench.checks import Check, checks_table, register_checks

    study = "test_value_withheld_study"

    @register_checks(study, "mechanism_ok")
    def mechanism_ok(results):
        yield Check("mechanism_ok", "a", "m", "d", "none", 0, False, "degenerate", "works")

    cells = cells_of(study, [("m", "d", "none")], {"a": [0.9, 0.91, 0.92], "b": [0.8, 0.81, 0.8]})
    doc = {"claims": [claim(id="sup", kind="superiority", versus="b", margin=0,
                            margin_reason="r", requires=["mechanism_ok"]),
                      claim(id="val", value=0.91, margin=0.05)]}
    cl.validate_claims(doc)
    rows = cl.evaluate_claims(doc, cells, study=study, mechanism_checks=checks_table(study, []))
    by = {r["claim_id"]: r for r in rows}
    assert by["val"]["verdict"].startswith("withheld (mechanism check failed: mechanism_ok")
    assert by["val"]["reason"].startswith("verdict would be reproduced")
    # a value claim of another method is not held back by a's checks
    doc["claims"][1]["method"] = "b"
    doc["claims"][1]["value"] = 0.8
    rows = cl.evaluate_claims(doc, cells, study=study, mechanism_checks=checks_table(study, []))
    assert {r["claim_id"]: r for r in rows}["val"]["verdict"] == "reproduced"


def test_device_classes_from_provenance():
    assert cl.device_class("cpu") == "cpu"
    assert cl.device_class("cuda:0") == cl.device_class("mps") == "accelerator"
    assert cl.device_class(None) is None and cl.device_class(float("nan")) is None
    cells = cells_of("s", [("m", "d", "none")], {"a": [0.9, 0.91, 0.92]})
    c = claim(value=0.91, margin=0.05, device="accelerator")
    assert evaluate([c], cells)[0]["verdict"] == ("not testable (needs an accelerator; these "
                                                  "cells ran on a device the results do not "
                                                  "record)")
    cells["device"] = "cuda:0"
    assert evaluate([c], cells)[0]["verdict"] == "reproduced"
    with pytest.raises(ConfigError, match="device 'gpu' unknown"):
        evaluate([claim(value=0.9, device="gpu")], cells)
    # NeuroFlux's speed claims hold on accelerators
    doc = cl.load_claims(ROOT / "bench" / "studies" / "neuroflux" / "claims.yaml")
    by = {x["id"]: x for x in doc["claims"]}
    assert by["faster_than_backprop"]["device"] == by["speedup_range"]["device"] == "accelerator"


@pytest.mark.parametrize("bad", [
    {"margin": float("inf")}, {"margin": "-inf"}, {"value": float("nan")},
    {"kind": "range", "range": [float("-inf"), float("inf")], "margin": 0, "margin_reason": "r"},
    {"std": float("inf"), "n_runs": 3}, {"runs": [0.8, float("inf")]},
    {"kind": "superiority", "over": float("-inf"), "margin": 0, "margin_reason": "r"},
    {"kind": "superiority", "over": 1, "margin": float("-inf"), "margin_reason": "r"},
])  # fmt: skip
def test_non_finite_numbers_are_refused(bad):
    c = {**claim(value=0.8), **bad}
    if c["kind"] != "value":
        c.pop("value")
    with pytest.raises(ConfigError, match="finite number|must be a number|expected a number"):
        cl.validate_claims({"claims": [c]})


def test_rules_table_in_docs_is_this_simulation():
    """docs/statistics.md's second table (python -m bench.claims): each replaced rule against
    its replacement, as the simulation gives it; and what the rules promise."""
    rows = cl.calibrate_rules(reps=REPS)
    text = (ROOT / "docs" / "statistics.md").read_text()
    documented = {}
    for line in text.splitlines():
        m = re.match(r"^\| (\w+): .+ \| (\d+) \| ([\d.]+)% \| ([\d.]+)% \|$", line)
        if m and m.group(1) in cl.RULE_CASES:
            documented[(m.group(1), int(m.group(2)))] = (float(m.group(3)) / 100,
                                                         float(m.group(4)) / 100)
    assert len(documented) == len(rows), "regenerate: python -m bench.claims"
    for r in rows:
        assert (r["rule"], r["before"]) == pytest.approx(documented[(r["case"], r["n"])],
                                                         abs=0.006), r
        assert r["rule"] <= (0.025 if r["case"] != "range_edge" else 0.05) + MC, r
    by = {(r["case"], r["n"]): r for r in rows}
    assert by[("family", 3)]["before"] > 0.08  # the unadjusted family: ~9.5%
    assert by[("whole_images", 3)]["before"] > 0.25  # exact decisions on whole images: ~32%
    assert by[("range_edge", 3)]["before"] > 0.45  # range_rule overlap: ~50%
