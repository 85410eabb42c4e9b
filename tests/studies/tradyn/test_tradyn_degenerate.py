"""A catalogue of degenerate TraDy mechanisms: each fails a mechanism check its claims require,
so they read `withheld` (issue 23, "mechanism checks that can fail"). The results are scripted
result.json documents of the default config's group, written to disk and aggregated by the
harness (`bench.aggregate.aggregate_study`: cells, the study's registered checks, the claims of
claims.yaml against the default config's study block), i.e. the path a real run takes; the same
documents with a live mechanism read a verdict, so every test here can fail."""

from __future__ import annotations

from bench.studies.tradyn import checks  # noqa: F401  (registers the study's checks)
from tests.conftest import aggregate_scripted

STUDY = "tradyn"
BUDGET = 25943.0  # the default config's one budget, in units
FULL = 346744.0  # memory units of every conv channel (MobileNetV2-w0.35, 32x32; README)
TOPK_POOL = 250000.0  # a top-K pool that leaves some layers out (K = 38 of 52 in the quick run)
EPOCHS = 4
ACC = {"full_ft": 0.90, "tradyn": 0.80, "d_full_random": 0.70, "d_det_rgn": 0.71,
       "s_topk_random": 0.72}  # TraDy ahead of every strategy its claims name
STATIC = {"s_topk_random"}
TOPK = {"tradyn", "s_topk_random"}
TRADYN_THESIS = ("tradyn_beats_d_full_random", "tradyn_beats_d_det_rgn",
                 "tradyn_beats_s_topk_random", "full_ft_beats_tradyn")


def _doc(method, seed, budget, final, history):
    return {"schema_version": 1,
            "axes": {"study": STUDY, "method": method, "model": "mobilenetv2",
                     "dataset": "digits", "budget": budget, "seed": seed},
            "status": "ok", "final": {"epochs": EPOCHS, **final}, "history": history,
            "provenance": {"device": "cpu"}}


def results(pool=None, used=None, k=None):
    """Three seeds of the default config's five methods. `pool`, `used` (budget utilisation per
    epoch) and `k` (ranking K) override TraDy's live mechanism."""
    docs = []
    for seed in range(3):
        noise = (0.004, -0.003, 0.006)[seed]
        for method, acc in ACC.items():
            val = acc + noise + 0.002 * seed * (method == "tradyn")
            if method == "full_ft":
                docs.append(_doc(method, seed, "none", {"val_acc": val},
                                 [{"epoch": e, "val_acc": val} for e in range(EPOCHS)]))
                continue
            p = (pool if method == "tradyn" and pool is not None
                 else TOPK_POOL if method in TOPK else FULL)
            u = used if method == "tradyn" and used is not None else [0.9996] * EPOCHS
            history = []
            for e in range(EPOCHS):
                selected = u[e] * BUDGET
                history.append({
                    "epoch": e, "val_acc": val, "budget_units": BUDGET,
                    "budget_utilisation": u[e], "selected_memory_units": selected,
                    "pool_memory_units": p, "pool_taken": float(selected >= p),
                    "selection_id": f"{method}-{seed}" + ("" if method in STATIC else f"-{e}")})
            final = {"val_acc": val, "selection_mode": "static" if method in STATIC else "dynamic",
                     "selection_rule": "rgn" if method == "d_det_rgn" else "random",
                     "selection_pool": "topk" if method in TOPK else "all",
                     "full_memory_units": FULL}
            if method in TOPK:
                final.update(ranking_k=float(k if k is not None and method == "tradyn" else 38),
                             conv_layers=52.0)
            docs.append(_doc(method, seed, str(int(BUDGET)), final, history))
    return docs


def verdicts(tmp_path, docs):
    """The harness's verdicts by claim id (the budgeted group) and its mechanism-check rows."""
    return aggregate_scripted(tmp_path, STUDY, docs, str(int(BUDGET)))


def test_a_live_mechanism_reads_a_verdict(tmp_path):
    """The baseline of the catalogue: every TraDy thesis claim is decided, every check passes."""
    by_claim, mech = verdicts(tmp_path, results())
    for cid in TRADYN_THESIS:
        assert by_claim[cid] == "reproduced", (cid, by_claim[cid])
    assert mech["passed"].all(), mech[~mech["passed"]]
    assert set(mech["check"]) == {"budget_used", "selection_dynamics", "topk_restricts"}


def test_a_top_k_pool_of_the_whole_network_is_withheld(tmp_path):
    """A ranking that kept every layer (K = 52 of 52): TraDy's pool is D-Full-Random's, its
    selections are D-Full-Random's; budget and reselection are alive, the restriction is not."""
    by_claim, mech = verdicts(tmp_path, results(pool=FULL, k=52))
    for cid in TRADYN_THESIS:
        assert by_claim[cid].startswith("withheld (mechanism check failed: topk_restricts "
                                        "(tradyn seed 0: pool 346744 of 346744 units"), cid
    failed = mech[~mech["passed"]]
    assert set(failed["check"]) == {"topk_restricts"} and set(failed["method"]) == {"tradyn"}
    assert len(failed) == 3  # every seed


def test_a_whole_network_pool_without_a_ranking_is_withheld(tmp_path):
    """Option `ranking: all` (no ranking file, no K recorded): the same degenerate pool."""
    docs = results(pool=FULL)
    for d in docs:
        if d["axes"]["method"] == "tradyn":
            del d["final"]["ranking_k"], d["final"]["conv_layers"]
    by_claim, _ = verdicts(tmp_path, docs)
    for cid in TRADYN_THESIS:
        assert "topk_restricts (tradyn seed 0: pool 346744 of 346744 units (100.0%), K not " \
            "recorded" in by_claim[cid], cid


def test_a_pool_used_up_at_40_percent_is_withheld(tmp_path):
    """The selection stops at 40% of the budget every epoch and the cells say the pool was
    taken whole (pool_memory_units = what was selected): TraDy trained at 40% of the budget it
    is compared at, which passed before on the "or all of its pool" rule."""
    used = [0.4] * EPOCHS
    by_claim, mech = verdicts(tmp_path, results(pool=0.4 * BUDGET, used=used))
    for cid in TRADYN_THESIS:
        assert by_claim[cid].startswith("withheld (mechanism check failed: budget_used (tradyn "
                                        "seed 0: min 0.4000 (epoch 0); the whole pool fit the "
                                        "budget in 4 of 4 epochs"), (cid, by_claim[cid])


def test_a_selection_that_stops_early_is_withheld(tmp_path):
    """The same 40% with a pool it had not used up: the selection stopped early."""
    by_claim, mech = verdicts(tmp_path, results(used=[0.9996, 0.4, 0.9996, 0.9996]))
    row = mech[(mech["check"] == "budget_used") & (mech["method"] == "tradyn")].iloc[0]
    assert not row["passed"]
    assert "epoch 1: 0.4000 (stopped at 10377.2 of a pool of 250000 units)" in row["detail"]
    for cid in TRADYN_THESIS:
        assert by_claim[cid].startswith("withheld (mechanism check failed: budget_used"), cid
