"""bench.aggregate: result.json files (built per docs/contracts.md) -> the study's CSV tables."""

import json
import math
import random
import re
import time

import pandas as pd
import pytest
import yaml

from bench import aggregate as agg
from bench import stats
from bench.config import ROOT
from bench.errors import BenchError, ConfigError

RW_VAL_ACC = {
    "sgd": [0.8263, 0.8311, 0.8384],
    "restwake_original": [0.8314, 0.8313, 0.8228],
    "restwake_improved": [0.8266, 0.8333, 0.8303],
}
RW_PEAK = {
    "sgd": [370.66, 464.74, 465.07],
    "restwake_original": [464.19, 464.82, 466.36],
    "restwake_improved": [483.93, 487.37, 486.59],
}


def make_result(
    study="restwake",
    method="sgd",
    model="resnet18_imagenet_stem",
    dataset="cifar10",
    budget="none",
    seed=0,
    *,
    status="ok",
    val_acc=0.8,
    val_loss=0.5,
    epochs=3,
    extra_final=None,
    extra_history=None,
    peak=None,
    reference="sgd",
):
    """A result.json dict following the contract (schema_version 1)."""
    cell_id = f"{study}/{method}/{model}/{dataset}/{budget}/s{seed}"
    history = []
    for e in range(epochs):
        h = {
            "epoch": e, "phase": "rest" if e % 2 else "wake",
            "train_loss": 1.0 / (e + 1), "train_acc": 0.5 + 0.1 * e,
            "val_loss": val_loss + 0.1 * (epochs - 1 - e),
            "val_acc": val_acc - 0.01 * (epochs - 1 - e),
            "lr": 0.01, "epoch_s": 3.0, "train_images_per_s": 460.0,
            "peak_alloc_mib": None, "peak_reserved_mib": None,
            "activation_mib": 12.5, "modelled_peak_mib": 20.0 + seed,
            "note_text": "a string metric",
        }  # fmt: skip
        h.update(extra_history or {})
        history.append(h)
    final = {"val_acc": val_acc, "val_loss": val_loss, "train_loss": 0.1, "train_acc": 0.97,
             "epochs": epochs}  # fmt: skip
    final.update(extra_final or {})
    ok = status == "ok"
    return {
        "schema_version": 1,
        "cell_id": cell_id,
        "axes": {"study": study, "method": method, "model": model, "dataset": dataset,
                 "budget": budget, "seed": seed},  # fmt: skip
        "status": status,
        "reason": None if ok else f"{status} at epoch 1",
        "config": {"study": study, "method": method, "reference": reference, "seed_index": seed,
                   "metrics": ["val_acc", "val_loss"]},  # fmt: skip
        "config_hash": f"{abs(hash(cell_id)) % 16**12:012x}",
        "history": history if ok else history[:1],
        "final": final if ok else {},
        "memory": {"param_mib": 2.7, "grad_mib": 2.7, "optimizer_state_mib": 2.7,
                   "activation_mib": 12.5, "method_buffer_mib": 0.0,
                   "modelled_peak_mib": 20.0 + seed, "peak_alloc_mib": peak,
                   "peak_reserved_mib": None if peak is None else peak + 10, "batch_size": 128},
        "compute": {"params": 700000, "forward_flops_per_image": 1.1e7,
                    "backward_flops_per_image": 2.2e7, "weight_grad_flops_per_image": 1.1e7,
                    "image_shape": [3, 32, 32]},
        "timing": {"train_s": 15.0, "eval_s": 1.0, "total_s": 18.0, "train_images_per_s": 480.0,
                   "eval_images_per_s": 3000.0, "timed_steps": 110, "warmup_steps": 5},
        "provenance": {"git_sha": "abc", "git_dirty": False, "device": "cpu"},
        "mlflow": {"tracking_uri": "sqlite:///results/mlflow.db", "experiment_id": "1",
                   "run_id": f"run-{method}-{seed}"},
    }  # fmt: skip


