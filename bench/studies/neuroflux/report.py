"""Report section of study `neuroflux`: the partition (units and batch per block) against
backprop's batch per model, dataset and budget, the early exit (accuracy per head, chosen on
held-out training images), and the speed-up (with its CI over seeds) / parameter / throughput
figures per group (their claimed ranges are in the claims table)."""

from __future__ import annotations

import re

import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

from bench import stats
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

STUDY = "neuroflux"
GROUP = ["model", "dataset", "budget"]
# the report's units (bench.report.metric_unit): accuracies in %, speed-ups and reductions as
# ratios, as in the scorecard, the forest plot and the claims' statements ('2.3x-6.1x')
PERCENT = metric_unit("exit_val_acc")
RATIO = metric_unit("speedup_vs_reference")


def _num(g: pd.DataFrame, col: str) -> float | None:
    if col not in g:
        return None
    v = pd.to_numeric(g[col], errors="coerce").dropna()
    return float(v.mean()) if len(v) else None


def _first(g: pd.DataFrame, col: str) -> str | None:
    if col not in g:
        return None
    v = g[col].dropna().astype(str)
    return v.iloc[0] if len(v) else None


def _seeds_differ(g: pd.DataFrame, col: str) -> bool:
    return col in g and g[col].dropna().astype(str).nunique() > 1


@register_study_tables(STUDY)
def blocks_and_gains(t: StudyTables) -> list[Table]:
    c = t.cells
    if c.empty or "status" not in c:
        return []
    ok = c[c["status"] == "ok"]
    rows = []
    for key, g in ok.groupby(GROUP, sort=True):
        nf, bp = g[g["method"] == "neuroflux"], g[g["method"] == "backprop"]
        if nf.empty:
            continue
        units, batches = _first(nf, "block_units"), _first(nf, "block_batch_sizes")
        vary = " (seeds differ)" if (_seeds_differ(nf, "block_units")
                                     or _seeds_differ(nf, "block_batch_sizes")) else ""
        n_blocks = len(units.split(",")) if units else None
        speed = (stats.summarize(pd.to_numeric(nf["speedup_vs_reference"], errors="coerce"))
                 if "speedup_vs_reference" in nf else None)
        rows.append([
            Cell(group_label(*key)), Cell(n_blocks, "int"),
            Cell((units or "").replace(",", " | ") + vary),
            Cell((batches or "").replace(",", " | ")), Cell(_num(nf, "first_block_bstar"), "int"),
            Cell(_num(bp, "batch_size"), "int"), Cell(_num(nf, "exit_unit"), "num"),
            Cell(PERCENT(_num(nf, "exit_val_acc"))), Cell(PERCENT(_num(bp, "val_acc"))),
            Cell(RATIO(speed["mean"]) if speed else None),
            Cell(RATIO.interval(speed["ci_low"], speed["ci_high"]) if speed else None),
            Cell(RATIO(_num(nf, "param_reduction"))),
            Cell(RATIO(_num(nf, "inference_throughput_gain"))),
        ])
    if not rows:
        return []
    return [Table(
        id="neuroflux-blocks",
        caption=("NeuroFlux per model, dataset and budget (cells with status ok): the partition "
                 "(number of blocks, the units of each block, 1-based, and each block's batch; "
                 "the first seed's, marked when seeds differ) beside b* of the first unit (the "
                 "largest batch it fits alone: the first-unit rule keeps every block within half "
                 "its first unit's b*) and backprop's batch under the same budget (mean over "
                 "seeds); the early exit (unit, mean over seeds; chosen on held-out training "
                 "images) and its test-split accuracy beside backprop's; the training speed-up "
                 "(backprop wall time / NeuroFlux wall time, profiling and cache I/O included, "
                 "paired by seed) with its 95% t-interval over seeds; the parameter reduction "
                 "and the inference throughput gain of the exit model. The claimed ranges are in "
                 "the claims table; the mechanism checks in the mechanism-checks table. "
                 "Accuracies in %, speed-up, reduction and gain as ratios (×). The exit "
                 "accuracy is the final model's (the study's val_acc); the accuracy-vs-epoch "
                 "figure's curve is each block's own head while it trains."),
        columns=[Column("group"), Column("blocks", "r"), Column("units per block"),
                 Column("batch per block"), Column("b* unit 1", "r"),
                 Column("backprop batch", "r"), Column("exit unit", "r"),
                 Column("exit acc", "r"), Column("backprop acc", "r"), Column("speed-up", "r"),
                 Column("speed-up 95% CI", "r"), Column("param reduction", "r"),
                 Column("throughput gain", "r")],
        groups=[Group("", rows)],
    )]


@register_study_figures(STUDY)
def head_accuracy(t: StudyTables) -> list[Figure]:
    title = "Accuracy per exit"
    c = t.cells
    heads = sorted((col for col in c.columns if re.fullmatch(r"head_acc_u\d+", col)),
                   key=lambda col: int(col[len("head_acc_u"):])) if not c.empty else []
    ok = c[(c.get("status") == "ok") & (c.get("method") == "neuroflux")] if heads else c
    if not heads or ok.empty:
        return [Figure("exits", title, note="no NeuroFlux cells with head accuracies")]
    groups = list(ok.groupby(GROUP, sort=True))
    fig = MplFigure(figsize=(5.5 * len(groups) + 1, 3.4), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False).ravel()
    for ax, (key, g) in zip(axes, groups):
        units = [int(h[len("head_acc_u"):]) for h in heads]
        acc = [100 * (_num(g, h) or float("nan")) for h in heads]
        held = [100 * (_num(g, f"head_holdout_acc_u{u}") or float("nan")) for u in units]
        color = t.colors.get("neuroflux", "C1")
        ax.plot(units, held, marker="s", ls=":", color=color,
                label="held-out train images (choose the exit)")
        ax.plot(units, acc, marker="o", color=color, label="validation split (reports)")
        exit_unit = _num(g, "exit_unit")
        if exit_unit is not None:
            ax.axvline(exit_unit, color="black", ls="--", lw=1, label="exit (mean over seeds)")
        ax.set_title(group_label(*key))
        ax.set_xlabel("unit (its auxiliary head; the last is the model's own head)")
        ax.set_ylabel("accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    fig.suptitle(f"{t.study.name}: accuracy of each exit")
    caption = ("Accuracy (%) of each unit's head after block-wise training (mean over seeds), on "
               "the held-out 10% of the training split (dotted: the exit is the shallowest head "
               "within 0.5 points of the best there) and on the validation split, which only "
               "reports; the dashed line marks the chosen exit.")
    return [Figure("exits", title, caption, fig)]
