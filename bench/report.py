"""The report: every study's tables and figures as one HTML page and one LaTeX document.

`build_report` reads the tables that aggregation wrote (`results/<study>/tables/*.csv`, see
docs/contracts.md "Tables"), draws the figures with matplotlib, and renders
`reports/report.html.j2` (one self-contained page: CSS inlined, figures as base64 PNG) and
`reports/report.tex.j2` (booktabs tables, PDF figures under `figures/`).

Both outputs format numbers through the one function `format_number`, so a number in either
report can be checked against its CSV. Studies extend the report without editing this file:
`STUDY_FIGURES[study]` adds figures, `STUDY_TABLES[study]` adds tables, and a template
`reports/partials/studies/<study>.{html,tex}.j2`, when present, is included after the generic
section of that study.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import matplotlib.colors
import matplotlib.style
import numpy as np
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bench.errors import BenchError

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "reports"

TABLE_NAMES = (
    "cells",
    "history",
    "summary",
    "paired_tests",
    "memory_summary",
    "claims",
    "paper_checks",
    "mechanism_checks",
)
CELL_KEYS = ["method", "model", "dataset", "budget", "seed"]
GROUP_KEYS = ["model", "dataset", "budget"]
STATUSES = ("ok", "oom", "diverged", "skipped", "failed")
MEMORY_METRICS = (
    "param_mib",
    "activation_mib",
    "modelled_peak_mib",
    "peak_alloc_mib",
    "peak_reserved_mib",
)
ACCELERATOR_METRICS = ("peak_alloc_mib", "peak_reserved_mib")
NOT_MEASURED = "not measured on this device"

# Columns read as text, never as numbers: a config hash of twelve digits or a budget of `27946`
# is a name, and `none`/`NA` are values, not missing.
TEXT_COLUMNS = frozenset(
    {
        "study", "method", "reference", "versus", "model", "dataset", "budget", "status",
        "reason", "config_hash", "mlflow_run_id", "phase", "metric", "claim_id", "description",
        "source", "verdict", "check", "note", "kind", "scope", "endpoint", "test",
        "margin_origin",
    }
)  # fmt: skip

MISSING_HTML = "—"
RAGGED = r">{\raggedright\arraybackslash}p"  # LaTeX paragraph column, ragged right
MISSING_LATEX = "--"


# --------------------------------------------------------------------------------------------
# Numbers and text
# --------------------------------------------------------------------------------------------


def _is_missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):  # lists, arrays: not a missing scalar
        return False


def format_number(x: Any, digits: int = 4, *, latex: bool = False) -> str:
    """The one number format of both reports.

    - missing (None, NaN, empty) -> "—" in HTML, "--" in LaTeX;
    - bool -> "yes"/"no"; integers -> all digits ("27946");
    - floats: `digits` significant digits (`'%.4g'`: 0.83194 -> "0.8319", 12.345 -> "12.35",
      0.0001234 -> "0.0001234", 1.2e-07 -> "1.2e-07"), except that values with more integer
      digits than `digits` are rounded to an integer instead of switching to exponent form
      (12345.6 -> "12346"); "-0" is written "0"; infinities "inf"/"-inf".

    p-values use `digits=3` (`format_p`).
    """
    if _is_missing(x):
        return MISSING_LATEX if latex else MISSING_HTML
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, str):
        x = float(x)  # a number written as text; anything else is a caller's bug (ValueError)
    value = float(x)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return "0" if text == "-0" else text


def format_p(p: Any, *, latex: bool = False) -> str:
    """p-values: three significant digits (`format_number(p, 3)`)."""
    return format_number(p, 3, latex=latex)


def format_value(x: Any, *, latex: bool = False) -> str:
    """Any table value: numbers through `format_number`, text as it is, missing as a dash."""
    if _is_missing(x):
        return MISSING_LATEX if latex else MISSING_HTML
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_, int, float, np.integer, np.floating)):
        return format_number(x, latex=latex)
    return str(x)


def format_config_value(x: Any) -> str:
    """A configuration value exactly as configured (not rounded): text as is, else JSON."""
    if isinstance(x, str):
        return x
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        x = x.item()
    if isinstance(x, (list, tuple)) and all(isinstance(v, str) for v in x):
        return " ".join(x)
    return json.dumps(x, sort_keys=True, default=str)


class LatexSafe(str):
    """Text that is already LaTeX: the LaTeX environment prints it without escaping."""


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # characters that pdflatex cannot typeset from utf8 input without extra packages
    "±": r"$\pm$",
    "−": r"$-$",
    "×": r"$\times$",
    "≈": r"$\approx$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "μ": r"$\mu$",
    "—": "---",
    "–": "--",
    "·": r"$\cdot$",
    "…": r"\ldots{}",
    "→": r"$\rightarrow$",
}
_LATEX_RE = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIALS))


def latex_escape(text: Any) -> LatexSafe:
    """Escape & % $ # _ { } ~ ^ \\ (and a few unicode symbols) for LaTeX text mode."""
    if isinstance(text, LatexSafe):
        return text
    return LatexSafe(_LATEX_RE.sub(lambda m: _LATEX_SPECIALS[m.group(0)], str(text)))


def file_stem(text: str) -> str:
    """A file name part: letters, digits, '_' and '-' only (`rest_wake` stays `rest_wake`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def slug(text: str) -> str:
    """A file/anchor name: letters, digits, '-' only."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "x"


# --------------------------------------------------------------------------------------------
# Inputs and the table model the templates render
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyInput:
    """One study to report.

    name: the study's name (as in results/<name>/); description: one paragraph;
    reference: the reference method of the paired tests; metrics: the metrics the study tests;
    tables_dir: results/<name>/tables; choices: the configuration to state (nested dicts are
    flattened to dotted keys); tracking_uri: the MLflow tracking URI of its runs.
    """

    name: str
    description: str
    reference: str
    metrics: list[str]
    tables_dir: Path
    choices: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""