def write_result(root, result):
    a = result["axes"]
    path = (
        root / a["study"] / "cells" / a["method"] / a["model"] / a["dataset"] / str(a["budget"])
        / f"s{a['seed']}" / "result.json"
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


def restwake_results(overrides=None):
    overrides = overrides or {}
    out = []
    for method, accs in RW_VAL_ACC.items():
        for seed, acc in enumerate(accs):
            kw = dict(val_acc=acc, val_loss=0.5 + 0.01 * seed, peak=RW_PEAK[method][seed])
            if method != "sgd":
                kw["extra_final"] = {"kl_sym": 0.0004 * (seed + 1), "rest_epochs": seed}
            kw.update(overrides.get((method, seed), {}))
            out.append(make_result(method=method, seed=seed, **kw))
    return out


RW_CLAIMS = {
    "study": "restwake",
    "paper": {"title": "Rest-Wake training", "citation": "MDPI, 2025"},
    "claims": [
        {"id": "sgd_val_acc", "description": "SGD final val acc", "source": "Table 2",
         "kind": "value", "scope": "thesis", "method": "sgd", "metric": "val_acc",
         "value": 0.8319, "margin": "from_runs", "runs": [0.8263, 0.8311, 0.8384]},
        {"id": "sgd_peak", "source": "Table 2", "kind": "value", "scope": "paper",
         "method": "sgd", "metric": "peak_alloc_mib",
         "where": {"model": "resnet18_imagenet_stem", "dataset": "cifar10", "budget": "none"},
         "value": 433.49, "std": 52.34, "n_runs": 3, "margin": "from_std",
         "runs": [370.66, 464.74, 465.07]},
        {"id": "improved_acc_range", "source": "Abstract", "kind": "range", "scope": "thesis",
         "method": "restwake_improved", "metric": "val_acc", "range": [0.85, 0.9], "margin": 0,
         "margin_reason": "the range as stated"},
        {"id": "improved_equivalent", "source": "Section 5", "kind": "equivalence",
         "scope": "thesis", "method": "restwake_improved", "versus": "sgd", "metric": "val_acc",
         "margin": 0.01, "margin_reason": "within 1 point", "stated_p": 0.0919,
         "runs": [0.8266, 0.8333, 0.8303], "versus_runs": [0.8263, 0.8311, 0.8384]},
        {"id": "missing_method", "source": "Table 9", "kind": "value", "scope": "thesis",
         "method": "nonexistent", "metric": "val_acc", "value": 0.5, "margin": 0.01,
         "margin_reason": "a test"},
    ],
}  # fmt: skip


def run_study(
    tmp_path, results, claims=RW_CLAIMS, reference="sgd", metrics=("val_acc", "val_loss")
):
    root = tmp_path / "results"
    paths = [write_result(root, r) for r in results]
    claims_path = tmp_path / "claims.yaml"
    if claims is not None:
        claims_path.write_text(yaml.safe_dump(claims, sort_keys=False))
    out = root / "restwake" / "tables"
    written = agg.aggregate_study(paths, reference, list(metrics), claims_path, out)
    tables = {k: pd.read_csv(p, dtype={"budget": str}) for k, p in written.items()}
    return written, tables, paths


# ----------------------------------------------------------------------------------- columns


def test_every_table_has_the_contract_columns(tmp_path):
    written, t, _ = run_study(tmp_path, restwake_results())
    assert set(written) == set(agg.TABLES)
    for name, path in written.items():
        assert path.name == f"{name}.csv" and path.parent.name == "tables"
    assert list(t["cells"].columns) == [
        "study", "method", "model", "dataset", "budget", "seed", "status", "reason",
        "config_hash", "mlflow_run_id", "epochs",
        "val_acc", "val_loss", "train_loss", "train_acc", "kl_sym", "rest_epochs",
        "param_mib", "activation_mib", "modelled_peak_mib", "peak_alloc_mib", "peak_reserved_mib",
        "peak_train_mib", "peak_eval_mib", "forward_flops_per_image", "backward_flops_per_image", "weight_grad_flops_per_image",
        "train_images_per_s", "eval_images_per_s", "train_s", "total_s",
    ]  # fmt: skip
    assert list(t["history"].columns) == [
        "study", "method", "model", "dataset", "budget", "seed", "epoch", "phase",
        "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s", "train_images_per_s",
        "activation_mib", "modelled_peak_mib",
    ]  # fmt: skip  (peak_*: all null -> not numeric; note_text: a string)
    assert list(t["summary"].columns) == [
        "study", "method", "model", "dataset", "budget", "metric", "mean", "std", "ci_low",
        "ci_high", "n",
    ]  # fmt: skip
    assert list(t["paired_tests"].columns) == [
        "study", "method", "versus", "model", "dataset", "budget", "metric", "endpoint",
        "n_pairs", "mean_method", "mean_versus", "mean_diff", "diff_ci_low", "diff_ci_high", "t",
        "p", "p_holm", "d_z", "status",
    ]  # fmt: skip
    assert list(t["memory_summary"].columns) == [
        "study", "method", "model", "dataset", "budget", "metric", "mean", "std", "min", "max", "n",
    ]  # fmt: skip
    assert list(t["claims"].columns) == [
        "claim_id", "study", "kind", "scope", "method", "versus", "model", "dataset", "budget",
        "metric", "paper_value", "paper_low", "paper_high", "margin", "margin_origin",
        "estimate", "ci_low", "ci_high", "test", "p", "p_holm", "p_contradict",
        "p_contradict_holm", "n", "seeds_used", "seeds_needed", "verdict", "reason", "device",
        "description", "source",
    ]  # fmt: skip
    assert list(t["paper_checks"].columns) == [
        "claim_id", "check", "stated", "recomputed", "consistent", "note",
    ]  # fmt: skip


def test_cells_rows_sorted_and_values(tmp_path):
    results = restwake_results()
    random.Random(0).shuffle(results)
    _, t, _ = run_study(tmp_path, results)
    c = t["cells"]
    assert len(c) == 9
    assert list(zip(c["method"], c["seed"])) == [
        (m, s) for m in ("restwake_improved", "restwake_original", "sgd") for s in range(3)
    ]
    row = c[(c["method"] == "sgd") & (c["seed"] == 1)].iloc[0]
    assert row["val_acc"] == 0.8311 and row["peak_alloc_mib"] == 464.74
    assert row["mlflow_run_id"] == "run-sgd-1" and row["epochs"] == 3
    assert row["budget"] == "none" and row["status"] == "ok" and pd.isna(row["reason"])
    assert pd.isna(row["kl_sym"])  # method-specific column, empty for the reference
    assert c[c["method"] == "restwake_original"]["kl_sym"].tolist() == pytest.approx(
        [0.0004, 0.0008, 0.0012]
    )
    assert row["forward_flops_per_image"] == 1.1e7 and row["total_s"] == 18.0


def test_history_rows(tmp_path):
    _, t, _ = run_study(tmp_path, restwake_results())
    h = t["history"]
    assert len(h) == 9 * 3
    first = h.iloc[:3]
    assert first["method"].tolist() == ["restwake_improved"] * 3
    assert first["epoch"].tolist() == [0, 1, 2]
    assert first["phase"].tolist() == ["wake", "rest", "wake"]
    assert first["val_acc"].tolist() == pytest.approx([0.8266 - 0.02, 0.8266 - 0.01, 0.8266])


# --------------------------------------------------------------------------------- summary


def test_summary_values_by_hand(tmp_path):
    _, t, _ = run_study(tmp_path, restwake_results())
    s = t["summary"]
    # study metrics first, then the extras that are present
    assert s[s["method"] == "sgd"]["metric"].tolist() == [
        "val_acc", "val_loss", "train_loss", "train_acc", "modelled_peak_mib", "activation_mib",
        "peak_alloc_mib", "train_images_per_s",
    ]  # fmt: skip
    row = s[(s["method"] == "sgd") & (s["metric"] == "val_acc")].iloc[0]
    x = RW_VAL_ACC["sgd"]
    mean = sum(x) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / 2)
    half = math.sqrt(2 * 0.95**2 / (1 - 0.95**2)) * sd / math.sqrt(3)  # t(0.975, 2) closed form
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(mean, rel=1e-12)
    assert row["std"] == pytest.approx(sd, rel=1e-9)
    assert row["ci_low"] == pytest.approx(mean - half, rel=1e-9)
    assert row["ci_high"] == pytest.approx(mean + half, rel=1e-9)
    peak = s[(s["method"] == "sgd") & (s["metric"] == "peak_alloc_mib")].iloc[0]
    assert round(peak["std"], 2) == 54.41


