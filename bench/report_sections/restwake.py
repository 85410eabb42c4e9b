"""Report section of study `restwake`: the phase timeline (WAKE/REST per epoch, the
gradient-variance trace v_t and the switching threshold tau) and the REST epochs of each cell."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

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

STUDY = "restwake"


def _phase_history(t: StudyTables) -> pd.DataFrame:
    h = t.history
    if h.empty or "phase" not in h:
        return pd.DataFrame()
    return h[h["method"] != t.study.reference]


@register_study_figures(STUDY)
def phase_timeline(t: StudyTables) -> list[Figure]:
    title = "Phase timeline"
    h = _phase_history(t)
    if h.empty:
        return [Figure("phases", title, note="no Rest-Wake cells in history.csv")]
    methods = [m for m in t.methods if m in set(h["method"])]
    fig = MplFigure(figsize=(10, 2.6 * len(methods) + 0.6), layout="constrained")
    axes = fig.subplots(len(methods), 1, squeeze=False).ravel()
    for ax, method in zip(axes, methods):
        m = h[h["method"] == method]
        seeds = sorted(m["seed"].astype(int).unique())
        for i, seed in enumerate(seeds):
            s = m[m["seed"].astype(int) == seed].sort_values("epoch")
            epochs = s["epoch"].astype(int) + 1
            for e in epochs[s["phase"] == "rest"]:
                ax.axvspan(e - 0.5, e + 0.5, color="0.85", lw=0, zorder=0)
            if "grad_cv2" in s:
                v = pd.to_numeric(s["grad_cv2"], errors="coerce")
                ax.plot(epochs, v, color=t.colors[method], alpha=0.55 + 0.45 * (i == 0), lw=1.3,
                        marker="o", ms=2.5)
            if "tau" in s:
                tau = pd.to_numeric(s["tau"], errors="coerce")
                ax.plot(epochs, tau, color="black", ls="--", lw=1, alpha=0.7)
        ax.set_title(f"{method} ({len(seeds)} seeds; shaded: epochs any seed spent in REST)")
        ax.set_ylabel("v = CV² of grad norms")
        ax.set_xlabel("epoch")
    handles = [Patch(color="0.85", label="REST epoch"),
               Line2D([], [], color="0.3", lw=1.3, marker="o", ms=2.5, label="v per WAKE epoch"),
               Line2D([], [], color="black", ls="--", lw=1, label="threshold tau (improved)")]
    fig.legend(handles=handles, loc="outside right upper")
    fig.suptitle(f"{t.study.name}: WAKE/REST phases and the gradient-variance trace")
    caption = ("Per Rest-Wake method: grey bands mark REST epochs (weights consolidated to the mean "
               "of the snapshot buffer, BatchNorm re-estimated, no gradient step); lines are each "
               "seed's v_t, the squared coefficient of variation of the epoch's minibatch gradient "
               "norms; the dashed line is the improved variant's threshold tau (median of v over "
               "its first WAKE epochs, then frozen).")
    return [Figure("phases", title, caption, fig)]


@register_study_tables(STUDY)
def rest_epochs(t: StudyTables) -> list[Table]:
    h = _phase_history(t)
    if h.empty:
        return []
    rows = []
    for (method, model, dataset, budget, seed), s in h.groupby(
            ["method", "model", "dataset", "budget", "seed"], sort=True):
        s = s.sort_values("epoch")
        rest = [int(e) + 1 for e in s.loc[s["phase"] == "rest", "epoch"]]
        tau = pd.to_numeric(s.get("tau", pd.Series(dtype=float)), errors="coerce").dropna()
        rows.append([Cell(method, "code"), Cell(f"{model} / {dataset} / {budget}"),
                     Cell(int(seed), "int"), Cell(len(rest), "int"),
                     Cell(", ".join(map(str, rest)) or "none"),
                     Cell(float(tau.iloc[-1]) if len(tau) else None, "num")])
    return [Table(
        id="restwake-phases",
        caption="REST epochs of every Rest-Wake cell (epochs counted from 1) and the improved "
                "variant's frozen threshold tau.",
        columns=[Column("method"), Column("group"), Column("seed", "r"),
                 Column("REST epochs", "r"), Column("at epochs"), Column("tau", "r")],
        groups=[Group("", rows)],
    )]
