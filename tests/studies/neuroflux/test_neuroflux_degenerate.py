"""A catalogue of degenerate NeuroFlux mechanisms: each fails a mechanism check that every claim
of the study requires, so the claims read `withheld` (issue 23, "mechanism checks that can
fail"). The results are scripted result.json documents, written to disk and aggregated by the
harness (`bench.aggregate.aggregate_study`: cells, the study's registered checks, the claims
of claims.yaml against the default config's study block), i.e. the path a real run takes; the
same documents with a live mechanism read a verdict, so every test here can fail."""

from __future__ import annotations

import pytest

from bench.aggregate import load_claims
from bench.config import claims_path
from bench.studies.neuroflux import checks
from tests.conftest import aggregate_scripted

STUDY = "neuroflux"
BUDGET = "34MiB"  # the default config's group (vgg16, digits, 34MiB)
THESIS = ("accuracy_maintained", "faster_than_backprop", "fewer_parameters_at_equal_accuracy")

# the partition of the default quick run (README): 13 units, every block above backprop's 32
ALIVE = {"block_units": "1-2,3-6,7-9,10-13", "block_batch_sizes": "64,64,128,256",
         "first_block_bstar": 128}


def _doc(method, seed, final, history, device):
    return {"schema_version": 1,
            "axes": {"study": STUDY, "method": method, "model": "vgg16", "dataset": "digits",
                     "budget": BUDGET, "seed": seed},
            "status": "ok", "final": final, "history": history,
            "provenance": {"device": device}}


def results(partition=None, nf_peak=29.4, bp_peak=30.4, device="cuda:0"):
    """Three seeds of backprop (batch 32) and NeuroFlux, whose numbers would reproduce every
    thesis claim: the exit is more accurate, NeuroFlux ~3x faster, its exit ~4x smaller. On
    "cuda:0" the peaks are the allocator's (backprop's with 10 MiB of data on the device), on
    "cpu" the modelled ones; the speed claim holds on accelerators only (claims.yaml), so on
    CPU it is not testable and the two other thesis claims are decided."""
    partition = partition or ALIVE
    cuda = device.startswith("cuda")
    docs = []
    for seed in range(3):
        bp_hist = [{"epoch": e, "val_acc": 0.8, "modelled_peak_mib": bp_peak,
                    **({"peak_alloc_mib": bp_peak + 10.0} if cuda else {})} for e in range(2)]
        docs.append(_doc("backprop", seed, {
            "val_acc": 0.90 + 0.01 * seed, "batch_size": 32, "train_wall_s": 30.0 + seed,
            "modelled_batch_memory_mib": bp_peak, "device_data_mib": 10.0, "epochs": 2},
            bp_hist, device))
        n_blocks = len(partition["block_units"].split(","))
        nf_hist = [{"epoch": e, "block": e // 2 + 1, "val_acc": 0.8, "modelled_peak_mib": nf_peak,
                    **({"measured_peak_mib": nf_peak} if cuda else {})}
                   for e in range(2 * n_blocks)]
        docs.append(_doc("neuroflux", seed, {
            **partition, "val_acc": 0.93 + 0.006 * seed - 0.002 * seed**2,
            "train_wall_s": 10.0 + 0.7 * seed - 0.2 * seed**2,
            "param_reduction": 4.0 + 0.3 * seed - 0.2 * seed**2, "n_blocks": n_blocks,
            "inference_throughput_gain": 1.5, "epochs": 2}, nf_hist, device))
    return docs


def verdicts(tmp_path, docs):
    """The harness's claims table (verdicts by claim id) and mechanism-check rows."""
    return aggregate_scripted(tmp_path, STUDY, docs, BUDGET)


def assert_withheld(by_claim, check, claims=THESIS):
    for cid in claims:
        v = by_claim[cid]
        assert v.startswith(f"withheld (mechanism check failed: {check} ("), (cid, v)


CPU_THESIS = ("accuracy_maintained", "fewer_parameters_at_equal_accuracy")  # testable on CPU


def test_every_claim_requires_the_checks_that_catch_the_catalogue():
    for c in load_claims(claims_path(STUDY))["claims"]:
        assert set(checks.REQUIRED) <= set(c["requires"]), c["id"]
    assert "most_units_above_backprop" in checks.REQUIRED
    assert "peak_within_budget" in checks.REQUIRED


def test_a_live_partition_reads_a_verdict(tmp_path):
    """The baseline of the catalogue: the same numbers with the quick run's partition are
    decided (not withheld), and every required check passes."""
    by_claim, mech = verdicts(tmp_path, results())
    for cid in THESIS:
        assert by_claim[cid] == "reproduced", (cid, by_claim[cid])
    req = mech[mech["check"].isin(checks.REQUIRED)]
    assert len(req) == 3 * 3 + 6 and req["passed"].all(), req  # 3 partition checks x 3 seeds
    majority = mech[mech["check"] == "most_units_above_backprop"].iloc[0]
    assert majority["value"].startswith("13 of 13 units above backprop's 32")
    # on CPU: the modelled peaks within the budget, the two claims CPU can test decided
    by_claim, mech = verdicts(tmp_path / "cpu", results(device="cpu"))
    for cid in CPU_THESIS:
        assert by_claim[cid] == "reproduced", (cid, by_claim[cid])
    assert by_claim["faster_than_backprop"].startswith("not testable (needs an accelerator")
    peak = mech[mech["check"] == "peak_within_budget"]
    assert peak["passed"].all() and len(peak) == 6
    assert set(peak["value"]) == {"cpu: modelled peak 29.4 MiB", "cpu: modelled peak 30.4 MiB"}