def test_non_ok_cells_do_not_count(tmp_path):
    results = restwake_results({("restwake_original", 2): {"status": "diverged"}})
    _, t, _ = run_study(tmp_path, results)
    c = t["cells"]
    bad = c[(c["method"] == "restwake_original") & (c["seed"] == 2)].iloc[0]
    assert bad["status"] == "diverged" and bad["reason"] == "diverged at epoch 1"
    assert pd.isna(bad["val_acc"]) and bad["epochs"] == 1  # no final: epochs = history entries
    s = t["summary"]
    row = s[(s["method"] == "restwake_original") & (s["metric"] == "val_acc")].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx((0.8314 + 0.8313) / 2)
    m = t["memory_summary"]
    mrow = m[(m["method"] == "restwake_original") & (m["metric"] == "peak_alloc_mib")].iloc[0]
    assert mrow["n"] == 2 and mrow["min"] == 464.19 and mrow["max"] == 464.82
    p = t["paired_tests"]
    prow = p[(p["method"] == "restwake_original") & (p["metric"] == "val_acc")].iloc[0]
    assert prow["n_pairs"] == 2 and prow["status"] == "not testable (n=2 pairs < 3)"
    assert pd.isna(prow["p"]) and pd.isna(prow["p_holm"])
    assert prow["mean_diff"] == pytest.approx((0.8314 + 0.8313) / 2 - (0.8263 + 0.8311) / 2)


def test_memory_summary(tmp_path):
    _, t, _ = run_study(tmp_path, restwake_results())
    m = t["memory_summary"]
    assert m[m["method"] == "sgd"]["metric"].tolist() == list(agg.MEMORY_COLUMNS)
    row = m[(m["method"] == "sgd") & (m["metric"] == "peak_alloc_mib")].iloc[0]
    assert row["min"] == 370.66 and row["max"] == 465.07 and row["n"] == 3
    assert row["mean"] == pytest.approx(433.49)
    reserved = m[(m["method"] == "sgd") & (m["metric"] == "peak_reserved_mib")].iloc[0]
    assert reserved["max"] == pytest.approx(475.07)


# ----------------------------------------------------------------------------- paired tests


