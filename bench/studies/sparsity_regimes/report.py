"""Report section of study `sparsity_regimes`: keep-ratio and effective-activation-rate
trajectories, accuracy vs keep ratio at evaluation, and whether each claimed gain over dense is
larger than the seed-to-seed spread."""

from __future__ import annotations

import re

import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bench.report import (
    Cell,
    Column,
    Figure,
    Group,
    StudyTables,
    Table,
    register_study_figures,
    register_study_tables,
)

STUDY = "sparsity_regimes"
CLAIMED_GAIN = {"topk_s1": 0.8797 - 0.869, "topk_s2": 0.8802 - 0.869}  # the paper's single run


def _ok(t: StudyTables, df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or t.cells.empty:
        return df
    keys = ["method", "model", "dataset", "budget", "seed"]
    ok = t.cells.loc[t.cells["status"] == "ok", keys]
    return df.merge(ok, on=keys, how="inner")


@register_study_figures(STUDY)
def figures(t: StudyTables) -> list[Figure]:
    return [trajectories(t), accuracy_vs_keep_ratio(t)]


def trajectories(t: StudyTables) -> Figure:
    title = "Keep ratio and effective activation rate"
    h = _ok(t, t.history)
    if h.empty or "keep_ratio" not in h:
        return Figure("keep_ratio", title, note="no keep_ratio in history.csv")
    fig = MplFigure(figsize=(11, 3.6), layout="constrained")
    ax_r, ax_e = fig.subplots(1, 2)
    for method in t.methods:
        m = h[h["method"] == method]
        for seed, s in m.groupby("seed"):
            s = s.sort_values("epoch")
            epochs = s["epoch"].astype(int) + 1
            alpha = 1.0 if int(seed) == 0 else 0.4
            ax_r.plot(epochs, pd.to_numeric(s["keep_ratio"], errors="coerce"),
                      color=t.colors[method], alpha=alpha, marker="o", ms=2.5, lw=1.2)
            if "effective_activation_rate" in s:
                ax_e.plot(epochs, pd.to_numeric(s["effective_activation_rate"], errors="coerce"),
                          color=t.colors[method], alpha=alpha, marker="o", ms=2.5, lw=1.2)
    ax_r.set_ylabel("keep ratio r (training)")
    ax_e.set_ylabel("effective activation rate")
    for ax in (ax_r, ax_e):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(handles=[Line2D([], [], color=t.colors[m], lw=2, label=m) for m in t.methods],
               loc="outside right upper", title="method")
    fig.suptitle(f"{t.study.name}: keep ratio and effective activation rate per epoch")
    caption = ("Left: the keep ratio r each controller set for the epoch's training (seed 0 "
               "opaque, other seeds faint). Right: non-zero hooked activations / all hooked "
               "activations during training (dense: the ReLUs' natural sparsity).")
    return Figure("keep_ratio", title, caption, fig)


def accuracy_vs_keep_ratio(t: StudyTables) -> Figure:
    title = "Accuracy vs keep ratio at evaluation"
    c = _ok(t, t.cells)
    cols = sorted((col for col in c.columns if re.fullmatch(r"acc_at_r[0-9.]+", col)),
                  key=lambda col: -float(col[len("acc_at_r"):]))
    if c.empty or not cols:
        return Figure("acc_vs_r", title, note="no acc_at_r* columns in cells.csv")
    fig = MplFigure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for method in t.methods:
        m = c[c["method"] == method]
        if m.empty:
            continue
        rs = [1.0] + [float(col[len("acc_at_r"):]) for col in cols]
        means = [pd.to_numeric(m["val_acc"], errors="coerce").mean()] + [
            pd.to_numeric(m[col], errors="coerce").mean() for col in cols]
        ax.plot(rs, [100 * v for v in means], marker="o", color=t.colors[method], label=method)
    ax.set_xscale("log")
    ax.set_xlabel("keep ratio r at evaluation (1 = dense)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize="small")
    fig.suptitle(f"{t.study.name}: accuracy vs keep ratio")
    caption = ("Validation accuracy (%) of the final model evaluated with top-k sparsity at "
               "each keep ratio (mean over seeds); r = 1 is the dense evaluation.")
    return Figure("acc_vs_r", title, caption, fig)


@register_study_tables(STUDY)
def gain_vs_spread(t: StudyTables) -> list[Table]:
    p = t.paired_tests
    if p.empty or "metric" not in p:
        return []
    rows = []
    for _, r in p[p["metric"] == "val_acc"].iterrows():
        claimed = CLAIMED_GAIN.get(str(r["method"]))
        diff = pd.to_numeric(pd.Series([r.get("mean_diff")]), errors="coerce").iloc[0]
        lo = pd.to_numeric(pd.Series([r.get("diff_ci_low")]), errors="coerce").iloc[0]
        hi = pd.to_numeric(pd.Series([r.get("diff_ci_high")]), errors="coerce").iloc[0]
        if claimed is None:
            verdict = "no claim for this method"
        elif pd.isna(lo) or pd.isna(hi):
            verdict = f"cannot tell: {r.get('status')}"
        elif lo > 0:
            verdict = "our gain over dense is larger than the seed-to-seed spread (CI above 0)"
        else:
            verdict = ("the claimed gain is within the seed-to-seed spread: our 95% CI of the "
                       "paired difference includes 0")
        rows.append([Cell(str(r["method"]), "code"), Cell(f"{r['model']} / {r['dataset']}"),
                     Cell(claimed, "num"), Cell(diff, "num"), Cell(lo, "num"), Cell(hi, "num"),
                     Cell(verdict)])
    if not rows:
        return []
    return [Table(
        id="sparsity-gain-vs-spread",
        caption=("Is the claimed gain larger than the seed-to-seed spread? The paper's gain over "
                 "dense (single run: S1 +1.07, S2 +1.12 points, as accuracy fractions) beside our "
                 "paired difference in final dense validation accuracy (method - dense, mean over "
                 "seeds) and its 95% CI."),
        columns=[Column("method"), Column("group"), Column("claimed gain", "r"),
                 Column("our gain", "r"), Column("CI low", "r"), Column("CI high", "r"),
                 Column("statement", latex_spec="p{6cm}")],
        groups=[Group("", rows)],
    )]