def test_unit_one_alone_then_the_rest_below_backprop_is_withheld(tmp_path):
    """Unit 1 alone at 128, units 2-13 at 16, backprop at 32: two blocks, the first within
    half its b* (128 >= 128/2), the peak within the budget: the checks required before all
    pass, while 12 of 13 units train at half backprop's batch."""
    degenerate = {"block_units": "1-1,2-13", "block_batch_sizes": "128,16",
                  "first_block_bstar": 128}
    by_claim, mech = verdicts(tmp_path, results(degenerate))
    assert_withheld(by_claim, "most_units_above_backprop")
    rows = mech[mech["method"] == "neuroflux"].set_index(["check", "seed"])
    for seed in range(3):
        assert rows.loc[("two_blocks", seed), "passed"]
        assert rows.loc[("first_block_batch", seed), "passed"]
        row = rows.loc[("most_units_above_backprop", seed)]
        assert not row["passed"]
        assert row["value"] == "1 of 13 units above backprop's 32 (1-1@128 | 2-13@16)"
    # the same partition with the rest at backprop's own batch gives no larger batch either
    equal = {**degenerate, "block_batch_sizes": "128,32"}
    by_claim, _ = verdicts(tmp_path / "equal", results(equal))
    assert_withheld(by_claim, "most_units_above_backprop")


def test_decreasing_batches_below_backprop_are_withheld(tmp_path):
    """Batches that halve with depth down to below backprop's for most of the network."""
    halving = {"block_units": "1-3,4-6,7-13", "block_batch_sizes": "128,64,16",
               "first_block_bstar": 256}
    by_claim, mech = verdicts(tmp_path, results(halving))
    assert_withheld(by_claim, "most_units_above_backprop")
    assert not mech[mech["check"] == "batch_non_decreasing"]["passed"].any()


def test_the_paper_configs_decrease_is_not_withheld(tmp_path):
    """Why `batch_non_decreasing` is reported, not required (README, "Mechanism checks"): the
    first-unit rule gives VGG-16's light stem unit a block of its own at 512 and the next block
    128 at the paper config's 320 MiB (backprop 32). Every unit stays above backprop's batch,
    so the claims are decided."""
    paper = {"block_units": "1-1,2-5,6-7,8-9,10-12,13-13",
             "block_batch_sizes": "512,128,512,512,512,1024", "first_block_bstar": 512}
    by_claim, mech = verdicts(tmp_path, results(paper))
    assert not mech[mech["check"] == "batch_non_decreasing"]["passed"].any()
    for cid in THESIS:
        assert by_claim[cid] == "reproduced", (cid, by_claim[cid])


@pytest.mark.parametrize("method", ["neuroflux", "backprop"])
def test_a_modelled_peak_above_the_budget_is_withheld_on_cpu(tmp_path, method):
    """On CPU the budget is a modelled one: a modelled 99 MiB against the 34 MiB budget fails
    `peak_within_budget` (it passed as "cpu: modelled" before), naming what was compared."""
    docs = results(nf_peak=99.0, device="cpu") if method == "neuroflux" else \
        results(bp_peak=99.0, device="cpu")
    by_claim, mech = verdicts(tmp_path, docs)
    if method == "neuroflux":
        assert_withheld(by_claim, "peak_within_budget", CPU_THESIS)
    else:  # the claim on NeuroFlux alone is lost through its guard, the claim on both sides
        assert_withheld(by_claim, "peak_within_budget", ["accuracy_maintained"])
        assert by_claim["fewer_parameters_at_equal_accuracy"].startswith(
            "not testable (guard claim accuracy_maintained: withheld (mechanism check failed: "
            "peak_within_budget (backprop seed 0: cpu: modelled peak 99.0 MiB")
    peak = mech[(mech["check"] == "peak_within_budget") & (mech["method"] == method)]
    assert not peak["passed"].any()
    assert (peak["value"] == "cpu: modelled peak 99.0 MiB").all()
    assert peak["detail"].str.contains("modelled, not measured").all()
    assert (peak["expected"] == "<= 34 MiB").all()


def test_no_modelled_peak_on_cpu_fails_rather_than_passes(tmp_path):
    docs = results(device="cpu")
    for d in docs:
        if d["axes"]["method"] == "neuroflux" and d["axes"]["seed"] == 1:
            for h in d["history"]:
                del h["modelled_peak_mib"]
    by_claim, mech = verdicts(tmp_path, docs)
    assert_withheld(by_claim, "peak_within_budget", CPU_THESIS)
    row = mech[(mech["check"] == "peak_within_budget") & (mech["seed"] == 1)
               & (mech["method"] == "neuroflux")].iloc[0]
    assert not row["passed"] and row["value"] == "cpu: no modelled peak recorded"
