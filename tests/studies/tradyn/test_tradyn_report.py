"""The study's report section: the paper's Fig. 4 as paired strategy differences per budget
(bench/studies/tradyn/report.py), computed from a cells table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.studies.tradyn import report

# per method: final accuracy by seed, at each budget (a known ranking with seed noise)
ACC = {
    "tradyn": [0.90, 0.91, 0.92],
    "d_full_random": [0.89, 0.905, 0.91],
    "s_topk_random": [0.87, 0.88, 0.885],
}


def cells(budgets=("7738", "25943"), drop=None) -> pd.DataFrame:
    rows = []
    for b_i, budget in enumerate(budgets):
        for method, accs in ACC.items():
            for seed, acc in enumerate(accs):
                rows.append({"method": method, "model": "mobilenetv2", "dataset": "digits",
                             "budget": budget, "seed": seed, "status": "ok",
                             "val_acc": acc + 0.01 * b_i})
    for seed in range(3):
        rows.append({"method": "full_ft", "model": "mobilenetv2", "dataset": "digits",
                     "budget": "none", "seed": seed, "status": "ok", "val_acc": 0.95})
    df = pd.DataFrame(rows)
    if drop is not None:
        df = df[~((df["method"] == drop[0]) & (df["seed"] == drop[1]))]
    return df


def test_strategy_pairs_are_paired_t_tests_with_holm_per_budget():
    pairs = report.strategy_pairs(cells())
    assert list(pairs["budget"].unique()) == ["7738", "25943"]
    assert "full_ft" not in set(pairs["method"]) | set(pairs["versus"])  # budget none
    g = pairs[pairs["budget"] == "7738"]
    # Fig. 4's order: s_topk_random before d_full_random before tradyn
    assert list(zip(g["method"], g["versus"])) == [("s_topk_random", "d_full_random"),
                                                   ("s_topk_random", "tradyn"),
                                                   ("d_full_random", "tradyn")]
    row = g[(g["method"] == "d_full_random") & (g["versus"] == "tradyn")].iloc[0]
    a, b = np.array(ACC["d_full_random"]), np.array(ACC["tradyn"])
    assert row["mean_diff"] == pytest.approx((a - b).mean())
    assert row["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    half = sps.t.ppf(0.975, 2) * (a - b).std(ddof=1) / np.sqrt(3)
    assert row["diff_ci_low"] == pytest.approx((a - b).mean() - half)
    # Holm over the three pairs of this budget
    from statsmodels.stats.multitest import multipletests
    assert list(g["p_holm"]) == pytest.approx(list(multipletests(g["p"], method="holm")[1]))


def test_pair_matrix_is_antisymmetric():
    pairs = report.strategy_pairs(cells())
    methods, diff, p = report.pair_matrix(pairs[pairs["budget"] == "25943"])
    assert methods == ["s_topk_random", "d_full_random", "tradyn"]
    assert np.allclose(diff, -diff.T, equal_nan=True)
    assert np.isnan(np.diag(diff)).all()
    i, j = methods.index("tradyn"), methods.index("s_topk_random")
    assert diff[i, j] == pytest.approx(np.mean(np.array(ACC["tradyn"]) -
                                               np.array(ACC["s_topk_random"])))
    assert p[i, j] == p[j, i]


def test_a_missing_cell_makes_its_pairs_not_testable():
    pairs = report.strategy_pairs(cells(drop=("tradyn", 2)))
    with_tradyn = pairs[(pairs["method"] == "tradyn") | (pairs["versus"] == "tradyn")]
    assert with_tradyn["status"].str.startswith("not testable (seed sets differ").all()
    others = pairs.drop(with_tradyn.index)
    assert (others["status"] == "tested").all() and others["p_holm"].notna().all()


def test_a_failed_cell_drops_its_pair():
    c = cells()
    c.loc[(c["method"] == "tradyn") & (c["seed"] == 0), "status"] = "failed"
    pairs = report.strategy_pairs(c)
    row = pairs[(pairs["method"] == "d_full_random") & (pairs["versus"] == "tradyn")].iloc[0]
    assert row["n_pairs"] == 2 and row["status"].startswith("not testable")


def test_empty_cells_give_no_pairs():
    assert report.strategy_pairs(pd.DataFrame()).empty


def study_tables(c: pd.DataFrame):
    from pathlib import Path

    from bench.report import StudyInput, StudyTables

    empty = pd.DataFrame()
    methods = ["full_ft", *ACC]
    return StudyTables(StudyInput("tradyn", "", "full_ft", ["val_acc"], Path(".")), c, empty,
                       empty, empty, empty, empty, empty, empty, [], methods,
                       {m: f"C{i}" for i, m in enumerate(methods)})


def test_the_section_draws_the_matrix_and_lists_the_pairs():
    t = study_tables(cells())
    (figure,) = report.figures(t)
    assert figure.fig is not None and len(figure.fig.axes) == 3  # two budgets + colour bar
    pairs, efficiency = report.tables(t)
    assert pairs.id == "tradyn-strategy-pairs" and pairs.n_rows == 6
    assert ["budget 7738 (7,738 units" in pairs.groups[0].label,
            "budget 25943 (25,943 units" in pairs.groups[1].label] == [True, True]
    assert efficiency.id == "tradyn-efficiency"
    none = report.figures(study_tables(cells().query("method == 'full_ft'")))[0]
    assert none.fig is None and "fewer than two" in none.note


def test_efficiency_table_gives_accuracy_and_sparsity_in_percent():
    c = cells()
    c["mean_weight_sparsity"] = 0.97
    (_, efficiency) = report.tables(study_tables(c))
    labels = [col.label for col in efficiency.columns]
    assert "val acc (%)" in labels and "weight sparsity (%)" in labels
    row = dict(zip(labels, efficiency.groups[0].rows[0]))
    assert row["weight sparsity (%)"].value == "97.0"
    ok = c[(c["method"] == row["method"].value) & (c["status"] == "ok")]
    means = {f"{100 * pd.to_numeric(g['val_acc']).mean():.1f}" for _, g in ok.groupby("budget")}
    assert row["val acc (%)"].value in means  # the scorecard's unit, not a fraction
