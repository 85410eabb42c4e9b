"""Report section of study `restwake`: the phase timeline (WAKE/REST per epoch, the
gradient-variance trace v_t and the trailing threshold each v was compared with) and the REST
epochs of each cell. The mechanism checks (checks.py) appear in the generic checks table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
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
    n_epochs = int(h["epoch"].max()) + 1
    fig = MplFigure(figsize=(10, 3.3 * len(methods) + 0.6), layout="constrained")
    rows = fig.subfigures(len(methods), 1, squeeze=False).ravel()
    for sub, method in zip(rows, methods):
        m = h[h["method"] == method]
        seeds = sorted(m["seed"].astype(int).unique())
        strip, trace = sub.subplots(2, 1, sharex=True, height_ratios=[1, 3])
        for i, seed in enumerate(seeds):
            s = m[m["seed"].astype(int) == seed].sort_values("epoch")
            epochs = s["epoch"].astype(int) + 1
            rest = (s["phase"] == "rest").to_numpy()
            strip.broken_barh([(e - 0.5, 1.0) for e in epochs[rest]], (i - 0.4, 0.8),
                              color="0.45")
            alpha = 1.0 if i == 0 else 0.55
            if "grad_cv2" in s:  # v exists for WAKE epochs only: join those
                v = pd.to_numeric(s["grad_cv2"], errors="coerce")
                ok = v.notna()
                trace.plot(epochs[ok], v[ok], color=t.colors[method], lw=1.2, marker="o", ms=2.5,
                           alpha=alpha)
                # v at or over the threshold: REST granted in the next epoch (ring), or refused by
                # the rest cap, the buffer or the last-epoch rule (cross)
                col = "rule_crossed" if "rule_crossed" in s else "next_rest"
                if col in s:
                    crossed = ok & (pd.to_numeric(s[col], errors="coerce") == 1)
                    granted = crossed & np.append(rest[1:], False)
                    trace.plot(epochs[granted], v[granted], ls="none", marker="o", ms=7,
                               mfc="none", mec="crimson", mew=1.2)
                    refused = crossed & ~granted
                    trace.plot(epochs[refused], v[refused], ls="none", marker="x", ms=7,
                               color="0.35", mew=1.2)
            if "rest_threshold" in s:  # the trailing threshold each v was compared with
                thr = pd.to_numeric(s["rest_threshold"], errors="coerce")
                ok = thr.notna()
                trace.plot(epochs[ok], thr[ok], color="black", ls="--", lw=1, alpha=0.7 * alpha,
                           drawstyle="steps-mid")
        strip.set_ylim(len(seeds) - 0.5, -0.5)
        strip.set_xlim(0.5, n_epochs + 0.5)
        strip.set_yticks(range(len(seeds)), [f"s{s}" for s in seeds])
        strip.set_title(f"{method}: REST epochs per seed (dark)", fontsize="medium")
        strip.grid(False)
        trace.set_ylabel("v = CV² of grad norms")
        trace.set_xlabel("epoch")
        trace.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Patch(color="0.45", label="REST epoch"),
               Line2D([], [], color="0.3", lw=1.2, marker="o", ms=2.5, label="v per WAKE epoch"),
               Line2D([], [], color="black", ls="--", lw=1,
                      label="trailing threshold\n(factor x median of v\nover previous WAKE epochs)"),
               Line2D([], [], ls="none", marker="o", ms=7, mfc="none", mec="crimson",
                      label="v >= threshold:\nREST next epoch"),
               Line2D([], [], ls="none", marker="x", ms=7, color="0.35",
                      label="v >= threshold, REST refused\n(2 in 10 cap, buffer, last epoch)")]
    fig.legend(handles=handles, loc="outside right upper")
    fig.suptitle(f"{t.study.name}: WAKE/REST phases and the gradient-variance trace")
    caption = ("Per Rest-Wake method: the strip marks each seed's REST epochs (weights consolidated "
               "to the snapshot mean, BatchNorm re-estimated, no gradient step); the lines are "
               "each seed's v_t, the squared coefficient of variation of the epoch's minibatch "
               "gradient norms (WAKE epochs only; the first seed opaque). For the adaptive "
               "variant the dashed line is the threshold each v was compared with (factor x the "
               "median of v over the previous WAKE epochs, as configured); a v at or above it is "
               "ringed when the next epoch rested and crossed when the rest was refused (at "
               "most 2 RESTs in 10 epochs, too few snapshots, or the last epoch). The original "
               "variant rests on its fixed schedule; the last epoch is always WAKE.")
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
        n = len(s)
        asked = (int((pd.to_numeric(s["next_rest"], errors="coerce") == 1).sum())
                 if "next_rest" in s else None)
        rows.append([Cell(method, "code"), Cell(f"{model} / {dataset} / {budget}"),
                     Cell(int(seed), "int"), Cell(n, "int"), Cell(len(rest), "int"),
                     Cell(len(rest) / n if n else None, "num"),
                     Cell(", ".join(map(str, rest)) or "none"),
                     Cell(asked, "int"), Cell(str(s["phase"].iloc[-1]))])
    return [Table(
        id="restwake-phases",
        caption="REST epochs of every Rest-Wake cell (epochs counted from 1): count, fraction "
                "of the cell's epochs (the adaptive variant's mechanism check wants [0.05, 0.3]), "
                "the epochs, how often the adaptive rule asked for REST (some requests are "
                "refused: too few snapshots, the rest cap, the last epoch), and the last "
                "epoch's phase (must be wake).",
        columns=[Column("method"), Column("group"), Column("seed", "r"), Column("epochs", "r"),
                 Column("REST epochs", "r"), Column("rest fraction", "r"), Column("at epochs"),
                 Column("rule asked", "r"), Column("last phase")],
        groups=[Group("", rows)],
    )]