def test_paired_tests_and_holm_by_hand(tmp_path):
    _, t, _ = run_study(tmp_path, restwake_results())
    p = t["paired_tests"]
    assert len(p) == 4  # 2 methods x 2 metrics; the reference is not tested against itself
    assert set(p["versus"]) == {"sgd"}
    # primary endpoints default to the metrics of the thesis claims: val_acc, not val_loss
    assert p.set_index("metric")["endpoint"].to_dict() == {"val_acc": "primary",
                                                          "val_loss": "secondary"}
    assert p["method"].tolist() == ["restwake_improved"] * 2 + ["restwake_original"] * 2
    assert p["metric"].tolist() == ["val_acc", "val_loss"] * 2
    acc = p[p["metric"] == "val_acc"].set_index("method")
    for method in ("restwake_improved", "restwake_original"):
        a, b = RW_VAL_ACC[method], RW_VAL_ACC["sgd"]
        d = [x - y for x, y in zip(a, b)]
        md = sum(d) / 3
        sd = math.sqrt(sum((x - md) ** 2 for x in d) / 2)
        tt = md / (sd / math.sqrt(3))
        pp = 1 - abs(tt) / math.sqrt(2 + tt * tt)  # df=2 closed form
        assert acc.loc[method, "t"] == pytest.approx(tt, rel=1e-9)
        assert acc.loc[method, "p"] == pytest.approx(pp, rel=1e-9)
        assert acc.loc[method, "d_z"] == pytest.approx(md / sd, rel=1e-9)
        assert acc.loc[method, "status"] == "tested"
    # val_loss: sgd and both methods get 0.5 + 0.01 * seed -> all differences exactly zero
    loss = p[p["metric"] == "val_loss"]
    assert loss["status"].str.contains("all differences are exactly zero").all()
    # Holm over the 2 tested rows: p_(1) * 2, max(p_(1) * 2, p_(2))
    ps = sorted(acc["p"])
    expected = {ps[0]: min(1, 2 * ps[0]), ps[1]: min(1, max(2 * ps[0], ps[1]))}
    for _, row in acc.iterrows():
        assert row["p_holm"] == pytest.approx(expected[row["p"]], rel=1e-12)


def test_missing_cell_is_a_seed_mismatch_error(tmp_path):
    results = [
        r for r in restwake_results()
        if not (r["axes"]["method"] == "restwake_improved" and r["axes"]["seed"] == 1)
    ]  # fmt: skip
    with pytest.raises(stats.SeedMismatchError) as e:
        run_study(tmp_path, results)
    msg = str(e.value)
    assert isinstance(e.value, BenchError)
    assert "restwake_improved has seeds [0, 2] but reference sgd has [0, 1, 2]" in msg
    assert "missing for restwake_improved: [1]" in msg
    assert "run the missing cells or remove them" in msg
    assert "cifar10" in msg  # names the group


def test_budget_groups_natural_order_and_reference_at_budget_none(tmp_path):
    results = []
    for seed in range(3):
        results.append(make_result("tradyn", "full_ft", "mbv2", "cifar10", "none", seed,
                                   val_acc=0.92 + 0.001 * seed))  # fmt: skip
        for b, base in (("93696", 0.90), ("27946", 0.88), ("66592", 0.89)):
            results.append(make_result("tradyn", "tradyn", "mbv2", "cifar10", b, seed,
                                       val_acc=base + 0.002 * seed * seed))  # fmt: skip
    claims = {"study": "tradyn", "claims": [
        {"id": "tradyn_27946", "source": "Table 1", "kind": "value", "scope": "thesis",
         "method": "tradyn", "metric": "val_acc", "where": {"budget": 27946}, "value": 0.8988,
         "std": 0.0019, "n_runs": 3, "margin": "from_std"},
        {"id": "tradyn_any", "source": "Table 1", "kind": "value", "scope": "thesis",
         "method": "tradyn", "metric": "val_acc", "value": 0.9, "margin": 0.05,
         "margin_reason": "a test"}]}  # fmt: skip
    _, t, _ = run_study(tmp_path, results, claims=claims, reference="full_ft", metrics=["val_acc"])
    c = t["cells"]
    budgets = c[c["method"] == "tradyn"]["budget"].tolist()
    assert budgets == ["27946"] * 3 + ["66592"] * 3 + ["93696"] * 3
    p = t["paired_tests"]
    assert p["budget"].tolist() == ["27946", "66592", "93696"]
    assert (p["status"] == "tested").all()
    assert p["mean_versus"].tolist() == pytest.approx([0.921] * 3)
    assert p["p_holm"].notna().all()
    cl = t["claims"]
    one = cl[cl["claim_id"] == "tradyn_27946"].iloc[0]
    assert one["budget"] == "27946" and one["n"] == 3
    assert one["estimate"] == pytest.approx(0.88 + 0.002 * 5 / 3)
    # 95% CI [0.873, 0.894] wholly below 0.8988 - 0.0047 (the paper's own 95% band): alone it
    # would be contradicted, but val_acc is the primary endpoint (the thesis claim's metric) and
    # `contradicted` is Holm-adjusted over the 4 primary claim rows
    assert one["p_contradict"] < 0.025
    fam = cl[cl["p_contradict"].notna()]
    assert len(fam) == 4 and "contradicted: Holm over 4 primary claims" in one["test"]
    assert fam["p_contradict_holm"].tolist() == pytest.approx(
        stats.holm(fam["p_contradict"].tolist()))
    assert one["p_contradict_holm"] >= 0.025
    assert one["verdict"] == "inconclusive (about 5 seeds needed to contradict)"
    assert one["margin"] == pytest.approx(stats.mean_halfwidth(0.0019, 3))
    # a thesis claim without `where` is evaluated in every group, the group named
    anyb = cl[cl["claim_id"] == "tradyn_any"]
    assert anyb["budget"].tolist() == ["27946", "66592", "93696"]
    assert all(v.startswith(("reproduced", "inconclusive")) for v in anyb["verdict"])


