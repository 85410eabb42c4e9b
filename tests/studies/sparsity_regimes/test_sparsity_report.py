"""Report section of study `sparsity_regimes` on scripted results: the per-seed trajectory figure
with resets by cause, the probe figure, accuracy at r, the controller table; no gain prose."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.aggregate import aggregate_study
from bench.report import StudyInput, load_study_tables
from bench.studies.sparsity_regimes import report as sreport
from bench.studies.sparsity_regimes.controllers import (
    RESET_CAUSES,
    AccuracyTargetedController,
    ConstantController,
    LossGuardedController,
    Probe,
    SawtoothController,
)

STUDY = "sparsity_regimes"
CONTROLLERS = {"dense": ConstantController, "topk_s1": LossGuardedController,
               "topk_s2": AccuracyTargetedController, "topk_sawtooth": SawtoothController}


def scripted_result(method, seed, epochs=14):
    c = CONTROLLERS[method]()
    history = []
    for epoch in range(epochs):
        r = c.r
        p = Probe(1.0 / (epoch + 1), 0.95, (1.0 + 0.6 * (1 - r)) / (epoch + 1),
                  0.95 - 0.05 * (1 - r))
        rec = {"epoch": epoch, "phase": "dense" if r == 1 else "sparse", "val_acc": 0.9,
               "keep_ratio": r, "effective_activation_rate": min(r, 0.5)}
        if c.needs_probe:
            rec.update(probe_dense_loss=p.dense_loss, probe_loss=p.loss,
                       probe_dense_acc=p.dense_acc, probe_acc=p.acc, probe_s=0.01,
                       probe_fraction=0.01)
        c.step(p if c.needs_probe else None)
        rec.update(next_keep_ratio=c.r, controller_action=c.action, reset_cause=c.reset_cause,
                   reset=int(c.action == "reset"),
                   **{f"reset_{k}": int(c.reset_cause == k) for k in RESET_CAUSES})
        history.append(rec)
    final = {"val_acc": 0.9 + 0.01 * seed, "epochs": epochs, "keep_ratio_resets": c.resets,
             **{f"{k}_resets": getattr(c, f"{k}_resets") for k in RESET_CAUSES},
             "mean_keep_ratio": sum(h["keep_ratio"] for h in history) / epochs,
             "mean_effective_activation_rate": 0.4,
             **{f"acc_at_r{r:g}": 0.9 * r ** 0.1 for r in (0.5, 0.25, 0.1, 0.05)}}
    if c.needs_probe:
        final.update(probe_size=512, probe_s_total=0.14, probe_fraction=0.01)
    return {"schema_version": 1, "cell_id": f"{STUDY}/{method}/wrn28_4/digits/none/s{seed}",
            "axes": {"study": STUDY, "method": method, "model": "wrn28_4", "dataset": "digits",
                     "budget": "none", "seed": seed},
            "status": "ok", "reason": None, "history": history, "final": final}


@pytest.fixture
def tables(tmp_path):
    paths = []
    for method in CONTROLLERS:
        for seed in range(3):
            p = tmp_path / "cells" / f"{method}_{seed}.json"
            p.parent.mkdir(exist_ok=True)
            p.write_text(json.dumps(scripted_result(method, seed)))
            paths.append(p)
    out = tmp_path / "tables"
    aggregate_study(paths, "dense", ["val_acc"], None, out)
    return load_study_tables(StudyInput(STUDY, "", "dense", ["val_acc"], out))


def test_history_keeps_the_reset_flags_and_probe_numbers(tables):
    h = tables.history
    for col in ("keep_ratio", "effective_activation_rate", "reset_guard", "reset_floor",
                "reset_schedule", "probe_loss", "probe_dense_loss", "probe_acc"):
        assert col in h, col
    s1 = h[h["method"] == "topk_s1"]
    assert (pd.to_numeric(s1["reset_guard"]) == 1).any()
    assert (pd.to_numeric(h[h["method"] == "topk_sawtooth"]["reset_schedule"]) == 1).sum() == 3


def test_figures_are_drawn_per_seed(tables):
    figs = {f.name: f for f in sreport.figures(tables)}
    assert set(figs) == {"keep_ratio", "probe", "acc_vs_r"}
    for f in figs.values():
        assert f.fig is not None, (f.name, f.note)
    axes = figs["keep_ratio"].fig.axes
    assert len(axes) == 6  # 3 seeds x (keep ratio, effective activation rate)
    assert "seed 2" in axes[4].get_ylabel()
    assert len(figs["probe"].fig.axes) == 9  # 3 seeds x (losses, S1's ratio, S2's drop)
    legend = [t.get_text() for t in figs["keep_ratio"].fig.legends[0].get_texts()]
    assert {"guard reset", "floor reset (r_min)", "schedule reset (sawtooth)"} <= set(legend)
    assert set(CONTROLLERS) <= set(legend)


def test_tables_accuracy_at_r_and_controllers_without_gain_prose(tables):
    tabs = {t.id: t for t in sreport.tables(tables)}
    assert set(tabs) == {"sparsity-acc-at-r", "sparsity-controllers"}
    acc = tabs["sparsity-acc-at-r"]
    assert [c.label for c in acc.columns][2:] == ["dense (r = 1)", "r = 0.5", "r = 0.25",
                                                    "r = 0.1", "r = 0.05"]
    assert acc.n_rows == 4
    ctl = tabs["sparsity-controllers"]
    assert ctl.n_rows == 12
    s1_rows = [row for row in ctl.groups[0].rows if row[0].value == "topk_s1"]
    assert all(row[3].value >= 1 for row in s1_rows)  # guard resets
    for t in tabs.values():  # the verdicts state the gains; no prose here may contradict them
        text = t.caption + " ".join(str(c.value) for g in t.groups for row in g.rows for c in row)
        assert "spread" not in text and "gain" not in text


def test_memory_figure_says_why_topk_uses_more_than_dense(tables, tmp_path):
    """The modelled peak of the top-k methods is above dense's: the generic memory figure of
    this study says why (dense activations kept for backward, plus a bool mask)."""
    import bench.report as report

    h = tables.history.copy()
    h["modelled_peak_mib"] = h["method"].map(lambda m: 20.0 if m == "dense" else 23.0)
    tables.history = h
    memory = report.figure_memory(tables)
    assert memory.fig is not None
    assert memory.caption.endswith(sreport.TOPK_MEMORY_NOTE)
    assert "bool mask" in memory.caption and "dense output for backward" in memory.caption
    # only this study's figures carry it
    other = report.StudyTables(**{**tables.__dict__, "study": StudyInput("other", "", "dense",
                                                                         ["val_acc"],
                                                                         tables.study.tables_dir)})
    assert sreport.TOPK_MEMORY_NOTE not in report.figure_memory(other).caption