@dataclass
class StudyTables:
    """A study's tables as read from disk (an absent table is an empty DataFrame)."""

    study: StudyInput
    cells: pd.DataFrame
    history: pd.DataFrame
    summary: pd.DataFrame
    paired_tests: pd.DataFrame
    memory_summary: pd.DataFrame
    claims: pd.DataFrame
    paper_checks: pd.DataFrame
    mechanism_checks: pd.DataFrame
    missing: list[str]  # names of the tables that were not found
    methods: list[str]  # reference first, then in order of appearance
    colors: dict[str, str]  # method -> colour, the same in every figure of the report


@dataclass
class Figure:
    """A figure of the report. `fig=None` means not drawn; `note` says why (shown in its place).

    The files are figures/<study>_<name>.pdf and .png.
    """

    name: str
    title: str
    caption: str = ""
    fig: MplFigure | None = None
    note: str = ""


@dataclass
class Cell:
    """One table cell. kind: text | num | int | p | ci | code | note | badge."""

    value: Any
    kind: str = "text"
    css: str = ""


@dataclass
class Column:
    label: str
    align: str = "l"  # l | r
    latex: bool = True  # False: HTML only (long text that does not fit a printed page)
    latex_spec: str | None = None  # e.g. "p{5cm}"; default: the alignment
    latex_label: str | None = None  # raw LaTeX for the header, e.g. "$d_z$"

    @property
    def latex_header(self) -> LatexSafe:
        return LatexSafe(self.latex_label) if self.latex_label else latex_escape(self.label)


@dataclass
class Group:
    label: str  # "" for an ungrouped table
    rows: list[list[Cell]]


@dataclass
class Table:
    """A table rendered by the `table` macro of both templates."""

    id: str
    caption: str
    columns: list[Column]
    groups: list[Group]
    notes: list[str] = field(default_factory=list)

    def columns_for(self, target: str) -> list[Column]:
        return [c for c in self.columns if target == "html" or c.latex]

    def groups_for(self, target: str) -> list[Group]:
        if target == "html":
            return self.groups
        keep = [i for i, c in enumerate(self.columns) if c.latex]
        return [Group(g.label, [[row[i] for i in keep] for row in g.rows]) for g in self.groups]

    @property
    def latex_spec(self) -> LatexSafe:
        return LatexSafe("".join(c.latex_spec or c.align for c in self.columns_for("latex")))

    @property
    def n_rows(self) -> int:
        return sum(len(g.rows) for g in self.groups)


def _render_cell(cell: Cell, *, latex: bool) -> str:
    v, kind = cell.value, cell.kind
    if kind == "p":
        return format_p(v, latex=latex)
    if kind in ("num", "int"):
        return format_number(v, latex=latex)
    if kind == "ci":
        low, high = v
        if _is_missing(low) and _is_missing(high):
            return MISSING_LATEX if latex else MISSING_HTML
        return f"[{format_number(low, latex=latex)}, {format_number(high, latex=latex)}]"
    return format_value(v, latex=latex)


def html_cell(cell: Cell) -> str:
    """The text of a cell in HTML (autoescaped by the template)."""
    return _render_cell(cell, latex=False)


def latex_cell(cell: Cell) -> LatexSafe:
    """A cell as LaTeX: escaped text, code in \\texttt, notes in \\emph."""
    text = latex_escape(_render_cell(cell, latex=True))
    if cell.kind == "code" and not _is_missing(cell.value):
        return LatexSafe(r"\texttt{" + text + "}")
    if cell.kind == "note":
        return LatexSafe(r"\emph{" + text + "}")
    return text


# --------------------------------------------------------------------------------------------
# Reading the tables
# --------------------------------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame | None:
    """A contract CSV: text columns as text (only empty = missing), the others as numbers.

    None when the file does not exist; an empty DataFrame when it has no header.
    """
    if not path.exists():
        return None
    try:
        numeric = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    text_cols = [c for c in numeric.columns if c in TEXT_COLUMNS]
    if text_cols:
        text = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        for c in text_cols:
            numeric[c] = text[c].astype(object).where(text[c].notna(), None)
    return numeric


def _budget_key(budget: Any) -> tuple:
    """Sort budgets: `none` first, then numeric by value, then the rest by name."""
    text = "" if _is_missing(budget) else str(budget)
    if text == "none":
        return (0, 0.0, text)
    parsed = parse_budget(text)
    if parsed is not None:
        return (1, parsed[0], text)
    return (2, 0.0, text)