# ----------------------------------------------------------------------------------- claims


def test_claims_and_paper_checks(tmp_path):
    _, t, _ = run_study(tmp_path, restwake_results())
    cl = t["claims"].set_index("claim_id")
    assert list(cl.index) == [c["id"] for c in RW_CLAIMS["claims"]]
    acc = cl.loc["sgd_val_acc"]
    assert acc["estimate"] == pytest.approx(sum(RW_VAL_ACC["sgd"]) / 3)
    assert acc["verdict"] == "reproduced" and acc["n"] == 3
    assert acc["margin"] == pytest.approx(stats.mean_halfwidth(0.0060934, 3), rel=1e-3)
    assert acc["margin_origin"].startswith("from_runs")
    assert acc["model"] == "resnet18_imagenet_stem" and acc["budget"] == "none"
    assert acc["test"].startswith("TOST") and acc["p"] < 0.05
    assert acc["ci_low"] > 0.8319 - acc["margin"] and acc["ci_high"] < 0.8319 + acc["margin"]
    peak = cl.loc["sgd_peak"]
    assert peak["paper_value"] == 433.49 and peak["scope"] == "paper"
    assert peak["margin"] == pytest.approx(stats.mean_halfwidth(52.34, 3))
    assert peak["verdict"] == "reproduced"
    rng = cl.loc["improved_acc_range"]
    assert rng["paper_low"] == 0.85 and rng["paper_high"] == 0.9 and pd.isna(rng["paper_value"])
    assert rng["verdict"] == "contradicted" and "wholly below" in rng["reason"]
    eq = cl.loc["improved_equivalent"]
    assert eq["versus"] == "sgd" and eq["kind"] == "equivalence"
    diffs = [a - b for a, b in zip(RW_VAL_ACC["restwake_improved"], RW_VAL_ACC["sgd"])]
    assert eq["estimate"] == pytest.approx(sum(diffs) / 3)
    assert eq["verdict"].startswith("inconclusive (about ") and eq["seeds_needed"] > 3
    assert cl.loc["missing_method", "verdict"] == "not testable (no cells of method nonexistent)"

    pc = t["paper_checks"]
    assert pc["claim_id"].tolist() == [
        "sgd_val_acc", "sgd_peak", "sgd_peak", "improved_equivalent", "improved_equivalent",
        "improved_equivalent",
    ]  # fmt: skip
    assert pc["check"].tolist() == [
        "mean", "mean", "std (ddof=1)", "p (paired t-test)", "p (Welch t-test)",
        "equivalence on the paper's own runs",
    ]  # fmt: skip
    assert pc["consistent"].tolist()[:5] == [True, True, False, False, False]
    assert pd.isna(pc["consistent"].iloc[5])  # inconclusive on the paper's own 3 runs
    std = pc.iloc[2]
    assert std["stated"] == 52.34 and round(std["recomputed"], 2) == 54.41
    assert 0.61 < pc.iloc[3]["recomputed"] < 0.71


def test_no_claims_file_gives_header_only_tables(tmp_path):
    assert agg.load_claims(tmp_path / "nope.yaml") is None
    assert agg.load_claims(None) is None
    written, t, _ = run_study(tmp_path, restwake_results(), claims=None)
    assert t["claims"].empty and list(t["claims"].columns) == list(agg.CLAIMS_COLUMNS)
    assert written["paper_checks"].read_text().strip() == ",".join(agg.PAPER_CHECKS_COLUMNS)


def test_unknown_claim_key_is_a_config_error(tmp_path):
    bad = {"study": "restwake", "claims": [
        {"id": "x", "source": "T1", "kind": "value", "scope": "thesis", "method": "sgd",
         "metric": "val_acc", "value": 0.8, "margin": 0.01, "margin_reason": "r",
         "tolerance": {"abs": 0.1}}]}  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as e:
        agg.load_claims(path)
    msg = str(e.value)
    assert str(path) in msg and "claim 'x'" in msg and "'tolerance'" in msg
    assert "replaced by a required `margin`" in msg and "no default tolerance" in msg


