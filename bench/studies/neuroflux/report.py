"""Report section of study `neuroflux`: blocks and batch sizes per model and budget, the early
exit (accuracy per head), and the speed-up / parameter / throughput figures per group (their
claimed ranges are in the claims table)."""

from __future__ import annotations

import re

import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

from bench.report import (
    Cell,
    Column,
    Figure,
    Group,
    StudyTables,
    Table,
    group_label,
    register_study_figures,
    register_study_tables,
)

STUDY = "neuroflux"
GROUP = ["model", "dataset", "budget"]


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


@register_study_tables(STUDY)
def blocks_and_gains(t: StudyTables) -> list[Table]:
    c = t.cells
    if c.empty or "status" not in c:
        return []
    ok = c[c["status"] == "ok"]
    rows = []
    for key, g in ok.groupby(GROUP, sort=True):
        nf, bp = g[g["method"] == "neuroflux"], g[g["method"] != "neuroflux"]
        if nf.empty:
            continue
        rows.append([
            Cell(group_label(*key)), Cell(_first(nf, "block_units")),
            Cell(_first(nf, "block_batch_sizes")), Cell(_first(nf, "block_memory_mib")),
            Cell(_num(bp, "batch_size"), "num"), Cell(_num(nf, "exit_unit"), "num"),
            Cell(_num(nf, "exit_val_acc"), "num"), Cell(_num(bp, "val_acc"), "num"),
            Cell(_num(nf, "speedup_vs_reference"), "num"), Cell(_num(nf, "param_reduction"), "num"),
            Cell(_num(nf, "inference_throughput_gain"), "num"),
        ])
    if not rows:
        return []
    return [Table(
        id="neuroflux-blocks",
        caption=("NeuroFlux per model, dataset and budget (means over seeds; cells with status ok): "
                 "the blocks (unit ranges), their batch sizes and modelled memory (MiB; first "
                 "seed), backprop's batch under the same budget, the early exit (unit, 1-based as "
                 "in the blocks) and its validation accuracy beside backprop's, the training "
                 "speed-up (backprop wall time / NeuroFlux wall time, profiling and cache I/O "
                 "included, paired by seed), the parameter reduction and the inference "
                 "throughput gain of the exit model. The claimed ranges are in the claims table."),
        columns=[Column("group"), Column("blocks (units)"), Column("batch sizes"),
                 Column("block MiB"), Column("backprop batch", "r"), Column("exit unit", "r"),
                 Column("exit acc", "r"), Column("backprop acc", "r"), Column("speed-up", "r"),
                 Column("param reduction", "r"), Column("throughput gain", "r")],
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
        ax.plot(units, acc, marker="o", color=t.colors.get("neuroflux", "C1"), label="head of unit")
        exit_unit = _num(g, "exit_unit")
        if exit_unit is not None:
            ax.axvline(exit_unit, color="black", ls="--", lw=1, label="exit (mean over seeds)")
        ax.set_title(group_label(*key))
        ax.set_xlabel("unit (its auxiliary head; the last is the model's own head)")
        ax.set_ylabel("validation accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    fig.suptitle(f"{t.study.name}: validation accuracy of each exit")
    caption = ("Validation accuracy (%) of each unit's head after block-wise training (mean over "
               "seeds); the dashed line marks the chosen exit: the shallowest head within 0.5 "
               "points of the best.")
    return [Figure("exits", title, caption, fig)]