def parse_budget(budget: str) -> tuple[float, str] | None:
    """`'512MiB'` -> (512.0, 'MiB'); `'27946'` -> (27946.0, ''); `'none'` -> None."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(budget))
    return (float(m.group(1)), m.group(2)) if m else None


def _ordered_methods(cells: pd.DataFrame, reference: str) -> list[str]:
    seen = list(dict.fromkeys(cells["method"].dropna())) if "method" in cells else []
    return ([reference] if reference in seen else []) + [m for m in seen if m != reference]


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """A fixed colour per method: tab10 (tab20 beyond ten methods) in the given order."""
    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, m in enumerate(methods)}


def share_colors(tables: Sequence[StudyTables]) -> dict[str, str]:
    """One colour per method across every study of a report (set on each StudyTables)."""
    colors = method_colors(list(dict.fromkeys(m for t in tables for m in t.methods)))
    for t in tables:
        t.colors = {m: colors[m] for m in t.methods}
    return colors


def load_study_tables(study: StudyInput, colors: Mapping[str, str] | None = None) -> StudyTables:
    """Read results/<study>/tables/*.csv; cells.csv is required, every other table optional."""
    tables_dir = Path(study.tables_dir)
    cells = read_table(tables_dir / "cells.csv")
    if cells is None:
        raise BenchError(
            f"study '{study.name}': no cells.csv in {tables_dir}; run the aggregation step for "
            f"this study first (it writes {tables_dir}/*.csv)"
        )
    frames: dict[str, pd.DataFrame] = {"cells": cells}
    missing = []
    for name in TABLE_NAMES[1:]:
        df = read_table(tables_dir / f"{name}.csv")
        if df is None:
            missing.append(name)
            df = pd.DataFrame()
        frames[name] = df
    methods = _ordered_methods(cells, study.reference)
    colors = dict(colors) if colors is not None else method_colors(methods)
    missing_colors = [m for m in methods if m not in colors]
    if missing_colors:  # methods the caller did not colour: the next free colours
        fresh = method_colors([*colors, *missing_colors])
        colors.update({m: fresh[m] for m in missing_colors})
    return StudyTables(study=study, missing=missing, methods=methods, colors=colors, **frames)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def group_label(model: Any, dataset: Any, budget: Any) -> str:
    return (
        f"model {format_value(model)} · dataset {format_value(dataset)} · "
        f"budget {format_value(budget)}"
    )


def _groups(df: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """(model, dataset, budget) groups in a stable order."""
    if df.empty or not set(GROUP_KEYS) <= set(df.columns):
        return []
    keyed = df.assign(**{k: df[k].astype(object).where(df[k].notna(), "") for k in GROUP_KEYS})
    out = [(key, g) for key, g in keyed.groupby(GROUP_KEYS, sort=False, dropna=False)]
    return sorted(out, key=lambda kg: (str(kg[0][0]), str(kg[0][1]), _budget_key(kg[0][2])))


def _order(values: Iterable[Any], first: Sequence[str]) -> list[Any]:
    present = list(dict.fromkeys(v for v in values if not _is_missing(v)))
    return [v for v in first if v in present] + sorted(v for v in present if v not in first)


def _get(row: Mapping[str, Any] | pd.Series, col: str) -> Any:
    return row[col] if col in row else None


def _sorted_rows(g: pd.DataFrame, t: StudyTables, metric_first: bool) -> list[pd.Series]:
    methods = {m: i for i, m in enumerate(t.methods)}
    metrics = {m: i for i, m in enumerate(_order(g.get("metric", []), t.study.metrics))}

    def key(r: pd.Series) -> tuple:
        m = methods.get(_get(r, "method"), len(methods))
        k = metrics.get(_get(r, "metric"), len(metrics))
        return (k, m) if metric_first else (m, k)

    return sorted((r for _, r in g.iterrows()), key=key)


def summary_table(t: StudyTables) -> Table | None:
    df = t.summary
    if df.empty:
        return None
    cols = [
        Column("metric"), Column("method"), Column("mean", "r"), Column("std", "r"),
        Column("95% CI", "r"), Column("n", "r"),
    ]  # fmt: skip
    groups = []
    for key, g in _groups(df):
        rows = [
            [
                Cell(_get(r, "metric")), Cell(_get(r, "method")), Cell(_get(r, "mean"), "num"),
                Cell(_get(r, "std"), "num"), Cell((_get(r, "ci_low"), _get(r, "ci_high")), "ci"),
                Cell(_get(r, "n"), "int"),
            ]  # fmt: skip
            for r in _sorted_rows(g, t, metric_first=True)
        ]
        groups.append(Group(group_label(*key), rows))
    return Table(
        id=f"summary-{slug(t.study.name)}",
        caption=(
            "Mean, sample standard deviation (ddof=1), 95% t-interval of the mean and number of "
            "seeds n, per group, metric and method (cells with status ok only)."
        ),
        columns=cols,
        groups=groups,
    )


def family_size(paired: pd.DataFrame) -> int:
    """K: the number of tested primary comparisons of a study, the family of the Holm
    correction (every tested row when the table has no endpoint column)."""
    if paired.empty or "status" not in paired:
        return 0
    tested = paired["status"] == "tested"
    if "endpoint" in paired:
        tested &= paired["endpoint"] == "primary"
    return int(tested.sum())


def paired_table(t: StudyTables) -> Table | None:
    df = t.paired_tests
    if df.empty:
        return None
    k = family_size(df)
    refs = _order(df.get("versus", []), [t.study.reference])
    ref_text = ", ".join(refs) or t.study.reference
    cols = [
        Column("method"), Column("versus"), Column("metric"), Column("n pairs", "r"),
        Column("mean diff", "r"),
        Column("95% CI of diff", "r"), Column("t", "r", latex_label="$t$"),
        Column("p", "r", latex_label="$p$"), Column("p (Holm)", "r", latex_label="$p$ (Holm)"),
        Column("d_z", "r", latex_label="$d_z$"), Column("status"),
    ]  # fmt: skip
    groups = []
    for key, g in _groups(df):
        rows = []
        for r in _sorted_rows(g, t, metric_first=False):
            status = _get(r, "status")
            rows.append(
                [
                    Cell(_get(r, "method")), Cell(_get(r, "versus")), Cell(_get(r, "metric")),
                    Cell(_get(r, "n_pairs"), "int"), Cell(_get(r, "mean_diff"), "num"),
                    Cell((_get(r, "diff_ci_low"), _get(r, "diff_ci_high")), "ci"),
                    Cell(_get(r, "t"), "num"), Cell(_get(r, "p"), "p"),
                    Cell(_get(r, "p_holm"), "p"), Cell(_get(r, "d_z"), "num"),
                    Cell(status, css="tested" if status == "tested" else "untestable"),
                ]  # fmt: skip
            )
        groups.append(Group(group_label(*key), rows))
    caption = (
        f"Each method against the reference ({ref_text}) and every comparison the study or its "
        "claims declare: paired t-test (scipy.stats.ttest_rel) on the difference method − "
        "versus, paired on seed index; mean difference with its 95% t-interval; d_z = mean "
        "difference / standard deviation of the differences. "
        f"Holm correction across the study's family of K = {k} tested comparisons of its "
        f"primary endpoints (study {t.study.name}); secondary endpoints are unadjusted. "
        "With fewer than 3 pairs a comparison is not testable and has no p-value."
    )
    return Table(id=f"paired-{slug(t.study.name)}", caption=caption, columns=cols, groups=groups)


def memory_table(t: StudyTables) -> Table | None:
    df = t.memory_summary
    if df.empty:
        return None
    notes = []
    unmeasured = []
    if "metric" in df and "mean" in df:
        for metric in ACCELERATOR_METRICS:
            rows = df[df["metric"] == metric]
            if rows.empty or rows["mean"].isna().all():
                unmeasured.append(metric)
        if unmeasured:
            df = df[~df["metric"].isin(unmeasured)]
            notes.append(f"{', '.join(unmeasured)}: {NOT_MEASURED} (no accelerator).")
    cols = [
        Column("metric"), Column("method"), Column("mean (MiB)", "r"), Column("std", "r"),
        Column("min", "r"), Column("max", "r"), Column("n", "r"),
    ]  # fmt: skip
    metric_order = list(MEMORY_METRICS)
    groups = []
    for key, g in _groups(df):
        ordered = sorted(
            _sorted_rows(g, t, metric_first=True),
            key=lambda r: (
                metric_order.index(_get(r, "metric"))
                if _get(r, "metric") in metric_order
                else len(metric_order)
            ),
        )
        rows = [
            [
                Cell(_get(r, "metric")), Cell(_get(r, "method")), Cell(_get(r, "mean"), "num"),
                Cell(_get(r, "std"), "num"), Cell(_get(r, "min"), "num"),
                Cell(_get(r, "max"), "num"), Cell(_get(r, "n"), "int"),
            ]  # fmt: skip
            for r in ordered
        ]
        groups.append(Group(group_label(*key), rows))
    return Table(
        id=f"memory-{slug(t.study.name)}",
        caption=(
            "Memory per group, metric and method in MiB (2^20 bytes): mean, sample std, min, "
            "max over n seeds. param/activation/modelled_peak are device-independent counts; "
            "peak_alloc/peak_reserved are the accelerator's measured peaks."
        ),
        columns=cols,
        groups=groups,
        notes=notes,
    )


VERDICTS = ("reproduced", "contradicted", "inconclusive", "withheld", "not testable")


def _verdict_kind(verdict: Any) -> str:
    """The verdict's category (bench.claims): its text up to the parenthesis."""
    text = "" if _is_missing(verdict) else str(verdict)
    for v in VERDICTS:
        if text.startswith(v):
            return v
    return "not testable"


def _verdict_css(verdict: Any) -> str:
    return {"reproduced": "verdict-yes", "contradicted": "verdict-no"}.get(
        _verdict_kind(verdict), "verdict-na"
    )


def claims_table(t: StudyTables) -> Table | None:
    df = t.claims
    if df.empty:
        return None
    cols = [
        Column("claim"), Column("description", latex=False), Column("kind", latex=False),
        Column("comparison", latex=False), Column("metric", latex=False),
        Column("group", latex=False),
        Column("paper value", "r", latex_label="paper"),
        Column("paper range", "r", latex_label="range"),
        Column("margin", "r", latex_label="$\\pm$"),
        Column("estimate", "r", latex_label="est."),
        Column("90% CI", "r", latex=False),
        Column("p", "r", latex=False), Column("p (Holm)", "r", latex=False),
        Column("n", "r"),
        Column("verdict", latex_spec=RAGGED + "{3.2cm}"),
        Column("reason", latex=False), Column("source", latex=False),
    ]  # fmt: skip
    rows = []
    for _, r in df.iterrows():
        parts = [_get(r, k) for k in GROUP_KEYS]
        group = " / ".join(format_value(p) for p in parts)
        verdict = _get(r, "verdict")
        kind = " ".join(format_value(_get(r, k)) for k in ("scope", "kind") if not _is_missing(
            _get(r, k)))
        comparison = format_value(_get(r, "method"))
        if not _is_missing(_get(r, "versus")):
            comparison += " − " + format_value(_get(r, "versus"))
        rows.append(
            [
                Cell(_get(r, "claim_id")), Cell(_get(r, "description")), Cell(kind),
                Cell(comparison), Cell(_get(r, "metric")), Cell(group),
                Cell(_get(r, "paper_value"), "num"),
                Cell((_get(r, "paper_low"), _get(r, "paper_high")), "ci"),
                Cell(_get(r, "margin"), "num"), Cell(_get(r, "estimate"), "num"),
                Cell((_get(r, "ci_low"), _get(r, "ci_high")), "ci"),
                Cell(_get(r, "p"), "p"), Cell(_get(r, "p_holm"), "p"), Cell(_get(r, "n"), "int"),
                Cell(verdict, css=_verdict_css(verdict)), Cell(_get(r, "reason")),
                Cell(_get(r, "source")),
            ]  # fmt: skip
        )
    return Table(
        id=f"claims-{slug(t.study.name)}",
        caption=(
            "The paper's claims, one row per claim and group (docs/statistics.md): estimate = "
            "the reproduced mean (value, range) or seed-paired mean difference method − versus; "
            "reproduced = its 90% CI inside the paper's value ± margin (TOST; superiority: "
            "one-sided paired test, Holm over the primary claims); contradicted = the 95% CI "
            "wholly outside; otherwise inconclusive, with the seeds a decision would need."
        ),
        columns=cols,
        groups=[Group("", rows)],
    )


def claim_list(t: StudyTables) -> list[dict[str, str]]:
    """Claim id, description, group and source: the LaTeX report lists them under the table."""
    out = []
    for _, r in t.claims.iterrows():
        group = " / ".join(format_value(_get(r, k)) for k in GROUP_KEYS)
        out.append(
            {
                "claim_id": format_value(_get(r, "claim_id")),
                "description": format_value(_get(r, "description")),
                "group": group,
                "source": format_value(_get(r, "source")),
            }
        )
    return out


def checks_table(t: StudyTables) -> Table | None:
    df = t.paper_checks
    if df.empty:
        return None
    cols = [
        Column("claim"), Column("check", latex_spec=RAGGED + "{4cm}"), Column("stated", "r"),
        Column("recomputed", "r"), Column("consistent"),
        Column("note", latex_spec=RAGGED + "{5cm}"),
    ]  # fmt: skip
    rows = []
    for _, r in df.iterrows():
        consistent = _get(r, "consistent")
        css = ""
        if not _is_missing(consistent):
            css = "verdict-yes" if str(consistent).lower() in ("true", "yes", "1") else "verdict-no"
        rows.append(
            [
                Cell(_get(r, "claim_id")), Cell(_get(r, "check")),
                Cell(_get(r, "stated"), "num" if _numeric(_get(r, "stated")) else "text"),
                Cell(_get(r, "recomputed"), "num" if _numeric(_get(r, "recomputed")) else "text"),
                Cell(consistent, css=css), Cell(_get(r, "note")),
            ]  # fmt: skip
        )
    return Table(
        id=f"checks-{slug(t.study.name)}",
        caption=(
            "Paper-internal checks: the paper's own stated numbers recomputed from its per-run "
            "values."
        ),
        columns=cols,
        groups=[Group("", rows)],
    )


def _numeric(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _numerics_mark(row: Mapping[str, Any] | pd.Series) -> str:
    """' [bf16, channels_last]' for a cell run with speed options (train.precision,
    train.channels_last; bench.train), '' for the papers' fp32."""
    marks = []
    precision = _get(row, "precision")
    if isinstance(precision, str) and precision != "fp32":
        marks.append(precision)
    if _get(row, "channels_last") in (True, "True", "true", 1):
        marks.append("channels_last")
    return f" [{', '.join(marks)}]" if marks else ""


def cells_table(t: StudyTables) -> Table:
    c = t.cells
    cols = [
        Column("method"), Column("seed", "r"), Column("status"), Column("val_acc", "r"),
        Column("reason", latex=False), Column("config hash"), Column("MLflow run id"),
    ]  # fmt: skip
    groups = []
    methods = {m: i for i, m in enumerate(t.methods)}
    for key, g in _groups(c):
        ordered = sorted(
            (r for _, r in g.iterrows()),
            key=lambda r: (methods.get(_get(r, "method"), len(methods)), _get(r, "seed")),
        )
        rows = [
            [
                Cell(f"{_get(r, 'method')}{_numerics_mark(r)}"), Cell(_get(r, "seed"), "int"),
                Cell(_get(r, "status"), css=f"status-{_get(r, 'status')}"),
                Cell(_get(r, "val_acc"), "num"), Cell(_get(r, "reason")),
                Cell(_get(r, "config_hash"), "code"), Cell(_get(r, "mlflow_run_id"), "code"),
            ]  # fmt: skip
            for r in ordered
        ]
        groups.append(Group(group_label(*key), rows))
    uri = t.study.tracking_uri
    where = (
        f"MLflow runs in tracking store {uri} (open with: mlflow ui --backend-store-uri {uri})."
        if uri
        else "MLflow tracking URI not given."
    )
    return Table(
        id=f"cells-{slug(t.study.name)}",
        caption=f"Every cell: status, final val_acc, config hash and MLflow run id; [bf16], "
        f"[channels_last]: run with those speed options, not the papers' fp32. {where}",
        columns=cols,
        groups=groups,
    )


def non_ok_table(t: StudyTables) -> Table | None:
    c = t.cells
    if c.empty or "status" not in c:
        return None
    bad = c[c["status"] != "ok"]
    if bad.empty:
        return None
    cols = [
        Column("method"), Column("model"), Column("dataset"), Column("budget"),
        Column("seed", "r"), Column("status"), Column("reason", latex_spec=RAGGED + "{6cm}"),
    ]  # fmt: skip
    rows = [
        [
            Cell(_get(r, "method")), Cell(_get(r, "model")), Cell(_get(r, "dataset")),
            Cell(_get(r, "budget")), Cell(_get(r, "seed"), "int"),
            Cell(_get(r, "status"), css=f"status-{_get(r, 'status')}"), Cell(_get(r, "reason")),
        ]  # fmt: skip
        for _, r in bad.iterrows()
    ]
    return Table(
        id=f"nonok-{slug(t.study.name)}",
        caption="Cells that did not finish with status ok, with their reason.",
        columns=cols,
        groups=[Group("", rows)],
    )


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 0.05}} -> {'train.lr': 0.05}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def key_value_table(id: str, caption: str, items: Mapping[str, Any]) -> Table:
    rows = [[Cell(k), Cell(format_config_value(v), "code")] for k, v in items.items()]
    return Table(
        id=id,
        caption=caption,
        columns=[Column("key"), Column("value", latex_spec=RAGGED + "{11cm}")],
        groups=[Group("", rows)],
    )


PROVENANCE_KEYS = ("git_sha", "git_dirty", "torch", "device", "host", "date", "command")


def provenance_table(provenance: Mapping[str, Any]) -> Table:
    items: dict[str, Any] = {}
    for k in PROVENANCE_KEYS:
        items[k] = provenance.get(k)
    items.update({k: v for k, v in provenance.items() if k not in items})
    rows = []
    for k, v in items.items():
        if k == "git_dirty" and isinstance(v, (bool, np.bool_)):
            text: Any = "yes (uncommitted changes)" if v else "no"
        elif v is None:
            text = None
        else:
            text = format_config_value(v)
        rows.append([Cell(k), Cell(text, "code")])
    return Table(
        id="provenance",
        caption="Provenance of this report.",
        columns=[Column("key"), Column("value", latex_spec=RAGGED + "{11cm}")],
        groups=[Group("", rows)],
    )


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

# Fixed style, applied over matplotlib's defaults whatever the caller's rcParams are.
FIGURE_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "svg.hashsalt": "memrepro",  # reproducible SVG ids
    "pdf.compression": 6,
}
PNG_DPI = 120


def _panels(n: int, *, ncols_max: int = 3, width: float = 4.2, height: float = 3.1):
    ncols = max(1, min(ncols_max, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = MplFigure(figsize=(width * ncols + 1.8, height * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _ok_history(t: StudyTables) -> pd.DataFrame:
    h, c = t.history, t.cells
    if h.empty or c.empty or not set(CELL_KEYS) <= set(h.columns) or "epoch" not in h:
        return pd.DataFrame()
    ok = c.loc[c["status"] == "ok", CELL_KEYS] if "status" in c else c[CELL_KEYS]
    return h.merge(ok, on=CELL_KEYS, how="inner")


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df and pd.to_numeric(df[col], errors="coerce").notna().any()


def memory_column(h: pd.DataFrame) -> tuple[str, str, bool] | None:
    """(column, axis label, measured?): measured peak_alloc_mib where present, else modelled."""
    if _has(h, "peak_alloc_mib"):
        return "peak_alloc_mib", "peak allocated memory (MiB, measured)", True
    if _has(h, "modelled_peak_mib"):
        return "modelled_peak_mib", "modelled peak memory (MiB)", False
    return None


def _seed_counts(h: pd.DataFrame) -> str:
    counts = h.groupby(["method", *GROUP_KEYS])["seed"].nunique()
    lo, hi = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    return f"n = {lo} seeds" if lo == hi else f"n = {lo}–{hi} seeds"


def _per_epoch(m: pd.DataFrame, col: str) -> pd.DataFrame:
    vals = m.assign(_v=pd.to_numeric(m[col], errors="coerce")).dropna(subset=["_v"])
    s = vals.groupby("epoch")["_v"].agg(["mean", "min", "max"]).sort_index()
    s.index = s.index.astype(int) + 1  # epochs completed
    return s


def _method_legend(fig: MplFigure, t: StudyTables, methods: Iterable[str], extra=()) -> None:
    handles = [*(Line2D([], [], color=t.colors[m], lw=2, label=m) for m in methods), *extra]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
               frameon=False)  # fmt: skip


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epochs completed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot_band(ax, s: pd.DataFrame, color: str, scale: float = 1.0, **kw) -> None:
    marker = "o" if len(s) <= 12 else None
    ax.plot(s.index, scale * s["mean"], color=color, marker=marker, ms=3, lw=1.6, **kw)
    ax.fill_between(s.index, scale * s["min"], scale * s["max"], color=color, alpha=0.18, lw=0)


def figure_val_acc(t: StudyTables) -> Figure:
    title = "Validation accuracy vs epoch"
    h = _ok_history(t)
    if not _has(h, "val_acc"):
        return Figure("val_acc", title, note="no val_acc of finished (ok) cells in history.csv")
    groups = _groups(h)
    fig, axes = _panels(len(groups))
    present = []
    for ax, (key, g) in zip(axes, groups):
        for method in t.methods:
            m = g[g["method"] == method]
            if m.empty or not _has(m, "val_acc"):
                continue
            present.append(method)
            _plot_band(ax, _per_epoch(m, "val_acc"), t.colors[method], scale=100.0)
        ax.set_title(group_label(*key))
        ax.set_ylabel("validation accuracy (%)")
        _epoch_axis(ax)
    fig.suptitle(f"{t.study.name}: validation accuracy vs epoch")
    _method_legend(fig, t, dict.fromkeys(present))
    caption = (
        "Validation accuracy (%) after each epoch, one panel per group: line = mean over seeds, "
        f"band = min–max over seeds ({_seed_counts(h)} per method; cells with status ok only)."
    )
    return Figure("val_acc", title, caption, fig)


def figure_memory(t: StudyTables) -> Figure:
    title = "Peak memory vs epoch"
    h = _ok_history(t)
    chosen = memory_column(h)
    if chosen is None:
        return Figure("memory", title, note=f"peak memory {NOT_MEASURED} (history.csv has none)")
    col, label, measured = chosen
    groups = _groups(h)
    fig, axes = _panels(len(groups))
    present = []
    for ax, (key, g) in zip(axes, groups):
        for method in t.methods:
            m = g[g["method"] == method]
            if m.empty or not _has(m, col):
                continue
            present.append(method)
            _plot_band(ax, _per_epoch(m, col), t.colors[method])
        ax.set_ylim(bottom=0)  # memory from zero: differences drawn to scale
        ax.set_title(group_label(*key))
        ax.set_ylabel(label)
        _epoch_axis(ax)
    what = "measured" if measured else "modelled"
    fig.suptitle(f"{t.study.name}: peak memory ({what}) vs epoch")
    _method_legend(fig, t, dict.fromkeys(present))
    source = (
        "peak_alloc_mib: the accelerator's max_memory_allocated over the epoch"
        if measured
        else (
            f"modelled_peak_mib (params + grads + optimizer state + activations + method "
            f"buffers); peak_alloc_mib {NOT_MEASURED}"
        )
    )
    caption = (
        f"Peak memory per epoch in MiB, {source}. Line = mean, band = min–max over seeds "
        f"({_seed_counts(h)}; cells with status ok only)."
    )
    return Figure("memory", title, caption, fig)


def figure_acc_memory(t: StudyTables) -> Figure:
    title = "Accuracy and memory vs epoch"
    h = _ok_history(t)
    chosen = memory_column(h)
    if not _has(h, "val_acc") or chosen is None:
        missing = "val_acc" if not _has(h, "val_acc") else f"peak memory ({NOT_MEASURED})"
        return Figure("acc_memory", title, note=f"no {missing} in history.csv")
    col, label, measured = chosen
    groups = _groups(h)
    fig, axes = _panels(len(groups), width=4.6)
    present = []
    for ax, (key, g) in zip(axes, groups):
        ax2 = ax.twinx()
        ax2.grid(False)
        for method in t.methods:
            m = g[g["method"] == method]
            if m.empty:
                continue
            present.append(method)
            acc, mem = _per_epoch(m, "val_acc"), _per_epoch(m, col)
            marker = "o" if len(acc) <= 12 else None
            ax.plot(acc.index, 100 * acc["mean"], color=t.colors[method], lw=1.6, marker=marker,
                    ms=3)  # fmt: skip
            ax2.plot(mem.index, mem["mean"], color=t.colors[method], lw=1.4, ls="--",
                     marker="s" if marker else None, ms=3)  # fmt: skip
        ax.set_title(group_label(*key))
        ax2.set_ylim(bottom=0)
        ax.set_ylabel("validation accuracy (%) — solid")
        ax2.set_ylabel(f"{label} — dashed")
        _epoch_axis(ax)
    fig.suptitle(f"{t.study.name}: accuracy (left) and memory (right) vs epoch")
    styles = [
        Line2D([], [], color="0.3", lw=1.6, label="accuracy (left axis)"),
        Line2D([], [], color="0.3", lw=1.4, ls="--", label="memory (right axis)"),
    ]
    _method_legend(fig, t, dict.fromkeys(present), extra=styles)
    caption = (
        "Mean over seeds per method: validation accuracy (%, solid, left axis) and "
        f"{'measured peak allocated' if measured else 'modelled peak'} memory "
        "(MiB, dashed, right axis) after each epoch; one panel per group."
    )
    return Figure("acc_memory", title, caption, fig)


def figure_acc_vs_budget(t: StudyTables) -> Figure:
    title = "Accuracy vs memory budget"
    c = t.cells
    if c.empty or "budget" not in c:
        return Figure("acc_budget", title, note="no cells")
    budgets = [b for b in dict.fromkeys(c["budget"].dropna()) if parse_budget(b) is not None]
    if len(budgets) < 2:
        declared = ", ".join(map(str, dict.fromkeys(c["budget"].dropna())))
        return Figure(
            "acc_budget",
            title,
            note=(
                "not drawn: it needs at least 2 numeric memory budgets and this study has "
                f"{len(budgets)} (budgets: {declared})"
            ),
        )
    ok = c[(c["status"] == "ok")] if "status" in c else c
    if "val_acc" not in ok or not _has(ok, "val_acc"):
        return Figure("acc_budget", title, note="no final val_acc of ok cells in cells.csv")
    units = sorted({parse_budget(b)[1] for b in budgets} - {""})
    panels = sorted({(m, d) for m, d in zip(ok["model"], ok["dataset"])}, key=str)
    fig, axes = _panels(len(panels))
    present = []
    values = [parse_budget(b)[0] for b in budgets]
    for ax, (model, dataset) in zip(axes, panels):
        g = ok[(ok["model"] == model) & (ok["dataset"] == dataset)]
        for method in t.methods:
            m = g[g["method"] == method].copy()
            if m.empty:
                continue
            m["_acc"] = 100 * pd.to_numeric(m["val_acc"], errors="coerce")
            num = m[m["budget"].map(lambda b: parse_budget(b) is not None)]
            if not num.empty:
                num = num.assign(_x=num["budget"].map(lambda b: parse_budget(b)[0]))
                s = num.groupby("_x")["_acc"].agg(["mean", "std"]).sort_index()
                ax.errorbar(s.index, s["mean"], yerr=s["std"].fillna(0.0), color=t.colors[method],
                            marker="o", ms=4, capsize=3, lw=1.6)  # fmt: skip
                present.append(method)
            unbounded = m[m["budget"] == "none"]["_acc"].dropna()
            if not unbounded.empty:
                ax.axhline(unbounded.mean(), color=t.colors[method], ls=":", lw=1.2)
                present.append(method)
        if max(values) / max(min(values), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_title(f"model {model} · dataset {dataset}")
        ax.set_xlabel(f"memory budget ({', '.join(units)})" if units else "memory budget")
        ax.set_ylabel("final validation accuracy (%)")
    fig.suptitle(f"{t.study.name}: final validation accuracy vs memory budget")
    extra = [Line2D([], [], color="0.3", ls=":", label="no budget (none)")]
    if not (c["budget"] == "none").any():
        extra = []
    _method_legend(fig, t, dict.fromkeys(present), extra=extra)
    caption = (
        "Final validation accuracy (%) against the memory budget: mean ± std over seeds "
        "(cells with status ok only); dotted line: the same method without a budget."
    )
    return Figure("acc_budget", title, caption, fig)


GENERIC_FIGURES: list[Callable[[StudyTables], Figure]] = [
    figure_val_acc,
    figure_memory,
    figure_acc_memory,
    figure_acc_vs_budget,
]

# Study-specific figures and tables: study name -> function(tables) -> list. Register with
# `STUDY_FIGURES["mystudy"] = fn` or the decorators below.
STUDY_FIGURES: dict[str, Callable[[StudyTables], list[Figure]]] = {}
STUDY_TABLES: dict[str, Callable[[StudyTables], list[Table]]] = {}


def register_study_figures(study: str):
    """Decorator: `@register_study_figures("freeze")` on `fn(tables) -> list[Figure]`."""

    def add(fn: Callable[[StudyTables], list[Figure]]):
        STUDY_FIGURES[study] = fn
        return fn

    return add


def register_study_tables(study: str):
    """Decorator: `@register_study_tables("freeze")` on `fn(tables) -> list[Table]`."""

    def add(fn: Callable[[StudyTables], list[Table]]):
        STUDY_TABLES[study] = fn
        return fn

    return add


@dataclass
class FigureView:
    """A saved figure as the templates see it."""

    id: str
    title: str
    caption: str
    note: str
    png_b64: str = ""
    pdf: LatexSafe = LatexSafe("")  # path relative to report.tex

    @property
    def drawn(self) -> bool:
        return bool(self.png_b64)


def save_figure(figure: Figure, study: str, figures_dir: Path) -> FigureView:
    """Write figures/<study>_<name>.pdf and .png (deterministic bytes); embed the PNG."""
    stem = f"{file_stem(study)}_{file_stem(figure.name)}"
    view = FigureView(
        id=f"fig-{slug(study)}-{slug(figure.name)}",
        title=figure.title,
        caption=figure.caption,
        note=figure.note,
    )
    if figure.fig is None:
        return view
    figures_dir.mkdir(parents=True, exist_ok=True)
    with matplotlib.style.context(["default", FIGURE_STYLE]):
        pdf, png = figures_dir / f"{stem}.pdf", figures_dir / f"{stem}.png"
        # No dates in the files: the same tables give the same bytes.
        figure.fig.savefig(pdf, metadata={"CreationDate": None, "ModDate": None})
        figure.fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
    view.png_b64 = base64.b64encode(png.read_bytes()).decode("ascii")
    view.pdf = LatexSafe(f"{figures_dir.name}/{pdf.name}")
    return view


def study_figures(t: StudyTables) -> list[Figure]:
    """The generic figures, then the study's own (STUDY_FIGURES)."""
    with matplotlib.style.context(["default", FIGURE_STYLE]):
        figures = [fn(t) for fn in GENERIC_FIGURES]
        extra = STUDY_FIGURES.get(t.study.name)
        if extra is not None:
            figures.extend(extra(t))
    return figures


# --------------------------------------------------------------------------------------------
# Study view and rendering
# --------------------------------------------------------------------------------------------


@dataclass
class StudyView:
    """Everything the per-study partial renders."""

    name: str
    anchor: str
    description: str
    reference: str
    metrics: list[str]
    tracking_uri: str
    grid: list[tuple[str, int, str]]  # (axis, count, values)
    n_cells: int
    n_ok: int
    status_counts: list[tuple[str, int]]
    missing_tables: list[str]
    choices: Table | None
    non_ok: Table | None
    summary: Table | None
    paired: Table | None
    family_size: int
    memory: Table | None
    claims: Table | None
    claim_list: list[dict[str, str]]
    verdicts: dict[str, int]
    checks: Table | None
    figures: list[FigureView]
    cells: Table
    extra_tables: list[Table]


def _grid(c: pd.DataFrame, methods: list[str]) -> list[tuple[str, int, str]]:
    out = []
    for axis, col in [("methods", "method"), ("models", "model"), ("datasets", "dataset"),
                      ("budgets", "budget"), ("seeds", "seed")]:  # fmt: skip
        if col not in c:
            out.append((axis, 0, MISSING_HTML))
            continue
        if col == "method":
            values = methods
        elif col == "budget":
            values = sorted(dict.fromkeys(c[col].dropna()), key=_budget_key)
        else:
            values = sorted(dict.fromkeys(c[col].dropna()), key=lambda v: (str(type(v)), v))
        out.append((axis, len(values), ", ".join(format_value(v) for v in values)))
    return out


def _verdict_counts(claims: pd.DataFrame) -> dict[str, int]:
    counts = dict.fromkeys(VERDICTS, 0)
    if "verdict" in claims:
        for v in claims["verdict"]:
            counts[_verdict_kind(v)] += 1
    return counts


def study_view(t: StudyTables, figures_dir: Path) -> StudyView:
    s, c = t.study, t.cells
    statuses = c["status"].fillna("") if "status" in c else pd.Series([], dtype=object)
    extra_statuses = sorted(set(statuses) - set(STATUSES))
    status_counts = [(st, int((statuses == st).sum())) for st in (*STATUSES, *extra_statuses)]
    choices = (
        key_value_table(
            f"choices-{slug(s.name)}",
            f"Configuration of study {s.name} (the choices behind every cell).",
            flatten(s.choices),
        )
        if s.choices
        else None
    )
    extra = STUDY_TABLES.get(s.name)
    return StudyView(
        name=s.name,
        anchor=f"study-{slug(s.name)}",
        description=s.description,
        reference=s.reference,
        metrics=list(s.metrics),
        tracking_uri=s.tracking_uri,
        grid=_grid(c, t.methods),
        n_cells=len(c),
        n_ok=int((statuses == "ok").sum()),
        status_counts=status_counts,
        missing_tables=t.missing,
        choices=choices,
        non_ok=non_ok_table(t),
        summary=summary_table(t),
        paired=paired_table(t),
        family_size=family_size(t.paired_tests),
        memory=memory_table(t),
        claims=claims_table(t),
        claim_list=claim_list(t),
        verdicts=_verdict_counts(t.claims),
        checks=checks_table(t),
        figures=[save_figure(f, s.name, figures_dir) for f in study_figures(t)],
        cells=cells_table(t),
        extra_tables=list(extra(t)) if extra is not None else [],
    )


def _latex_finalize(value: Any) -> LatexSafe:
    """Every ((( value ))) of a LaTeX template is escaped unless it is already LatexSafe."""
    return value if isinstance(value, LatexSafe) else latex_escape(value)


def _template_dir(template_dir: Path | None) -> Path:
    d = Path(template_dir) if template_dir is not None else TEMPLATE_DIR
    if not (d / "report.html.j2").exists():
        raise BenchError(f"report templates not found in {d} (expected report.html.j2 there)")
    return d


def html_environment(template_dir: Path | None = None) -> jinja2.Environment:
    """HTML templates: autoescaped, an undefined variable is an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir(template_dir))),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = html_cell
    env.filters["num"] = format_number
    env.filters["p"] = format_p
    return env


def latex_environment(template_dir: Path | None = None) -> jinja2.Environment:
    """LaTeX templates: ((* block *)), ((( variable ))), ((= comment =)); every variable is
    LaTeX-escaped (finalize) unless LatexSafe; an undefined variable is an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir(template_dir))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        block_start_string="((*",
        block_end_string="*))",
        variable_start_string="(((",
        variable_end_string=")))",
        comment_start_string="((=",
        comment_end_string="=))",
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_latex_finalize,
    )
    env.filters["latex_escape"] = latex_escape
    env.filters["raw"] = LatexSafe  # macro output (already LaTeX) printed as it is
    env.filters["cell"] = latex_cell
    env.filters["num"] = lambda x, digits=4: LatexSafe(
        latex_escape(format_number(x, digits, latex=True))
    )
    env.filters["p"] = lambda x: latex_escape(format_p(x, latex=True))
    return env


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the report is an ordinary readable file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_report(
    studies: list[StudyInput],
    out_dir: Path,
    provenance: dict,
    title: str = "memrepro report",
    *,
    template_dir: Path | None = None,
) -> dict[str, Path]:
    """Render out_dir/report.html and out_dir/report.tex (figures under out_dir/figures/).

    Returns {"html": ..., "tex": ..., "figures": out_dir/figures}. Raises BenchError when a
    study has no cells.csv (aggregation has not run) or the templates are missing.
    """
    out_dir = Path(out_dir)
    html_env, tex_env = html_environment(template_dir), latex_environment(template_dir)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)

    loaded = [load_study_tables(s) for s in studies]
    share_colors(loaded)
    views = [study_view(t, figures_dir) for t in loaded]

    css_path = _template_dir(template_dir) / "style.css"
    context = {
        "title": title,
        "studies": views,
        "provenance": provenance_table(provenance),
        "date": format_config_value(provenance.get("date", "")),
        "css": Markup(css_path.read_text(encoding="utf-8")) if css_path.exists() else "",
        "tracking_uris": list(dict.fromkeys(v.tracking_uri for v in views if v.tracking_uri)),
    }
    html = html_env.get_template("report.html.j2").render(**context)
    tex = tex_env.get_template("report.tex.j2").render(**context)
    html_path, tex_path = out_dir / "report.html", out_dir / "report.tex"
    _write_atomic(html_path, html)
    _write_atomic(tex_path, tex)
    return {"html": html_path, "tex": tex_path, "figures": figures_dir}