VALID = {"id": "x", "source": "T1", "kind": "value", "scope": "thesis", "method": "sgd",
         "metric": "val_acc", "value": 0.8, "margin": 0.01, "margin_reason": "r"}  # fmt: skip


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"margin": None, "margin_reason": None}, "missing required keys ['margin']"),
        ({"margin_reason": None}, "needs 'margin_reason'"),
        ({"margin": 0}, "needs a margin > 0"),
        ({"margin": "from_runs", "margin_reason": None}, "from_runs needs the paper's per-run"),
        ({"margin": "from_std", "margin_reason": None, "std": 0.1}, "from_std needs ['n_runs']"),
        ({"margin": "about 1%"}, "must be a number, from_runs or from_std"),
        ({"kind": "ratio"}, "kind 'ratio' unknown"),
        ({"scope": "both"}, "scope 'both' unknown"),
        ({"scope": "paper"}, "pin it with where.model, where.dataset, where.budget"),
        ({"value": None}, "needs 'value'"),
        ({"kind": "range", "value": None}, "needs 'range: [low, high]'"),
        ({"kind": "range", "value": None, "range": [1, 0]}, "above high"),
        ({"kind": "difference"}, "needs 'versus'"),
        ({"kind": "difference", "versus": "sgd"}, "versus is the method itself"),
        ({"kind": "superiority", "margin": 0}, "exactly one of 'versus'"),
        ({"kind": "superiority", "versus": "a", "over": 1, "margin": 0}, "exactly one of"),
        ({"versus": "sgd2"}, "'versus' is for claims that compare"),
        ({"where": {"seed": 1}}, "unknown 'where' keys"),
        ({"where": {"budget": None}}, "where.budget"),
        ({"value": "abc"}, "'value'"),
        ({"stated_p": 0.1}, "'stated_p' needs 'runs' and 'versus_runs'"),
        ({"given": ["x"]}, "given 'x' is not another claim"),
        ({"scale_by": "param_mib", "margin": "from_runs", "runs": [1, 2],
          "margin_reason": None}, "with 'scale_by' the margin is a number"),
    ],
)
def test_bad_claims_are_config_errors(tmp_path, change, fragment):
    claim = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"claims": [claim]}))
    with pytest.raises(ConfigError, match="claim 'x'") as e:
        agg.load_claims(path)
    assert fragment in str(e.value)


def test_claims_missing_required_key_and_bad_top_level(tmp_path):
    path = tmp_path / "c.yaml"
    no_source = {k: v for k, v in VALID.items() if k != "source"}
    path.write_text(yaml.safe_dump({"claims": [no_source]}))
    with pytest.raises(ConfigError, match="source"):
        agg.load_claims(path)
    path.write_text(yaml.safe_dump({"claim": []}))
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        agg.load_claims(path)
    path.write_text("claims: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        agg.load_claims(path)


def test_quoted_numbers_keep_their_decimals(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "claims:\n"
        "  - {id: a, source: T1, kind: value, scope: thesis, method: m, metric: val_acc,"
        " value: '0.8300', std: 1e-3, runs: ['0.8300', '0.8300'], margin: 0.01,"
        " margin_reason: r}\n"
    )
    doc = agg.load_claims(path)
    rows = stats.paper_checks(doc["claims"][0])
    assert rows[0]["check"] == "mean" and rows[0]["consistent"] is True
    assert "0.0001" in rows[0]["note"]  # tolerance from 4 decimals, not 2


def test_claims_study_must_match(tmp_path):
    with pytest.raises(ConfigError, match="claims are for study 'other'"):
        run_study(tmp_path, restwake_results(), claims={**RW_CLAIMS, "study": "other"})


# ------------------------------------------------------------------------ files and writing


def test_malformed_result_names_the_file(tmp_path):
    paths = [write_result(tmp_path, r) for r in restwake_results()]
    paths[4].write_text("{not json")
    with pytest.raises(agg.ResultFileError) as e:
        agg.load_results(paths)
    assert str(paths[4]) in str(e.value) and isinstance(e.value, BenchError)
    bad = make_result()
    del bad["axes"]["seed"]
    paths[4].write_text(json.dumps(bad))
    with pytest.raises(agg.ResultFileError, match="lacks \\['seed'\\]"):
        agg.load_results(paths)
    paths[4].write_text(json.dumps({**make_result(), "schema_version": 2}))
    with pytest.raises(agg.ResultFileError, match="schema_version"):
        agg.load_results(paths)
    with pytest.raises(agg.ResultFileError, match="not found"):
        agg.load_results([tmp_path / "missing.json"])


def test_duplicate_cell_is_an_error(tmp_path):
    r = make_result()
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(r))
    b.write_text(json.dumps(r))
    with pytest.raises(agg.ResultFileError, match="duplicate"):
        agg.load_results([a, b])


