"""Report section of study `tradyn`: the sparsity / FLOP-reduction table per method and budget
(budgets in memory units and in bytes), beside accuracy. Accuracy vs budget is a generic figure."""

from __future__ import annotations

import pandas as pd

from bench.config import parse_budget
from bench.report import Cell, Column, Group, StudyTables, Table, register_study_tables

STUDY = "tradyn"
BYTES_PER_UNIT = 4  # one memory unit = one fp32 scalar slot per sample (paper Eq. 3-4)
COLUMNS = {  # cells.csv column -> label
    "mean_selected_channels": "channels",
    "mean_weight_sparsity": "weight sparsity",
    "mean_activation_sparsity": "activation sparsity",
    "mean_wgrad_flops_saved": "wgrad FLOPs saved",
    "activation_mib": "saved activations (MiB)",
    "val_acc": "val acc",
}


def _budget_text(budget: str) -> tuple[str, str]:
    parsed = parse_budget(str(budget))
    if parsed is None:
        return "none", "—"
    value, unit = parsed
    if unit != "units":
        return str(budget), "—"
    return f"{value:,.0f}", f"{value * BYTES_PER_UNIT / 1000:,.1f} kB"


@register_study_tables(STUDY)
def efficiency(t: StudyTables) -> list[Table]:
    c = t.cells
    if c.empty or "status" not in c:
        return []
    ok = c[c["status"] == "ok"]
    rows = []
    for (method, budget), g in ok.groupby(["method", "budget"], sort=False):
        units, size = _budget_text(budget)
        row = [Cell(method, "code"), Cell(units), Cell(size), Cell(len(g), "int")]
        for col in COLUMNS:
            values = pd.to_numeric(g[col], errors="coerce").dropna() if col in g else pd.Series()
            row.append(Cell(float(values.mean()) if len(values) else None, "num"))
        rows.append(((t.methods.index(method) if method in t.methods else 99,
                      parse_budget(str(budget)) or (0, "")), row))
    rows.sort(key=lambda r: (r[0][0], r[0][1][0]))
    return [Table(
        id="tradyn-efficiency",
        caption=("Efficiency per method and memory budget, means over seeds (cells with status ok): "
                 "input channels updated per epoch, weight-derivative sparsity, activation sparsity "
                 "and weight-derivative FLOPs saved against full fine-tuning (all conv channels, "
                 "averaged over epochs; bench.studies.tradyn.channels), the measured bytes saved for backward in "
                 "one step, and final validation accuracy. Budgets in memory units (one 4-byte "
                 "slot per sample) and in kB."),
        columns=[Column("method"), Column("budget (units)", "r"), Column("budget (bytes)", "r"),
                 Column("n", "r"), *[Column(label, "r") for label in COLUMNS.values()]],
        groups=[Group("", [row for _, row in rows])],
    )]
