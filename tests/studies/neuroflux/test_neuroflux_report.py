"""Report section of study `neuroflux`: its partition table speaks the report's units
(accuracies in %, speed-up, reduction and gain as ratios), and its exit accuracy is the final
model's, the number the generic accuracy figure marks where its curve (the blocks' heads)
ends elsewhere."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import report
from bench.studies.neuroflux import report as nreport


def _tables() -> report.StudyTables:
    cells, history = [], []
    for method in ("backprop", "neuroflux"):
        for seed in range(3):
            axes = {"method": method, "model": "resnet18", "dataset": "digits",
                    "budget": "512MiB", "seed": seed}
            nf = method == "neuroflux"
            cells.append({**axes, "status": "ok", "val_acc": 0.95 if nf else 0.90,
                          "exit_val_acc": 0.95 if nf else None,
                          "speedup_vs_reference": (0.50, 0.56, 0.62)[seed] if nf else None,
                          "param_reduction": 10.9 if nf else None,
                          "inference_throughput_gain": 1.61 if nf else None,
                          "block_units": "1,2" if nf else None,
                          "block_batch_sizes": "64,32" if nf else None,
                          "first_block_bstar": 128 if nf else None, "exit_unit": 2 if nf else None,
                          "batch_size": 64})
            for epoch in range(2):  # NeuroFlux's curve: its blocks' heads, ending at 67%
                history.append({**axes, "epoch": epoch,
                                "val_acc": (0.60, 0.67)[epoch] if nf else 0.85 + 0.05 * epoch})
    study = report.StudyInput("neuroflux", "", "backprop", ["val_acc"], Path("."))
    empty = pd.DataFrame()
    t = report.StudyTables(study, pd.DataFrame(cells), pd.DataFrame(history), empty, empty,
                           empty, empty, empty, empty, [], ["backprop", "neuroflux"],
                           report.method_colors(["backprop", "neuroflux"]))
    return t


def test_partition_table_in_the_reports_units():
    (table,) = nreport.blocks_and_gains(_tables())
    labels = [c.label for c in table.columns]
    row = dict(zip(labels, (report.html_cell(c) for c in table.groups[0].rows[0])))
    assert row["exit acc"] == "95.0%" and row["backprop acc"] == "90.0%"
    assert row["speed-up"] == "0.56×"  # a ratio, not a gain over 1 (-0.44)
    assert row["speed-up 95% CI"].endswith("×") and row["speed-up 95% CI"].startswith("[0.")
    assert (row["param reduction"], row["throughput gain"]) == ("10.90×", "1.61×")


def test_accuracy_figure_marks_the_exit_models_final_accuracy():
    fig = report.figure_val_acc(_tables())
    stars = [line for ax in fig.fig.axes for line in ax.get_lines()
             if line.get_marker() == "*"]
    assert [round(float(s.get_ydata()[0]), 1) for s in stars] == [95.0]  # not the heads' 67
    assert "neuroflux: the curve is what the method logs per epoch" in fig.caption