def test_deterministic_full_precision_atomic(tmp_path):
    precise = 0.12345678901234567
    results = restwake_results({("sgd", 0): {"val_acc": precise}})
    w1, t1, paths = run_study(tmp_path / "one", results)
    shuffled = list(reversed(results))
    w2, _, _ = run_study(tmp_path / "two", shuffled)
    for name in agg.TABLES:
        assert w1[name].read_bytes() == w2[name].read_bytes(), name
    assert precise in t1["cells"]["val_acc"].tolist()  # round-trips exactly through the CSV
    assert "0.12345678901234566" in w1["cells"].read_text() or "0.12345678901234567" in w1[
        "cells"
    ].read_text()
    leftovers = [p.name for p in w1["cells"].parent.iterdir() if p.suffix != ".csv"]
    assert leftovers == []
    # missing values are empty fields, not "nan"
    assert "nan" not in w1["cells"].read_text().lower()


def test_empty_study_writes_headers(tmp_path):
    written = agg.aggregate_study([], "sgd", ["val_acc"], None, tmp_path / "tables")
    for name, path in written.items():
        df = pd.read_csv(path)
        assert df.empty, name
        assert len(df.columns) > 3, name


def test_aggregates_ten_thousand_results_in_seconds(tmp_path):
    root = tmp_path / "results"
    paths = []
    rng = random.Random(1)
    methods = ["dense", "topk_s1", "topk_s2", "topk_sawtooth"]
    n = 0
    # 4 methods x 5 models x 5 datasets x 5 budgets x 20 seeds = 10,000 cells
    for m in methods:
        for model in range(5):
            for ds in range(5):
                for b in ("none", "64MiB", "128MiB", "256MiB", "1024MiB"):
                    for s in range(20):
                        r = make_result("scale", m, f"model{model}", f"ds{ds}", b, s,
                                        val_acc=rng.random(), val_loss=rng.random(),
                                        epochs=5, reference="dense")  # fmt: skip
                        paths.append(write_result(root, r))
                        n += 1
    assert n == 10_000
    start = time.perf_counter()
    written = agg.aggregate_study(paths, "dense", ["val_acc", "val_loss"], None, root / "tables")
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"aggregating 10,000 results took {elapsed:.1f} s"
    cells = pd.read_csv(written["cells"])
    assert len(cells) == 10_000
    p = pd.read_csv(written["paired_tests"])
    assert len(p) == 3 * 125 * 2 and (p["status"] == "tested").all()
    assert p["p_holm"].notna().all()
    hist = pd.read_csv(written["history"])
    assert len(hist) == 50_000


def test_group_without_reference_is_not_testable(tmp_path):
    results = [make_result(method="sgd", dataset="cifar10", seed=s) for s in range(3)]
    results += [make_result(method="other", dataset="cifar100", seed=s, val_acc=0.5 + s / 10)
                for s in range(3)]  # fmt: skip
    _, t, _ = run_study(tmp_path, results, claims=None, metrics=["val_acc"])
    p = t["paired_tests"]
    assert len(p) == 1 and p.iloc[0]["dataset"] == "cifar100"
    assert p.iloc[0]["status"] == "not testable (no cells of sgd)"
    assert p.iloc[0]["n_pairs"] == 0 and p.iloc[0]["mean_method"] == pytest.approx(0.6)


def test_speedup_vs_reference_pairs_cells_by_group_and_seed():
    import pandas as pd

    from bench.aggregate import add_speedup_vs_reference

    cells = pd.DataFrame([
        {"method": "backprop", "model": "vgg16", "dataset": "d", "budget": "64MiB", "seed": 0,
         "status": "ok", "train_wall_s": 30.0},
        {"method": "neuroflux", "model": "vgg16", "dataset": "d", "budget": "64MiB", "seed": 0,
         "status": "ok", "train_wall_s": 10.0},
        {"method": "neuroflux", "model": "vgg16", "dataset": "d", "budget": "64MiB", "seed": 1,
         "status": "ok", "train_wall_s": 10.0},  # no reference cell for seed 1
        {"method": "neuroflux", "model": "vgg16", "dataset": "d", "budget": "64MiB", "seed": 0,
         "status": "oom", "train_wall_s": 5.0},
    ])
    out = add_speedup_vs_reference(cells, "backprop")["speedup_vs_reference"].tolist()
    assert out[0] == 1.0 and out[1] == 3.0
    assert math.isnan(out[2]) and math.isnan(out[3])


