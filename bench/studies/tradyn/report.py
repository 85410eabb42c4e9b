"""Report section of study `tradyn`.

- The paper's Fig. 4 ("T-test comparisons"): every pair of channel-selection strategies at equal
  budget, paired by seed, per (model, dataset, budget): the mean paired difference of final
  accuracy with its 95% CI, the two-sided paired t-test and its Holm adjustment over the pairs
  of that budget (`strategy_pairs`, from the cells table with `bench.stats.paired_test` and
  `bench.stats.holm`). Drawn as a heat map per budget (row strategy minus column strategy, in
  accuracy points) and listed in a table. The paper tests one-sided "row beats column"; the
  matrix shows both orders of a pair, so one two-sided test per pair is the honest count.
- The efficiency table: sparsities, FLOPs saved and budget used per method and budget (budgets in
  memory units and in bytes), beside accuracy.
Accuracy vs budget is a generic figure.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from bench import stats
from bench.config import parse_budget
from bench.report import (
    Cell,
    Column,
    Figure,
    Group,
    StudyTables,
    Table,
    group_label,
    metric_unit,
    register_study_figures,
    register_study_tables,
)

STUDY = "tradyn"
BYTES_PER_UNIT = 4  # one memory unit = one fp32 scalar slot per sample (paper Eq. 3-4)
METRIC = "val_acc"  # the paper's Fig. 4 compares final top-1 test accuracy
POINTS = 100.0  # accuracy fraction -> percentage points
# the paper's strategies, in the order of its Fig. 4 (worst to best in the paper)
STRATEGIES = ("s_full_random", "s_topk_random", "s_det_rgn", "d_full_random", "d_det_rgn",
              "tradyn")
COLUMNS = {  # cells.csv column -> label
    "mean_selected_channels": "channels",
    "mean_weight_sparsity": "weight sparsity",
    "mean_activation_sparsity": "activation sparsity",
    "mean_wgrad_flops_saved": "wgrad FLOPs saved",
    "min_budget_utilisation": "budget used (min)",
    "activation_mib": "saved activations (MiB)",
    "val_acc": "val acc",
}
PAIR_COLUMNS = ["model", "dataset", "budget", "method", "versus", "n_pairs", "mean_method",
                "mean_versus", "mean_diff", "diff_ci_low", "diff_ci_high", "t", "p", "p_holm",
                "status"]


def _budget_text(budget: str) -> tuple[str, str]:
    parsed = parse_budget(str(budget))
    if parsed is None:
        return "none", "—"
    value, unit = parsed
    if unit != "units":
        return str(budget), "—"
    return f"{value:,.0f}", f"{value * BYTES_PER_UNIT / 1000:,.1f} kB"


def _budget_order(budget: str) -> float:
    parsed = parse_budget(str(budget))
    return parsed[0] if parsed is not None else -1.0


def _strategies(present: set[str]) -> list[str]:
    """The paper's strategies present, in Fig. 4's order; other budgeted methods after them."""
    return [m for m in STRATEGIES if m in present] + sorted(present - set(STRATEGIES))


def strategy_pairs(cells: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """Every pair of budgeted methods of a (model, dataset, budget) group, paired by seed.

    One row per unordered pair (method before versus in Fig. 4's order): difference = method -
    versus (`stats.paired_test`, two-sided paired t-test, 95% CI), `p_holm` over the tested
    pairs of the group (`stats.holm`). Non-ok cells count as missing values (their pair is
    dropped); different seed sets give `not testable (seed sets differ ...)`. Budget 'none'
    (full fine-tuning, last layer) is not a strategy and is left out.
    """
    if cells.empty or metric not in cells or "status" not in cells:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    c = cells[cells["budget"].astype(str) != "none"].copy()
    c["_value"] = pd.to_numeric(c[metric], errors="coerce").where(c["status"] == "ok")
    rows = []
    for (model, dataset, budget), g in c.groupby(["model", "dataset", "budget"], sort=False):
        per = {m: dict(zip(s["seed"].astype(int), s["_value"])) for m, s in g.groupby("method")}
        start = len(rows)
        for a, b in combinations(_strategies(set(per)), 2):
            base = {"model": model, "dataset": dataset, "budget": str(budget), "method": a,
                    "versus": b}
            try:
                res = stats.paired_test(per[a], per[b], method=a, reference=b)
            except stats.SeedMismatchError as e:
                res = {"n_pairs": 0, "status": f"not testable (seed sets differ: {e})"}
            res["mean_versus"] = res.pop("mean_reference", np.nan)
            rows.append({**base, **res})
        tested = [i for i in range(start, len(rows)) if rows[i]["status"] == stats.TESTED]
        for i, p in zip(tested, stats.holm([rows[i]["p"] for i in tested])):
            rows[i]["p_holm"] = p
    out = pd.DataFrame(rows)
    for col in PAIR_COLUMNS:
        if col not in out:
            out[col] = np.nan
    if out.empty:
        return out[PAIR_COLUMNS]
    out = out.assign(_order=out["budget"].map(_budget_order))
    out = out.sort_values(["model", "dataset", "_order"], kind="stable")
    return out[PAIR_COLUMNS].reset_index(drop=True)


def pair_matrix(pairs: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(methods, diff, p_holm) of one group: diff[i, j] = mean(method i - method j), p_holm of
    the pair in both orders; NaN on the diagonal and where the pair was not testable."""
    methods = _strategies(set(pairs["method"]) | set(pairs["versus"]))
    k = len(methods)
    diff, p = np.full((k, k), np.nan), np.full((k, k), np.nan)
    index = {m: i for i, m in enumerate(methods)}
    for r in pairs.itertuples():
        i, j = index[r.method], index[r.versus]
        d = float(r.mean_diff) if r.mean_diff is not None else np.nan
        diff[i, j], diff[j, i] = d, -d
        p[i, j] = p[j, i] = float(r.p_holm) if r.p_holm is not None else np.nan
    return methods, diff, p


# --------------------------------------------------------------------------------------------
# figures


@register_study_figures(STUDY)
def figures(t: StudyTables) -> list[Figure]:
    return [ranking_matrix(t)]


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return "n/t"
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "ns"


def ranking_matrix(t: StudyTables) -> Figure:
    title = "Strategy ranking at equal budget (the paper's Fig. 4)"
    pairs = strategy_pairs(t.cells)
    if pairs.empty:
        return Figure("ranking_matrix", title,
                      note="fewer than two budgeted strategies with cells in any group")
    groups = list(pairs.groupby(["model", "dataset", "budget"], sort=False))
    n = len(groups)
    k_max = max(len(pair_matrix(g)[0]) for _, g in groups)
    size = 0.75 * k_max + 1.6
    fig = MplFigure(figsize=(min(size * n, 16.0), size + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
    span = float(np.nanmax(np.abs(pairs["mean_diff"].astype(float)))) * POINTS \
        if pairs["mean_diff"].notna().any() else 1.0
    span = span if span > 0 else 1.0
    image = None
    for ax, ((model, dataset, budget), g) in zip(axes, groups):
        methods, diff, p = pair_matrix(g)
        image = ax.imshow(diff * POINTS, cmap="RdBu", vmin=-span, vmax=span)
        for i in range(len(methods)):
            for j in range(len(methods)):
                if i == j or not np.isfinite(diff[i, j]):
                    continue
                strong = abs(diff[i, j] * POINTS) > 0.6 * span
                ax.text(j, i, f"{diff[i, j] * POINTS:+.2f}\n{_stars(p[i, j])}", ha="center",
                        va="center", fontsize=7, color="white" if strong else "black")
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        units, size_text = _budget_text(budget)
        ax.set_title(f"{model}/{dataset}\nbudget {units} units ({size_text})", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8,
                     label="row - column, final val accuracy (points)")
    caption = ("Each cell: the mean over seeds of the paired difference in final validation "
               "accuracy, row strategy minus column strategy, in accuracy points (blue: the row "
               "is more accurate), at equal budget and seed; stars: Holm-adjusted two-sided "
               "paired t-test over the pairs of that budget (* p < 0.05, ** < 0.01, *** < "
               "0.001, ns: not significant, n/t: not testable). The paper's Fig. 4 shows "
               "one-sided tests of 'row beats column' pooled over its settings. CIs: the table "
               "'Paired strategy differences'.")
    return Figure("ranking_matrix", title, caption, fig)


# --------------------------------------------------------------------------------------------
# tables


@register_study_tables(STUDY)
def tables(t: StudyTables) -> list[Table]:
    out = [pairs_table(t), efficiency(t)]
    return [x for x in out if x is not None]


def pairs_table(t: StudyTables) -> Table | None:
    pairs = strategy_pairs(t.cells)
    if pairs.empty:
        return None
    groups = []
    for (model, dataset, budget), g in pairs.groupby(["model", "dataset", "budget"], sort=False):
        units, size = _budget_text(budget)
        rows = []
        for r in g.itertuples():
            rows.append([
                Cell(r.method, "code"), Cell(r.versus, "code"), Cell(r.n_pairs, "int"),
                Cell(r.mean_diff * POINTS if pd.notna(r.mean_diff) else None, "num"),
                Cell((r.diff_ci_low * POINTS if pd.notna(r.diff_ci_low) else None,
                      r.diff_ci_high * POINTS if pd.notna(r.diff_ci_high) else None), "ci"),
                Cell(r.p, "p"), Cell(r.p_holm, "p"),
                Cell("" if r.status == stats.TESTED else r.status, "note"),
            ])
        groups.append(Group(f"{group_label(model, dataset, budget)} ({units} units, {size})",
                            rows))
    return Table(
        id="tradyn-strategy-pairs",
        caption=("Paired strategy differences (the paper's Fig. 4 as numbers): final validation "
                 "accuracy of method minus versus, in points, mean over seeds paired by seed "
                 "index at equal budget, with its 95% CI, the two-sided paired t-test p and its "
                 "Holm adjustment over the pairs of the same budget. Cells with status other "
                 "than ok drop their pair."),
        columns=[Column("method"), Column("versus"), Column("n", "r"),
                 Column("diff (points)", "r"), Column("95% CI", "r"), Column("p", "r"),
                 Column("p (Holm)", "r"), Column("note")],
        groups=groups,
    )


def efficiency(t: StudyTables) -> Table | None:
    c = t.cells
    if c.empty or "status" not in c:
        return None
    ok = c[c["status"] == "ok"]
    rows = []
    for (method, budget), g in ok.groupby(["method", "budget"], sort=False):
        units, size = _budget_text(budget)
        row = [Cell(method, "code"), Cell(units), Cell(size), Cell(len(g), "int")]
        for col in COLUMNS:
            values = pd.to_numeric(g[col], errors="coerce").dropna() if col in g else pd.Series()
            unit = metric_unit(col)
            if col == "min_budget_utilisation":
                row.append(Cell(float(values.min()) if len(values) else None, "num"))
            elif unit.kind == "percent":  # accuracies and sparsities: % as everywhere
                row.append(Cell(unit.number(float(values.mean())) if len(values) else None))
            else:
                row.append(Cell(float(values.mean()) if len(values) else None, "num"))
        rows.append(((t.methods.index(method) if method in t.methods else 99,
                      _budget_order(budget)), row))
    rows.sort(key=lambda r: r[0])
    return Table(
        id="tradyn-efficiency",
        caption=("Efficiency per method and memory budget, means over seeds (cells with status ok): "
                 "input channels updated per epoch, weight-derivative sparsity, activation sparsity "
                 "and weight-derivative FLOPs saved against full fine-tuning (all conv channels, "
                 "averaged over epochs; bench.studies.tradyn.channels), the lowest share of the "
                 "budget any epoch of any seed selected (mechanism check budget_used: >= 0.99), "
                 "the measured bytes saved for backward in one step, and final "
                 "validation accuracy. Budgets in memory units (one 4-byte slot per sample) and "
                 "in kB; sparsities and accuracy in % (as in the scorecard)."),
        columns=[Column("method"), Column("budget (units)", "r"), Column("budget (bytes)", "r"),
                 Column("n", "r"),
                 *[Column(label + (" (%)" if metric_unit(col).kind == "percent" else ""), "r")
                   for col, label in COLUMNS.items()]],
        groups=[Group("", [row for _, row in rows])],
    )
