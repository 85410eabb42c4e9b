"""Report section of study `sparsity_regimes`: per seed, the keep ratio and effective activation
rate of every method per epoch with the controllers' resets marked by cause; the probe-set
numbers that drove the adaptive controllers against their guards; accuracy at the evaluation
keep ratios; a controller summary (resets by cause, probe cost).

Whether S1 / S2 beat dense is stated by the claims' verdicts (superiority claims of scope
`thesis`, withheld when a mechanism check failed), not here.
"""

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
    register_caption_note,
    register_study_figures,
    register_study_tables,
)

STUDY = "sparsity_regimes"
ADAPTIVE = ("topk_s1", "topk_s2")
# reset cause -> (marker, label); the marker sits on the epoch whose probe caused the reset
RESET_MARKERS = {"guard": ("X", "guard reset"), "floor": ("v", "floor reset (r_min)"),
                 "schedule": ("|", "schedule reset (sawtooth)")}
LOSS_TOLERANCE, ACC_MARGIN = 0.10, 0.02  # the guards' defaults (METHODS.md); see the caption

# Why a top-k method's memory is above dense's (topk.py): the mask zeroes activations but does
# not shrink what autograd keeps. The ReLU before each TopK keeps its dense output for its own
# backward, and `x * mask` keeps the bool mask (1 byte an entry) for the gradient of x; the
# network scope adds, transiently, a no-grad copy of every hooked activation and their
# concatenation for the per-sample selection.
TOPK_MEMORY_NOTE = (
    "Why the top-k methods sit above dense: top-k zeroes activations but does not store them "
    "sparse. The ReLU before each top-k layer keeps its dense output for backward, as in dense "
    "training, and the masking x * mask also keeps its bool mask (one byte an entry); a "
    "network-scope top-k further holds, while it selects, a no-grad copy of every hooked "
    "activation. In this implementation sparsity changes what is learned, not the memory."
)
register_caption_note(STUDY, "memory", TOPK_MEMORY_NOTE)
register_caption_note(STUDY, "acc_memory", TOPK_MEMORY_NOTE)