def test_study_config_comparisons_and_endpoints_reach_the_tables(tmp_path):
    root = tmp_path / "results"
    paths = [write_result(root, r) for r in restwake_results()]
    claims_path = tmp_path / "claims.yaml"
    claims_path.write_text(yaml.safe_dump(RW_CLAIMS, sort_keys=False))
    study_cfg = {"methods": list(RW_VAL_ACC), "primary_endpoints": ["val_loss"],
                 "comparisons": [["restwake_original", "restwake_improved"]]}  # fmt: skip
    written = agg.aggregate_study(paths, "sgd", ["val_acc", "val_loss"], claims_path,
                                  root / "tables", study_cfg=study_cfg)
    p = pd.read_csv(written["paired_tests"])
    declared = p[(p["method"] == "restwake_original") & (p["versus"] == "restwake_improved")]
    assert declared["metric"].tolist() == ["val_acc", "val_loss"]
    assert declared["status"].iloc[0] == "tested"
    assert set(p[p["metric"] == "val_acc"]["endpoint"]) == {"secondary"}
    assert p[p["metric"] == "val_acc"]["p_holm"].isna().all()
    c = pd.read_csv(written["claims"])
    assert c.loc[c["claim_id"] == "missing_method", "verdict"].item() == (
        "not testable (method nonexistent not in this run)"
    )


def test_the_workflow_declares_every_table_aggregate_writes():
    """Snakemake removes a failed job's declared outputs only: a table aggregate writes that the
    rules do not declare would outlive a failed aggregate (and the report it no longer matches)."""
    text = (ROOT / "rules" / "common.smk").read_text()
    block = re.search(r"^TABLES = \[(.*?)\]", text, re.S | re.M)
    assert block, "rules/common.smk defines TABLES"
    assert re.findall(r'"(\w+)"', block.group(1)) == list(agg.TABLES)


# ---------------------------------------------------------- issue 23: verdict rules end to end


def test_holm_family_counts_a_comparison_once_in_paired_tests(tmp_path):
    """A claim that compares sgd with restwake_improved adds the B-vs-A row of the reference
    comparison; the Holm family counts that hypothesis once (it was counted twice), and the
    family is bench.claims.holm_family, the definition claims.csv uses."""
    claims = {"study": "restwake", "claims": [
        {"id": "sgd_vs_improved", "source": "T", "kind": "superiority", "scope": "thesis",
         "method": "sgd", "versus": "restwake_improved", "metric": "val_acc", "margin": 0,
         "margin_reason": "any gain"}]}  # fmt: skip
    sgd = RW_VAL_ACC["sgd"]
    gains = {"restwake_improved": [0.020, 0.024, 0.021], "restwake_original": [0.010, 0.016, 0.011]}
    results = restwake_results({(m, s): {"val_acc": sgd[s] + g[s]}
                                for m, g in gains.items() for s in range(3)})
    _, t, _ = run_study(tmp_path, results, claims=claims, metrics=["val_acc"])
    p = t["paired_tests"]
    tested = p[p["status"] == "tested"]
    pair = ["sgd", "restwake_improved"]
    both = tested[tested["method"].isin(pair) & tested["versus"].isin(pair)]
    assert len(both) == 3 - 1 and len(tested) == 3  # A vs B and B vs A, and original vs sgd
    assert both["p"].nunique() == 1 and both["p_holm"].nunique() == 1
    distinct = tested.drop_duplicates("p")["p"].tolist()  # one p per distinct comparison
    assert len(distinct) == 2
    expected = dict(zip(distinct, stats.holm(distinct)))
    assert tested["p_holm"].tolist() == pytest.approx([expected[x] for x in tested["p"]])
    # the old family of 3 rows gave other values
    assert tested["p_holm"].tolist() != pytest.approx(stats.holm(tested["p"].tolist()))


def test_claims_name_dropped_seeds_and_the_device(tmp_path):
    """A diverged seed is dropped by name and seeds_used lists the seeds the verdict rests on;
    a claim made for accelerators is not testable on CPU cells (provenance.device) and is
    judged on CUDA cells."""
    claims = {"study": "restwake", "claims": [
        {"id": "acc", "source": "T", "kind": "value", "scope": "thesis", "method": "sgd",
         "metric": "val_acc", "value": 0.83, "margin": 0.05, "margin_reason": "r"},
        {"id": "fast", "source": "T", "kind": "value", "scope": "thesis", "method": "sgd",
         "metric": "val_acc", "value": 0.83, "margin": 0.05, "margin_reason": "r",
         "device": "accelerator"}]}  # fmt: skip
    results = restwake_results({("sgd", 2): {"status": "diverged"}})
    _, t, _ = run_study(tmp_path / "cpu", results, claims=claims, metrics=["val_acc"])
    by = t["claims"].set_index("claim_id")
    assert by.loc["acc", "seeds_used"] == "0,1" and by.loc["acc", "n"] == 2
    assert "decided on 2 of 3 seeds: dropped seed 2 (sgd: diverged)" in by.loc["acc", "reason"]
    assert by.loc["acc", "device"] == "cpu"
    assert by.loc["fast", "verdict"] == ("not testable (needs an accelerator; these cells ran on "
                                         "cpu)")
    for r in results:
        r["provenance"]["device"] = "cuda:0"
    _, t, _ = run_study(tmp_path / "gpu", results, claims=claims, metrics=["val_acc"])
    by = t["claims"].set_index("claim_id")
    assert not by.loc["fast", "verdict"].startswith("not testable")
    assert by.loc["fast", "device"] == "cuda:0"