def _ok(t: StudyTables, df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or t.cells.empty:
        return df
    keys = ["method", "model", "dataset", "budget", "seed"]
    ok = t.cells.loc[t.cells["status"] == "ok", keys]
    return df.merge(ok, on=keys, how="inner")


def _num(s: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(s[col], errors="coerce") if col in s else pd.Series(float("nan"),
                                                                               index=s.index)


def _edge(marker: str) -> dict[str, object]:
    """A black edge for filled markers (unfilled ones, like '|', have none)."""
    return {} if marker == "|" else {"edgecolors": "black", "linewidths": 0.6}


def _acc_cols(c: pd.DataFrame) -> list[str]:
    return sorted((col for col in c.columns if re.fullmatch(r"acc_at_r[0-9.]+", col)),
                  key=lambda col: -float(col[len("acc_at_r"):]))


@register_study_figures(STUDY)
def figures(t: StudyTables) -> list[Figure]:
    return [trajectories(t), probe_guards(t), accuracy_vs_keep_ratio(t)]


def trajectories(t: StudyTables) -> Figure:
    title = "Keep ratio and effective activation rate per seed"
    h = _ok(t, t.history)
    if h.empty or "keep_ratio" not in h:
        return Figure("keep_ratio", title, note="no keep_ratio in history.csv")
    seeds = sorted(int(s) for s in h["seed"].unique())
    fig = MplFigure(figsize=(11, 2.6 * len(seeds) + 0.6), layout="constrained")
    axes = fig.subplots(len(seeds), 2, squeeze=False, sharex=True)
    for row, seed in enumerate(seeds):
        ax_r, ax_e = axes[row]
        for method in t.methods:
            s = h[(h["method"] == method) & (h["seed"] == seed)].sort_values("epoch")
            if s.empty:
                continue
            epochs = s["epoch"].astype(int) + 1
            ratio = _num(s, "keep_ratio")
            ax_r.plot(epochs, ratio, color=t.colors[method], marker="o", ms=2.5, lw=1.2)
            ax_e.plot(epochs, _num(s, "effective_activation_rate"), color=t.colors[method],
                      marker="o", ms=2.5, lw=1.2)
            for cause, (marker, _) in RESET_MARKERS.items():
                hit = _num(s, f"reset_{cause}") == 1
                if hit.any():
                    ax_r.scatter(epochs[hit], ratio[hit], marker=marker, s=60, zorder=3,
                                 color=t.colors[method], **_edge(marker))
        ax_r.set_yscale("log")
        ax_r.set_ylabel(f"seed {seed}\nkeep ratio r")
        ax_e.set_ylabel("effective activation rate")
        for ax in (ax_r, ax_e):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    handles = [Line2D([], [], color=t.colors[m], lw=2, label=m) for m in t.methods]
    handles += [Line2D([], [], ls="", marker=mk, color="grey", markeredgecolor="black", ms=8,
                       label=label) for mk, label in RESET_MARKERS.values()]
    fig.legend(handles=handles, loc="outside right upper")
    fig.suptitle(f"{t.study.name}: keep ratio and effective activation rate per epoch")
    caption = ("One row per seed. Left: the keep ratio r each controller set for the epoch's "
               "training (log scale); a marker on an epoch means its end-of-epoch probe reset r "
               "to 1, by cause: the guard (the measured cost of sparsity exceeded it above "
               "r_min), the floor (r had reached r_min) or the sawtooth's fixed period. Right: "
               "non-zero hooked activations / all hooked activations during the epoch's training "
               "(dense: the ReLUs' natural sparsity; r above it changes nothing).")
    return Figure("keep_ratio", title, caption, fig)


def probe_guards(t: StudyTables) -> Figure:
    title = "The probe numbers that drove the adaptive controllers"
    h = _ok(t, t.history)
    if h.empty or "probe_loss" not in h:
        return Figure("probe", title, note="no probe_loss in history.csv")
    h = h[h["method"].isin(ADAPTIVE)]
    seeds = sorted(int(s) for s in h["seed"].unique())
    if not seeds:
        return Figure("probe", title, note="no adaptive cell with probe numbers")
    fig = MplFigure(figsize=(11, 2.6 * len(seeds) + 0.6), layout="constrained")
    axes = fig.subplots(len(seeds), 3, squeeze=False, sharex=True)
    for row, seed in enumerate(seeds):
        ax_l, ax_q, ax_a = axes[row]
        for method in [m for m in t.methods if m in ADAPTIVE]:
            s = h[(h["method"] == method) & (h["seed"] == seed)].sort_values("epoch")
            if s.empty:
                continue
            epochs = s["epoch"].astype(int) + 1
            color = t.colors[method]
            ax_l.plot(epochs, _num(s, "probe_dense_loss"), color=color, ls="--", lw=1)
            ax_l.plot(epochs, _num(s, "probe_loss"), color=color, marker="o", ms=2.5, lw=1.2)
            ratio = _num(s, "probe_loss") / _num(s, "probe_dense_loss")
            drop = 100 * (_num(s, "probe_dense_acc") - _num(s, "probe_acc"))
            ax_q.plot(epochs, ratio, color=color, marker="o", ms=2.5, lw=1.2)
            ax_a.plot(epochs, drop, color=color, marker="o", ms=2.5, lw=1.2)
            for cause in ("guard", "floor"):
                hit = _num(s, f"reset_{cause}") == 1
                marker = RESET_MARKERS[cause][0]
                for ax, y in ((ax_q, ratio), (ax_a, drop)):
                    if hit.any():
                        ax.scatter(epochs[hit], y[hit], marker=marker, s=60, zorder=3,
                                   color=color, **_edge(marker))
        ax_q.axhline(1 + LOSS_TOLERANCE, color="black", lw=0.8, ls=":")
        ax_a.axhline(100 * ACC_MARGIN, color="black", lw=0.8, ls=":")
        ax_l.set_yscale("log")
        ax_l.set_ylabel(f"seed {seed}\nprobe loss")
        ax_q.set_ylabel("L_r / L_1 (S1's guard)")
        ax_a.set_ylabel("A_1 - A_r, points (S2's guard)")
        for ax in (ax_l, ax_q, ax_a):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    handles = [Line2D([], [], color=t.colors[m], lw=2, label=m) for m in t.methods
               if m in ADAPTIVE]
    handles += [Line2D([], [], color="grey", ls="--", lw=1, label="dense loss L_1"),
                Line2D([], [], color="grey", marker="o", lw=1.2, label="loss at r, L_r")]
    handles += [Line2D([], [], ls="", marker=RESET_MARKERS[c][0], color="grey",
                       markeredgecolor="black", ms=8, label=RESET_MARKERS[c][1])
                for c in ("guard", "floor")]
    fig.legend(handles=handles, loc="outside right upper")
    fig.suptitle(f"{t.study.name}: probe-set loss and accuracy at each epoch end")
    caption = ("Measured at each epoch end on the seed's fixed probe set of training images, "
               "without augmentation, at the current weights: left, the dense loss L_1 (dashed) "
               "and the loss at the epoch's keep ratio L_r; middle, L_r / L_1 with S1's guard "
               f"({1 + LOSS_TOLERANCE:g}, dotted); right, the dense minus the at-r accuracy in "
               f"points with S2's guard ({100 * ACC_MARGIN:g} points, dotted; S2 holds r for its "
               "patience before a guard reset). The guard lines are the defaults; a config may "
               "set others (method_options). At r = 1 both ratios are exactly 1 and 0.")
    return Figure("probe", title, caption, fig)


def accuracy_vs_keep_ratio(t: StudyTables) -> Figure:
    title = "Accuracy vs keep ratio at evaluation"
    c = _ok(t, t.cells)
    cols = _acc_cols(c)
    if c.empty or not cols:
        return Figure("acc_vs_r", title, note="no acc_at_r* columns in cells.csv")
    fig = MplFigure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for method in t.methods:
        m = c[c["method"] == method]
        if m.empty:
            continue
        rs = [1.0] + [float(col[len("acc_at_r"):]) for col in cols]
        means = [_num(m, "val_acc").mean()] + [_num(m, col).mean() for col in cols]
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
def tables(t: StudyTables) -> list[Table]:
    return [tab for tab in (accuracy_at_r_table(t), controller_table(t)) if tab is not None]


def accuracy_at_r_table(t: StudyTables) -> Table | None:
    c = _ok(t, t.cells)
    cols = _acc_cols(c)
    if c.empty or not cols:
        return None
    groups = []
    for (model, dataset), g in c.groupby(["model", "dataset"], sort=True):
        rows = []
        for method in t.methods:
            m = g[g["method"] == method]
            if m.empty:
                continue
            row = [Cell(method, "code"), Cell(len(m), "int")]
            for col in ["val_acc", *cols]:
                v = 100 * _num(m, col)
                row.append(Cell(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v.dropna()) > 1
                                else (f"{v.mean():.2f}" if v.notna().any() else "–")))
            rows.append(row)
        groups.append(Group(f"{model} / {dataset}", rows))
    labels = ["dense (r = 1)"] + [f"r = {col[len('acc_at_r'):]}" for col in cols]
    return Table(
        id="sparsity-acc-at-r",
        caption=("Validation accuracy (%) of the final model, dense and with top-k forced on at "
                 "each evaluation keep ratio: mean ± sample sd over seeds."),
        columns=[Column("method"), Column("seeds", "r"), *[Column(lab, "r") for lab in labels]],
        groups=groups,
    )


def controller_table(t: StudyTables) -> Table | None:
    c = _ok(t, t.cells)
    if c.empty or "keep_ratio_resets" not in c:
        return None
    groups = []
    for (model, dataset), g in c.groupby(["model", "dataset"], sort=True):
        rows = []
        for method in t.methods:
            for _, r in g[g["method"] == method].sort_values("seed").iterrows():
                rows.append([
                    Cell(method, "code"), Cell(int(r["seed"]), "int"),
                    Cell(r.get("epochs"), "int"),
                    Cell(r.get("guard_resets"), "int"), Cell(r.get("floor_resets"), "int"),
                    Cell(r.get("schedule_resets"), "int"),
                    Cell(r.get("mean_keep_ratio"), "num"),
                    Cell(r.get("mean_effective_activation_rate"), "num"),
                    Cell(100 * r["probe_fraction"] if pd.notna(r.get("probe_fraction"))
                         else None, "num"),
                ])
        groups.append(Group(f"{model} / {dataset}", rows))
    return Table(
        id="sparsity-controllers",
        caption=("What each controller did, per cell: resets by cause (guard: the measured cost "
                 "of sparsity exceeded the guard above r_min; floor: r reached r_min; schedule: "
                 "the sawtooth's period), mean keep ratio and effective activation rate over the "
                 "training epochs, and the probe's cost in % of the training time (target < 2% "
                 "at the paper's scale; on a small train split the probe is a large share of it)."),
        columns=[Column("method"), Column("seed", "r"), Column("epochs", "r"),
                 Column("guard resets", "r"), Column("floor resets", "r"),
                 Column("schedule resets", "r"), Column("mean r", "r"),
                 Column("mean act. rate", "r"), Column("probe cost (%)", "r")],
        groups=groups,
    )
