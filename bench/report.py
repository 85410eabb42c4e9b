"""The report: every study's tables and figures as one HTML page and one LaTeX document.

`build_report` reads the tables that aggregation wrote (`results/<study>/tables/*.csv`, see
docs/contracts.md "Tables"), draws the figures with matplotlib, and renders
`reports/report.html.j2` (one self-contained page: CSS inlined, figures as base64 PNG, no
script, a print stylesheet) and `reports/report.tex.j2` (booktabs longtables, PDF figures under
`figures/`; every scorecard, table and figure also its own `\\input`-able file under `tex/`).

Findings first (docs/design.md): the page opens on every claim tested in the run, per paper
(`findings_table`: the paper's number, ours as the mean or seed-paired difference with its 90%
CI, the verdict and its reason in words, `claim_reason`); the claims not testable in the run are
counted there and listed in an appendix (HTML and LaTeX), not in the body. Then an overview (per
paper, its claims by verdict, failed mechanism checks, cells), then per study its scorecard
(`figure_forest`, then `scorecard_table`: each tested claim with its verdict badge, statement,
paper, ours, reason and n, the mechanism checks of each group under its claims), a paper-style
table (`paper_table`: methods as rows, mean ± std beside the paper's value), the study's figures
and its tables, each collapsed behind a one-line summary (`Table.one_line`), the cells table
last (each run id linked to its MLflow run: `mlflow_links`, the runs view
`#/experiments/N/runs`). Studies without claims come last. A verdict this module does not know
(a `check`, anything newer) is shown as written, neutrally, and counted apart.

One unit per quantity (`claim_unit`, `metric_unit`): accuracies and sparsities in %, their
differences in percentage points, a superiority over a constant (stored as the gain over it) as
the ratio itself (0.56×), memory in MiB: the findings, scorecard, claims table, forest plot and
the studies' tables agree.

Both outputs format numbers through the one function `format_number` (a zero spread prints 0,
intervals of fractions are clipped to [0, 1] and marked †), so a number in either report can be
checked against its CSV. HTML columns cut or wrap long text (`Column.html`) so that no table is
wider than a 1280 px window; LaTeX columns are sized from their content to the text width
(`latex_layout`). Studies extend the report without editing this file:
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
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import matplotlib.colors
import matplotlib.patches
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
    "peak_train_mib",
    "peak_eval_mib",
)
ACCELERATOR_METRICS = ("peak_alloc_mib", "peak_reserved_mib", "peak_train_mib", "peak_eval_mib")
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
MISSING_LATEX = "–"  # an en dash (LaTeX `--` once escaped)


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


def format_number(
    x: Any, digits: int = 4, *, latex: bool = False, scale: Any = None, tiny: float = 1e-12
) -> str:
    """The one number format of both reports.

    - missing (None, NaN, empty) -> "—" in HTML, "--" in LaTeX;
    - bool -> "yes"/"no"; integers -> all digits ("27946");
    - floats: `digits` significant digits (`'%.4g'`: 0.83194 -> "0.8319", 12.345 -> "12.35",
      0.0001234 -> "0.0001234", 1.2e-07 -> "1.2e-07"), except that values with more integer
      digits than `digits` are rounded to an integer instead of switching to exponent form
      (12345.6 -> "12346"); "-0" is written "0"; infinities "inf"/"-inf";
    - floating-point noise of a zero is written "0": a magnitude below `tiny` (1e-12), or below
      1e-9 of `scale` when given (the spread of identical values next to their mean: the std
      of three equal accuracies is 4.4e-17, not a number to print).

    p-values use `digits=3` and no noise floor (`format_p`): a p of 1e-15 is a real p.
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
    if abs(value) < tiny or (
        scale is not None and not _is_missing(scale) and abs(value) <= 1e-9 * abs(float(scale))
    ):
        return "0"
    text = f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return "0" if text == "-0" else text


def format_p(p: Any, *, latex: bool = False) -> str:
    """p-values: three significant digits (`format_number(p, 3)`), no noise floor."""
    return format_number(p, 3, latex=latex, tiny=0.0)


def metric_bounds(metric: Any) -> tuple[float, float] | None:
    """The range a metric cannot leave: accuracies and sparsities are fractions in [0, 1]
    (`val_acc`, `fgsm_acc`, `acc_at_r0.5`, `exit_val_acc`, `mean_weight_sparsity`); None for
    unbounded metrics (losses, MiB, speed-ups)."""
    name = "" if _is_missing(metric) else str(metric)
    if re.search(r"(^|_)acc($|_)|accuracy|sparsity", name):
        return (0.0, 1.0)
    return None


def difference_bounds(metric: Any) -> tuple[float, float] | None:
    """The range of a difference of two values of the metric ([-1, 1] for fractions)."""
    b = metric_bounds(metric)
    return None if b is None else (b[0] - b[1], b[1] - b[0])


def clip_interval(low: Any, high: Any, bounds: tuple[float, float] | None
                  ) -> tuple[Any, Any, bool]:
    """(low, high, clipped): a t-interval clipped to the metric's range, and whether it was."""
    if bounds is None:
        return low, high, False
    clipped = False
    if not _is_missing(low) and float(low) < bounds[0]:
        low, clipped = bounds[0], True
    if not _is_missing(high) and float(high) > bounds[1]:
        high, clipped = bounds[1], True
    return low, high, clipped


CLIPPED_MARK = "†"


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
    "†": r"\textsuperscript{\dag}",
    "Δ": r"$\Delta$",
    "²": r"\textsuperscript{2}",
    "τ": r"$\tau$",
    "✓": r"$\surd$",
    "✗": r"$\times$",
    "\u200b": r"\allowbreak{}",  # a break opportunity (`breakable`)
    "\u00a0": "~",  # a no-break space
}
# `-(?=-)`: a hyphen followed by another is set as `-{}` so that `--config` prints two hyphens,
# not the en dash of the `--` ligature (an en dash in the text, `–`, still becomes `--`).
_LATEX_RE = re.compile("-(?=-)|" + "|".join(re.escape(c) for c in _LATEX_SPECIALS))
_LATEX_SPECIALS_ALL = {**_LATEX_SPECIALS, "-": "-{}"}


_GREEK_CAPITALS = {"GAMMA", "DELTA", "THETA", "LAMDA", "XI", "PI", "SIGMA", "UPSILON", "PHI",
                   "PSI", "OMEGA"}


def _unicode_fallback(ch: str) -> str:
    """A character pdflatex cannot set from utf8 input: a Greek letter as its math symbol,
    anything else as its Unicode name in brackets (the document still compiles, and says what
    was there)."""
    name = unicodedata.name(ch, f"U+{ord(ch):04X}")
    m = re.fullmatch(r"GREEK (SMALL|CAPITAL) LETTER (\w+)", name)
    if m and (m.group(1) == "SMALL" or m.group(2) in _GREEK_CAPITALS):
        letter = m.group(2).lower().replace("lamda", "lambda")
        return f"$\\{letter.capitalize() if m.group(1) == 'CAPITAL' else letter}$"
    return f"[{name.lower()}]"


def latex_escape(text: Any) -> LatexSafe:
    """Escape & % $ # _ { } ~ ^ \\ (and a few unicode symbols) for LaTeX text mode; a character
    beyond Latin-1 that pdflatex cannot set becomes a math symbol or its name
    (`_unicode_fallback`)."""
    if isinstance(text, LatexSafe):
        return text
    out = _LATEX_RE.sub(lambda m: _LATEX_SPECIALS_ALL[m.group(0)], str(text))
    return LatexSafe(re.sub(r"[^\x00-\xff]", lambda m: _unicode_fallback(m.group(0)), out))


_BREAK = "\u200b"


def breakable(text: Any, chunk: int = 8) -> str:
    """Text with break opportunities for a narrow LaTeX column: after `_`, `/` and `,`, and every
    `chunk` characters of a longer unbroken run (a 32-digit run id); `latex_escape` writes
    them as `\\allowbreak{}`. LaTeX only: the HTML report never carries them."""
    if _is_missing(text):
        return text
    marked = re.sub(r"([_/,=])(?=\S)", "\\1" + _BREAK, str(text))

    def split(m: re.Match) -> str:
        parts = m.group(0).split(_BREAK)
        out = []
        for part in parts:
            if len(part) > chunk + 4:
                part = _BREAK.join(part[i:i + chunk] for i in range(0, len(part), chunk))
            out.append(part)
        return _BREAK.join(out)

    return re.sub(r"\S+", split, marked)


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


MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default
MLFLOW_UI_ENV = "MEMREPRO_MLFLOW_UI"  # another address (a server, another port)


@dataclass(frozen=True)
class MlflowLinks:
    """Links into MLflow's UI for one study: `runs` is the experiment's runs table
    (`#/experiments/N/runs`: MLflow 3 opens a bare `#/experiments/N` on its GenAI overview),
    `run(id)` one run's page. Empty when the experiment's id cannot be read (no store, tracking
    off); `why` then says so."""

    base: str = ""
    experiment_id: str = ""
    why: str = ""

    @property
    def runs(self) -> str:
        if not (self.base and self.experiment_id):
            return ""
        return f"{self.base}/#/experiments/{self.experiment_id}/runs"

    def run(self, run_id: Any) -> str:
        if not self.runs or _is_missing(run_id) or not str(run_id).strip():
            return ""
        return f"{self.runs}/{str(run_id).strip()}"

    def method_runs(self, method: Any) -> str:
        """The runs table filtered to one method's runs (MLflow's `searchFilter` URL
        parameter: the filter `params.method = '<method>'` typed in its search box)."""
        if not self.runs or _is_missing(method) or "'" in str(method):
            return self.runs
        import urllib.parse

        flt = urllib.parse.quote(f"params.method = '{method}'", safe="'")
        return f"{self.runs}?searchFilter={flt}"


def mlflow_links(study: str, tracking_uri: str, ui: str | None = None) -> MlflowLinks:
    """The MLflow UI links of a study's experiment. A `sqlite:///` store is read directly (no
    MLflow import; read-only) and served by `mlflow ui` at MLFLOW_UI (or $MEMREPRO_MLFLOW_UI);
    an http(s) tracking server is its own UI, asked for the experiment by name."""
    uri = (tracking_uri or "").strip()
    base = (ui or os.environ.get(MLFLOW_UI_ENV) or "").rstrip("/")
    if not uri:
        return MlflowLinks(why="no tracking URI given")
    try:
        if uri.startswith("sqlite:///"):
            import sqlite3

            path = Path(uri[len("sqlite:///"):])
            if not path.is_file():
                return MlflowLinks(why=f"no MLflow store at {path}")
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                found = con.execute("SELECT experiment_id FROM experiments WHERE name = ?",
                                    (study,)).fetchone()
            finally:
                con.close()
            base = base or MLFLOW_UI
        elif uri.startswith(("http://", "https://")):
            import urllib.parse
            import urllib.request

            query = urllib.parse.urlencode({"experiment_name": study})
            with urllib.request.urlopen(
                f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=5
            ) as resp:
                doc = json.loads(resp.read().decode("utf-8"))
            found = (doc.get("experiment", {}).get("experiment_id"),)
            base = base or uri.rstrip("/")
        else:
            return MlflowLinks(why=f"tracking URI {uri}: no UI address known for it")
    except Exception as e:  # noqa: BLE001 - a report without links, saying why
        return MlflowLinks(why=f"experiment {study} not readable from {uri} ({e})")
    if not found or not found[0]:
        return MlflowLinks(why=f"no experiment {study} in {uri}")
    return MlflowLinks(base, str(found[0]))


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
    links: MlflowLinks = field(default_factory=MlflowLinks)


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
    """One table cell. kind: text | num | int | p | ci | code | note | badge.

    `scale`: a num cell's magnitude of reference (a std's mean: see `format_number`);
    `bounds`: a ci cell's metric range (`metric_bounds`): the interval is clipped to it and
    marked † when it leaves it; `title`: the full text behind a truncated cell (HTML tooltip);
    `sub`: a second, smaller line under the value (the scorecard's claim cells). A badge cell's
    value is a verdict: the badge shows its category, the title its full text.
    """

    value: Any
    kind: str = "text"
    css: str = ""
    title: str = ""
    sub: str = ""
    scale: Any = None
    bounds: tuple[float, float] | None = None
    href: str = ""  # HTML: the cell links there

    @property
    def clipped(self) -> bool:
        if self.kind == "ci":
            return clip_interval(*self.value, self.bounds)[2]
        if self.kind == "est":
            return clip_interval(*self.value[1:], self.bounds)[2]
        return False


@dataclass
class Column:
    """A table column. `html`: CSS classes of its HTML cells (`id`: a name that may break
    anywhere; `trunc`: one line cut with an ellipsis, the full text on hover; `wrap`: text that
    wraps in a bounded width; `clamp`: at most two lines). `latex=False`: HTML only.
    `latex_spec`: a fixed LaTeX width (`"p{5cm}"`, `RAGGED + "{5cm}"`); the other columns share
    the rest of the text width by their content (`latex_layout`)."""

    label: str
    align: str = "l"  # l | r
    latex: bool = True  # False: HTML only (long text that does not fit a printed page)
    latex_spec: str | None = None
    latex_label: str | None = None  # raw LaTeX for the header, e.g. "$d_z$"
    html: str = ""

    @property
    def latex_header(self) -> LatexSafe:
        if self.latex_label:
            return LatexSafe(self.latex_label)
        return latex_escape(breakable(self.label))


@dataclass
class Group:
    label: str  # "" for an ungrouped table
    rows: list[list[Cell]]
    footer: list[Cell] = field(default_factory=list)  # one full-width line after the rows


@dataclass
class Table:
    """A table rendered by the `table` macro of both templates.

    `title`: its short name (the one-line summary of its collapsed HTML section and the name of
    its standalone LaTeX file); `summary`: that one line (default: the title and row count);
    `scroll`: a study's own table whose width this module does not control: the HTML page
    puts it in a horizontal scroll container (a last resort; the generic tables fit 1280 px).
    """

    id: str
    caption: str
    columns: list[Column]
    groups: list[Group]
    notes: list[str] = field(default_factory=list)
    title: str = ""
    summary: str = ""
    scroll: bool = False

    def columns_for(self, target: str) -> list[Column]:
        return [c for c in self.columns if target == "html" or c.latex]

    def groups_for(self, target: str) -> list[Group]:
        if target == "html":
            return self.groups
        keep = [i for i, c in enumerate(self.columns) if c.latex]
        return [Group(g.label, [[row[i] for i in keep] for row in g.rows], g.footer)
                for g in self.groups]

    @property
    def latex(self) -> LatexLayout:
        """Its LaTeX layout: column spec, full width, landscape or not (`latex_layout`)."""
        return latex_layout(self)

    @property
    def latex_spec(self) -> LatexSafe:
        return self.latex.spec

    @property
    def n_rows(self) -> int:
        return sum(len(g.rows) for g in self.groups)

    @property
    def all_notes(self) -> list[str]:
        """Its notes, and the † note when an interval of it was clipped."""
        clipped = [c for g in self.groups for row in g.rows for c in row if c.clipped]
        if not clipped:
            return list(self.notes)
        lo, hi = clipped[0].bounds or (0.0, 1.0)
        return [*self.notes, (
            f"{CLIPPED_MARK} interval clipped to the metric's range [{format_number(lo)}, "
            f"{format_number(hi)}] (a fraction cannot leave it); the t-interval itself is in "
            "the CSV and in the cell's tooltip."
        )]

    @property
    def one_line(self) -> str:
        """The line that stands for the table while it is collapsed."""
        if self.summary:
            return self.summary
        title = self.title or _first_sentence(self.caption)
        n = self.n_rows
        return f"{title} ({n} row{'s' if n != 1 else ''})"


def _first_sentence(text: str, limit: int = 90) -> str:
    first = re.split(r"(?<=[.;])\s", str(text).strip(), maxsplit=1)[0].rstrip(".;")
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def _render_cell(cell: Cell, *, latex: bool) -> str:
    v, kind = cell.value, cell.kind
    if kind == "p":
        return format_p(v, latex=latex)
    if kind in ("num", "int"):
        return format_number(v, latex=latex, scale=cell.scale)
    if kind == "ci":
        low, high, clipped = clip_interval(*v, cell.bounds)
        if _is_missing(low) and _is_missing(high):
            return MISSING_LATEX if latex else MISSING_HTML
        mark = CLIPPED_MARK if clipped else ""
        return f"[{format_number(low, latex=latex)}, {format_number(high, latex=latex)}]{mark}"
    if kind == "est":  # (estimate, ci_low, ci_high): '0.8276 [0.82, 0.84]'
        est, low, high = v
        if _is_missing(est):
            return MISSING_LATEX if latex else MISSING_HTML
        ci = _render_cell(Cell((low, high), "ci", bounds=cell.bounds), latex=latex)
        return f"{format_number(est, latex=latex)} {ci}"
    if kind == "badge":
        return _verdict_label(v)
    return format_value(v, latex=latex)


def html_cell(cell: Cell) -> str:
    """The text of a cell in HTML (autoescaped by the template)."""
    return _render_cell(cell, latex=False)


WBR_MIN_CHARS = 24  # a shorter name fits its column whole (12em) and stays greppable as is


def html_breakable(text: Any) -> Markup:
    """Escaped text in which a name longer than WBR_MIN_CHARS gets a break opportunity (<wbr>)
    after each `_` and `/`: it wraps at its parts, not mid-word (the browser's copy and find
    still see one word). Shorter names are left as they are."""

    def mark(m: re.Match) -> str:
        word = m.group(0)
        return re.sub(r"([_/])(?=\w)", r"\1<wbr>", word) if len(word) > WBR_MIN_CHARS else word

    return Markup(re.sub(r"\S+", mark, str(Markup.escape(text))))


def html_title(cell: Cell, column: Column | None = None) -> str:
    """The tooltip of an HTML cell: its `title`, else the full text of a cut or clipped cell."""
    if cell.title:
        return cell.title
    if cell.kind in ("ci", "est") and cell.clipped:
        low, high = cell.value[-2:]
        return (f"t-interval [{format_number(low)}, {format_number(high)}], clipped to "
                f"[{format_number(cell.bounds[0])}, {format_number(cell.bounds[1])}]")
    if cell.kind == "badge":
        return format_value(cell.value)
    if column is not None and re.search(r"\b(trunc|clamp|id)\b", column.html):
        return html_cell(cell)
    return ""


def latex_cell(cell: Cell) -> LatexSafe:
    """A cell as LaTeX: escaped text (with break opportunities), code in \\texttt, notes in
    \\emph, a second line in \\scriptsize."""
    text = _render_cell(cell, latex=True)
    if cell.kind not in ("num", "int", "p"):
        text = breakable(text)
    out = latex_escape(text)
    if cell.kind == "code" and not _is_missing(cell.value):
        out = LatexSafe(r"\texttt{" + out + "}")
    elif cell.kind == "note":
        out = LatexSafe(r"\emph{" + out + "}")
    elif cell.kind == "badge" and _verdict_kind(cell.value) in ("reproduced", "contradicted"):
        out = LatexSafe(r"\textbf{" + out + "}")
    if cell.sub:
        out = LatexSafe(out + r"\newline{\scriptsize " + latex_escape(breakable(cell.sub)) + "}")
    return LatexSafe(out)


# LaTeX column widths. Tables are set in \footnotesize (8 pt) with \tabcolsep 4 pt on A4 with
# 2 cm margins: a text width of 483 pt (728 pt on a landscape page). A character of Latin
# Modern at 8 pt is 2.4-6.6 pt wide (digits 4.25 pt); 4.7 pt is the conservative estimate every
# width below is computed with.
LATEX_TEXT_PT = 483.0
LATEX_LANDSCAPE_PT = 728.0
LATEX_CHAR_PT = 4.7
LATEX_PAD_PT = 8.0  # 2 \tabcolsep
_FIXED_SPEC = re.compile(r"^(?:>\{[^}]*\})?p\{([0-9.]+)(cm|mm|pt|in)\}$")
_UNIT_PT = {"cm": 28.4528, "mm": 2.84528, "pt": 1.0, "in": 72.27}


def _latex_plain(cell: Cell) -> str:
    text = _render_cell(cell, latex=True)
    return text + (" " + cell.sub if cell.sub else "")


@dataclass(frozen=True)
class LatexLayout:
    """How a table is set in LaTeX: its column spec, its full width (for the lines that span
    it) and whether it needs a landscape page (its words do not fit a portrait one)."""

    spec: LatexSafe
    width: LatexSafe
    landscape: bool


def latex_layout(t: Table) -> LatexLayout:
    """Column widths that never run past the text width: every column a paragraph column whose
    width is a fraction of \\linewidth, from its content: its natural width when the whole
    table fits, else at least its longest unbreakable word (words break after `_`, `/` and
    every 8 characters of a long run: `breakable`) with the rest shared by how much text each
    column holds. When even the words do not fit a portrait page the table goes on a landscape
    one (pdflscape). A column's `latex_spec` of the form `p{5cm}` keeps that width."""
    cols = t.columns_for("latex")
    rows = [row for g in t.groups_for("latex") for row in g.rows]
    natural, minimum, fixed = [], [], []
    for i, c in enumerate(cols):
        m = _FIXED_SPEC.match(c.latex_spec or "")
        fixed.append(float(m.group(1)) * _UNIT_PT[m.group(2)] if m else None)
        texts = [_latex_plain(r[i]) for r in rows]
        header_words = breakable(c.label).replace(_BREAK, " ").split() or [""]
        longest = max([len(x) for x in texts] + [len(c.label)], default=1)
        # words: what LaTeX cannot break (a no-break space joins, `breakable` splits)
        words = [w for x in texts for w in re.split(r"[ \t\n]+", breakable(x).replace(_BREAK, " "))]
        natural.append(min(longest, 60))
        minimum.append(max([len(w) for w in words + header_words] + [3]))
    free = [i for i in range(len(cols)) if fixed[i] is None]

    def budget(text_pt: float) -> float:
        return (text_pt - sum(f + LATEX_PAD_PT for f in fixed if f is not None)
                - LATEX_PAD_PT * len(free))

    landscape = sum(minimum[i] for i in free) * LATEX_CHAR_PT > budget(LATEX_TEXT_PT)
    text_pt = LATEX_LANDSCAPE_PT if landscape else LATEX_TEXT_PT
    room = budget(text_pt)
    width_pt = {i: natural[i] * LATEX_CHAR_PT for i in free}
    if sum(width_pt.values()) > room:  # share: the words first, the rest by text held
        width_pt = {i: minimum[i] * LATEX_CHAR_PT for i in free}
        rest = room - sum(width_pt.values())
        want = {i: max(natural[i] - minimum[i], 0) * LATEX_CHAR_PT for i in free}
        total = sum(want.values())
        if rest > 0 and total > 0:
            for i in free:
                width_pt[i] += rest * want[i] / total
        elif rest < 0:  # not even on a landscape page: shrink in proportion (words break)
            k = room / sum(width_pt.values())
            width_pt = {i: w * k for i, w in width_pt.items()}
    specs, total = [], 0.0
    for i, c in enumerate(cols):
        w = fixed[i] if fixed[i] is not None else width_pt[i]
        frac = math.floor((w + LATEX_PAD_PT) / text_pt * 1e4) / 1e4  # never round up
        total += frac
        align = r"\raggedleft" if c.align == "r" else r"\raggedright"
        specs.append(f">{{{align}\\arraybackslash\\hspace{{0pt}}}}"
                     f"p{{\\dimexpr {frac:.4f}\\linewidth-2\\tabcolsep\\relax}}")
    width = f"\\dimexpr {min(total, 1.0):.4f}\\linewidth-2\\tabcolsep\\relax"
    return LatexLayout(LatexSafe("".join(specs)), LatexSafe(width), landscape)


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


def _palette() -> list[str]:
    """tab10's ten distinct hues, then tab20's lighter variants of them (a study of more than
    ten methods)."""
    tab10 = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    tab20 = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]
    return tab10 + tab20[1::2]


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """A fixed colour per method: tab10's distinct hues in the given order (then lighter
    variants of them beyond ten methods)."""
    palette = _palette()
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def share_colors(tables: Sequence[StudyTables]) -> dict[str, str]:
    """One colour per method across every study of a report (set on each StudyTables), and
    distinct within each study: a method keeps the colour it got in an earlier study unless
    another method of this study has it already; a new one takes the first hue this study does
    not use (tab10 first: a report of 17 methods over four studies no longer falls back to
    tab20's pairs of near-identical shades)."""
    palette = _palette()
    colors: dict[str, str] = {}
    for t in tables:
        used: set[str] = set()
        own: dict[str, str] = {}
        for m in t.methods:  # methods coloured before keep their colour where they can
            if m in colors and colors[m] not in used:
                own[m] = colors[m]
                used.add(colors[m])
        for m in t.methods:
            if m not in own:
                free = [c for c in palette if c not in used]
                own[m] = (free or palette)[0]
                used.add(own[m])
                colors.setdefault(m, own[m])
        t.colors = own
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
    return StudyTables(study=study, missing=missing, methods=methods, colors=colors,
                       links=mlflow_links(study.name, study.tracking_uri), **frames)


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


def _ci(row: Mapping[str, Any] | pd.Series, low: str, high: str, bounds=None) -> Cell:
    return Cell((_get(row, low), _get(row, high)), "ci", bounds=bounds)


def summary_table(t: StudyTables) -> Table | None:
    df = t.summary
    if df.empty:
        return None
    cols = [
        Column("metric"), Column("method", html="id"), Column("mean", "r"), Column("std", "r"),
        Column("95% CI", "r"), Column("n", "r"),
    ]  # fmt: skip
    groups = []
    for key, g in _groups(df):
        rows = [
            [
                Cell(_get(r, "metric")), Cell(_get(r, "method")), Cell(_get(r, "mean"), "num"),
                Cell(_get(r, "std"), "num", scale=_get(r, "mean")),
                _ci(r, "ci_low", "ci_high", metric_bounds(_get(r, "metric"))),
                Cell(_get(r, "n"), "int"),
            ]  # fmt: skip
            for r in _sorted_rows(g, t, metric_first=True)
        ]
        groups.append(Group(group_label(*key), rows))
    n_metrics = df["metric"].nunique() if "metric" in df else 0
    return Table(
        id=f"summary-{slug(t.study.name)}",
        caption=(
            "Mean, sample standard deviation (ddof=1), 95% t-interval of the mean and number of "
            "seeds n, per group, metric and method (cells with status ok only)."
        ),
        columns=cols,
        groups=groups,
        title="Summary",
        summary=(f"Summary: mean, std and 95% CI of {n_metrics} metrics per method and group "
                 f"({len(df)} rows)"),
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
        Column("method", html="id"), Column("versus", html="id"), Column("metric"),
        Column("n pairs", "r"), Column("mean diff", "r"),
        Column("95% CI of diff", "r"), Column("t", "r", latex_label="$t$"),
        Column("p", "r", latex_label="$p$"), Column("p (Holm)", "r", latex_label="$p$ (Holm)"),
        Column("d_z", "r", latex_label="$d_z$"), Column("status", html="trunc"),
    ]  # fmt: skip
    groups = []
    for key, g in _groups(df):
        rows = []
        for r in _sorted_rows(g, t, metric_first=False):
            status = _get(r, "status")
            scale = max((abs(float(x)) for x in (_get(r, "mean_method"), _get(r, "mean_versus"))
                         if _numeric(x) and not _is_missing(x)), default=None)
            rows.append(
                [
                    Cell(_get(r, "method")), Cell(_get(r, "versus")), Cell(_get(r, "metric")),
                    Cell(_get(r, "n_pairs"), "int"),
                    Cell(_get(r, "mean_diff"), "num", scale=scale),
                    _ci(r, "diff_ci_low", "diff_ci_high", difference_bounds(_get(r, "metric"))),
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
    n_tested = int((df["status"] == "tested").sum()) if "status" in df else 0
    return Table(
        id=f"paired-{slug(t.study.name)}", caption=caption, columns=cols, groups=groups,
        title=f"Paired tests against {ref_text}",
        summary=(f"Paired tests against {ref_text}: {len(df)} comparisons, {n_tested} tested, "
                 f"Holm over K = {k}"),
    )


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
        Column("metric"), Column("method", html="id"), Column("mean (MiB)", "r"),
        Column("std", "r"), Column("min", "r"), Column("max", "r"), Column("n", "r"),
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
                Cell(_get(r, "std"), "num", scale=_get(r, "mean")),
                Cell(_get(r, "min"), "num"), Cell(_get(r, "max"), "num"),
                Cell(_get(r, "n"), "int"),
            ]  # fmt: skip
            for r in ordered
        ]
        groups.append(Group(group_label(*key), rows))
    return Table(
        id=f"memory-{slug(t.study.name)}",
        caption=(
            "Memory per group, metric and method in MiB (2^20 bytes): mean, sample std, min, "
            "max over n seeds. param/activation/modelled_peak are device-independent counts; "
            "peak_alloc/peak_reserved are the accelerator's measured peaks of the epoch; "
            "peak_train (training steps) and peak_eval (evaluation pass) exclude the "
            "device-resident dataset, as a paper's process keeping its data on the host."
        ),
        columns=cols,
        groups=groups,
        notes=notes,
        title="Memory",
        summary=(f"Memory: {', '.join(_order(df.get('metric', []), metric_order))} in MiB per "
                 f"method and group"),
    )


VERDICTS = ("reproduced", "contradicted", "inconclusive", "withheld", "check", "other",
            "not testable")
# The verdicts that decide a claim. `check` (a paper value computed from our own model: a
# consistency check, not a reproduction) and any verdict this report does not know (`other`)
# are listed with the decided ones but counted apart and drawn neutrally; `not testable` rows
# go to the appendix.
DECIDED = ("reproduced", "contradicted", "inconclusive", "withheld")
VERDICT_COLORS = {
    "reproduced": "#1e7b34",
    "contradicted": "#b3261e",
    "inconclusive": "#a15c00",
    "withheld": "#6a3d9a",
    "check": "#44546a",
    "other": "#44546a",
    "not testable": "#6b6f75",
}


def _verdict_kind(verdict: Any) -> str:
    """The verdict's category (bench.claims): its text up to the parenthesis; `other` for a
    verdict this report does not know (rendered neutrally, counted apart), `not testable` for
    none."""
    text = "" if _is_missing(verdict) else str(verdict).strip()
    if not text:
        return "not testable"
    for v in VERDICTS:
        if text == v or text.startswith(v + " ") or text.startswith(v + "("):
            return v
    return "other"


def _verdict_label(verdict: Any) -> str:
    """The badge's word: the category, or an unknown verdict's own first words."""
    kind = _verdict_kind(verdict)
    if kind != "other":
        return kind
    return re.split(r"\s*\(", str(verdict).strip(), maxsplit=1)[0][:24]


def _verdict_text(verdict: Any) -> str:
    """The verdict as claims.csv writes it, a withheld one's failed checks each named once
    with its seeds (`_condense_failures`): a row that fits a page."""
    detail = _verdict_detail(verdict)
    if _verdict_kind(verdict) != "withheld" or not detail:
        return format_value(verdict)
    return f"withheld ({_condense_failures(detail)})"


def _verdict_css(verdict: Any) -> str:
    return "v-" + _verdict_kind(verdict).replace(" ", "-")


def _verdict_detail(verdict: Any) -> str:
    """The parenthesis of a verdict: 'about 6 seeds needed', 'mechanism check failed: ...'."""
    text = "" if _is_missing(verdict) else str(verdict)
    m = re.match(r"^[a-z ]+?\s*\((.*)\)\s*$", text, re.S)
    return m.group(1) if m else ""


def _relative(kind: Any) -> bool:
    return str(kind) in ("difference", "superiority", "equivalence")


def claim_group(r: Mapping[str, Any] | pd.Series) -> str:
    """A claim row's group, short: 'resnet18 / digits / none'."""
    return " / ".join(format_value(_get(r, k)) for k in GROUP_KEYS)


def claim_comparison(r: Mapping[str, Any] | pd.Series) -> str:
    text = format_value(_get(r, "method"))
    if not _is_missing(_get(r, "versus")):
        text += " − " + format_value(_get(r, "versus"))
    return text


def claim_bounds(r: Mapping[str, Any] | pd.Series) -> tuple[float, float] | None:
    """The range of a claim's estimate: the metric's, or its difference's for relative claims
    (a superiority over a constant is a ratio: unbounded)."""
    if str(_get(r, "versus") or "").startswith("constant"):
        return None
    metric = _get(r, "metric")
    return difference_bounds(metric) if _relative(_get(r, "kind")) else metric_bounds(metric)


def claim_band(r: Mapping[str, Any] | pd.Series) -> tuple[float, float] | None:
    """The band the estimate had to lie in (bench.claims.claim_band; superiority: (margin,
    inf)); None when the row lacks the numbers."""
    from bench.claims import claim_band as band

    kind, margin = str(_get(r, "kind")), _get(r, "margin")
    if _is_missing(margin):
        return None
    margin = float(margin)
    if kind == "superiority":
        return (margin, math.inf)
    if kind == "range":
        low, high = _get(r, "paper_low"), _get(r, "paper_high")
        if _is_missing(low) or _is_missing(high):
            return None
        return band(kind, 0.0, margin, (float(low), float(high)))
    value = _get(r, "paper_value")
    if kind != "equivalence" and _is_missing(value):
        return None
    return band(kind, 0.0 if _is_missing(value) else float(value), margin)


NBSP = "\u00a0"  # keeps '± 0.02' together: a narrow column wraps before the sign, not after


RATIO_METRIC = re.compile(r"speedup|_gain$|reduction|ratio")


@dataclass(frozen=True)
class Unit:
    """How one quantity is written everywhere in the report: the findings, the scorecard, the
    forest plot's axis and the study tables agree because they all go through `claim_unit`.

    A shown value is `x * scale + offset`: an accuracy (a fraction in the CSVs) in percent, a
    difference of accuracies in percentage points, a superiority over a constant (stored as
    the gain over it) as the ratio itself (`0.56×`, not `-0.44`), memory in MiB.
    """

    kind: str = "plain"  # percent | points | ratio | MiB | plain
    scale: float = 1.0
    offset: float = 0.0
    suffix: str = ""  # after a value: "%", " pts", "×", " MiB"
    axis: str = ""  # the forest panel's axis label, with the unit

    def value(self, x: Any) -> float | None:
        if _is_missing(x) or not _numeric_text(x):
            return None
        return float(x) * self.scale + self.offset

    def number(self, x: Any, *, latex: bool = False, signed: bool = False,
               offset: bool = True) -> str:
        """The number without its unit (a band's ends, an interval's)."""
        if _is_missing(x) or not _numeric_text(x):
            return MISSING_LATEX if latex else MISSING_HTML
        v = float(x) * self.scale + (self.offset if offset else 0.0)
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if self.kind in ("percent", "points"):
            text = f"{v:.1f}" if abs(v) >= 1 or v == 0 else format_number(v, 2)
        elif self.kind == "ratio":
            text = f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
        else:
            text = format_number(v, latex=latex)
        if text in ("-0.0", "-0"):
            text = text[1:]
        if signed and v > 0:
            text = "+" + text
        return text

    def __call__(self, x: Any, *, latex: bool = False, signed: bool = False,
                 offset: bool = True) -> str:
        """The number with its unit: '83.0%', '+3.1 pts', '0.56×', '430 MiB'."""
        text = self.number(x, latex=latex, signed=signed, offset=offset)
        if text in (MISSING_HTML, MISSING_LATEX):
            return text
        return text + self.suffix

    def interval(self, low: Any, high: Any, *, latex: bool = False) -> str:
        """'[82.1, 84.3]%'-style: both ends, the unit once."""
        if _is_missing(low) and _is_missing(high):
            return MISSING_LATEX if latex else MISSING_HTML
        return f"[{self.number(low, latex=latex)}, {self.number(high, latex=latex)}]{self.suffix}"


def _numeric_text(x: Any) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


def constant_of(r: Mapping[str, Any] | pd.Series) -> float | None:
    """The constant of a superiority over a constant (versus `constant 1` -> 1.0), else None."""
    versus = _get(r, "versus")
    m = re.fullmatch(r"constant\s+(\S+)", "" if _is_missing(versus) else str(versus).strip())
    if not m or not _numeric_text(m.group(1)):
        return None
    return float(m.group(1))


def metric_unit(metric: Any, *, relative: bool = False) -> Unit:
    """The unit of a metric's values (relative: of a difference of two of them)."""
    name = "" if _is_missing(metric) else str(metric)
    if metric_bounds(name) is not None:  # fractions: accuracies, sparsities
        if relative:
            return Unit("points", 100.0, 0.0, " pts",
                        f"{name}: method − versus (percentage points)")
        return Unit("percent", 100.0, 0.0, "%", f"{name} (%)")
    if name.endswith("_mib"):
        what = f"{name}: method − versus" if relative else name
        return Unit("MiB", 1.0, 0.0, " MiB", f"{what} (MiB)")
    if RATIO_METRIC.search(name) and not relative:
        return Unit("ratio", 1.0, 0.0, "×", f"{name} (ratio, ×)")
    return Unit("plain", 1.0, 0.0, "", f"{name}: method − versus" if relative else name)


def claim_unit(r: Mapping[str, Any] | pd.Series) -> Unit:
    """The unit a claim row's paper value, margin, estimate and interval are written in."""
    c = constant_of(r)
    metric = _get(r, "metric")
    if c is not None:  # stored as the gain over c: shown as the value itself
        base = metric_unit(metric)
        if base.kind in ("plain", "ratio"):
            return Unit("ratio", 1.0, c, "×", f"{metric} (ratio, ×; the claim: above {c:g}×)")
        return Unit(base.kind, base.scale, c * base.scale, base.suffix, base.axis)
    return metric_unit(metric, relative=_relative(_get(r, "kind")))


def paper_text(r: Mapping[str, Any] | pd.Series, *, latex: bool = False) -> str:
    """The paper's side of a claim in its unit (`claim_unit`): '83.0% ± 2.0 pts', '[2.30,
    6.10]×', '|Δ| ≤ 0.25 pts', '> 1.00× (paper 2.30×)', '> 0 pts' (a sign and its number joined
    by a no-break space)."""
    kind, margin = str(_get(r, "kind")), _get(r, "margin")
    value, low, high = _get(r, "paper_value"), _get(r, "paper_low"), _get(r, "paper_high")
    u = claim_unit(r)
    spread = Unit(u.kind if u.kind != "percent" else "points", u.scale, 0.0,
                  " pts" if u.kind == "percent" else u.suffix)

    pm = ("" if _is_missing(margin) or float(margin) == 0
          else f" ±{NBSP}{spread(margin, latex=latex)}")
    if kind == "range":
        return f"{u.interval(low, high, latex=latex)}{pm}"
    if kind == "superiority":
        gain = "" if _is_missing(value) else f" (paper{NBSP}{u(value, latex=latex)})"
        m = 0.0 if _is_missing(margin) else margin
        return f">{NBSP}{u(m, latex=latex, signed=u.offset == 0)}{gain}"
    if kind == "equivalence":
        core = f"|Δ|{NBSP}≤{NBSP}{u(margin, latex=latex)}"
        return core + ("" if _is_missing(value) else f" (paper{NBSP}{u(value, latex=latex)})")
    if _is_missing(value):
        return MISSING_LATEX if latex else MISSING_HTML
    return f"{u(value, latex=latex, signed=_relative(kind))}{pm}"


def ours_text(r: Mapping[str, Any] | pd.Series, *, latex: bool = False) -> str:
    """Our side of a claim in its unit: the mean (or seed-paired difference) and its 90% CI,
    '82.8% [82.1, 83.5]' (the interval clipped to the metric's range, marked †)."""
    est = _get(r, "estimate")
    if _is_missing(est) or not _numeric_text(est):
        return MISSING_LATEX if latex else MISSING_HTML
    u = claim_unit(r)
    low, high, clipped = clip_interval(_get(r, "ci_low"), _get(r, "ci_high"), claim_bounds(r))
    text = u(est, latex=latex, signed=_relative(_get(r, "kind")) and u.offset == 0)
    if _is_missing(low) and _is_missing(high):
        return text
    ci = f"[{u.number(low, latex=latex)}, {u.number(high, latex=latex)}]"
    return f"{text} {ci}{CLIPPED_MARK if clipped else ''}"


def _band_text(r: Mapping[str, Any] | pd.Series, u: Unit) -> str:
    band = claim_band(r)
    if band is None:
        return "the paper's band"
    if str(_get(r, "kind")) == "superiority":
        return f"the margin {u(band[0], signed=u.offset == 0)}"
    return f"the paper's band {u.interval(*band)}"


def claim_reason(r: Mapping[str, Any] | pd.Series) -> str:
    """Why the claim got its verdict, in words and in the claim's unit (the reason column of
    claims.csv says the same in the CSV's raw fractions; it stays in the claims table)."""
    verdict, kind = _get(r, "verdict"), str(_get(r, "kind"))
    v = _verdict_kind(verdict)
    detail = _verdict_detail(verdict)
    csv_reason = "" if _is_missing(_get(r, "reason")) else str(_get(r, "reason"))
    if v == "not testable":
        return detail or csv_reason or "not in this run"
    if v == "withheld":
        text = _condense_failures(detail) or csv_reason or "a mechanism check it requires failed"
        m = re.match(r"verdict would be ([a-z ]+?)\b(?: \(|:)", csv_reason)
        return text + (f"; would otherwise be {m.group(1)}" if m else "")
    if v not in DECIDED:  # check, or a verdict this report does not know: its own words
        return csv_reason or detail or format_value(verdict)
    u = claim_unit(r)
    est = _get(r, "estimate")
    low, high, clipped = clip_interval(_get(r, "ci_low"), _get(r, "ci_high"), claim_bounds(r))
    band = claim_band(r)
    band_text = _band_text(r, u)
    no_spread = (not _is_missing(low) and not _is_missing(high) and float(low) == float(high))
    signed = _relative(kind) and u.offset == 0
    if no_spread:
        where = "inside" if v == "reproduced" else "outside"
        if kind == "superiority":
            where = "above" if v == "reproduced" else "not above"
        return f"every seed gives {u(est, signed=signed)} (no spread): {where} {band_text}"
    ci = u.interval(low, high) + (CLIPPED_MARK if clipped else "")
    if kind == "superiority":
        p = _get(r, "p_holm") if not _is_missing(_get(r, "p_holm")) else _get(r, "p")
        p_text = "" if _is_missing(p) else f" (p = {format_p(p)}, one-sided)"
        limit = u(band[0], signed=signed) if band is not None else "the margin"
        if v == "reproduced":
            return f"{u(est, signed=signed)} is above {limit}{p_text}"
        if v == "contradicted":
            return f"95% CI wholly below {limit}: not above it"
        return f"90% CI {ci} reaches below {limit}{p_text}; {_seeds_words(r)}"
    if v == "reproduced":
        return f"90% CI {ci} inside {band_text}"
    if v == "contradicted":
        side = "below" if band is not None and float(est) < band[0] else "above"
        return f"95% CI wholly {side} {band_text}"
    # neither inside nor (95% CI) wholly outside: the interval straddles an edge of the band
    return f"90% CI {ci} straddles {band_text}; {_seeds_words(r)}"


_FAILURE = re.compile(r"^(?P<check>\S+) \((?P<method>\S+) seed (?P<seed>\S+): (?P<rest>.*)\)$")


def _condense_failures(detail: str) -> str:
    """'mechanism check failed: c (m seed 0: v, expected e); c (m seed 1: v, expected e)' ->
    'mechanism check failed: c (m seeds 0, 1: v, expected e)': one entry per check, method and
    outcome, its seeds together (bench.claims lists each seed)."""
    prefix = "mechanism check failed: "
    if not detail.startswith(prefix):
        return detail
    merged: dict[tuple[str, str, str], list[str]] = {}
    other: list[str] = []
    for part in detail[len(prefix):].split("; "):
        m = _FAILURE.match(part.strip())
        if m:
            merged.setdefault((m["check"], m["method"], m["rest"]), []).append(m["seed"])
        else:
            other.append(part)
    parts = [f"{c} ({meth} seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}: {rest})"
             for (c, meth, rest), seeds in merged.items()]
    return prefix + "; ".join(parts + other)


FINDING_WHY_CHARS = 150  # a findings reason longer than this is cut (in full in the scorecard)


def _short(text: str, limit: int = FINDING_WHY_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def _seeds_words(r: Mapping[str, Any] | pd.Series) -> str:
    """The seeds a decision would need, with the verdict they would reach when the claims
    table says it ('~8 seeds needed to reproduce'; 'to contradict')."""
    words = _verdict_detail(_get(r, "verdict"))
    to = re.search(r"seeds? needed (to \w+)", words)
    needed = _get(r, "seeds_needed")
    if not _is_missing(needed) and _numeric_text(needed):
        n = int(float(needed))
        return f"~{n} seeds needed {to.group(1)}" if to else f"~{n} seeds would decide"
    words = words.replace("about ", "~").replace("more than ", "> ")
    if to:
        return words
    return words.replace("needed", "would decide") if words else "more seeds would decide"


def claims_table(t: StudyTables) -> Table | None:
    """Every claim row with its statistics, grouped by group (the full table behind the
    scorecard)."""
    df = t.claims
    if df.empty:
        return None
    cols = [
        Column("claim", html="id"), Column("comparison", html="id"),
        Column("paper", "r", html="wrapnum"),
        Column("margin", "r"), Column("estimate", "r", latex_label="est."),
        Column("90% CI", "r"), Column("p", "r", latex_label="$p$"),
        Column("p (Holm)", "r", latex_label="$p$ (Holm)"), Column("n", "r"),
        Column("seeds needed", "r", latex=False), Column("verdict and reason", html="wrap"),
    ]  # fmt: skip
    groups = []
    for key, g in _groups(df):
        rows = []
        for _, r in g.iterrows():
            verdict = _get(r, "verdict")
            kind = " ".join(format_value(_get(r, k)) for k in ("scope", "kind")
                            if not _is_missing(_get(r, k)))
            about = " — ".join(format_value(_get(r, k)) for k in ("description", "source")
                               if not _is_missing(_get(r, k)))
            rows.append([
                Cell(_get(r, "claim_id"), title=about, sub=kind),
                Cell(claim_comparison(r), sub=format_value(_get(r, "metric"))),
                Cell(paper_text(r)),
                Cell(_margin_text(r), title=format_value(_get(r, "margin_origin"))),
                Cell(ours_text(r).split(" [")[0]),
                Cell(_ci_text(r)),
                Cell(_get(r, "p"), "p", title=format_value(_get(r, "test"))),
                Cell(_get(r, "p_holm"), "p"), Cell(_get(r, "n"), "int"),
                _seeds_cell(r),
                Cell(_verdict_text(verdict), css=_verdict_css(verdict),
                     sub=format_value(_get(r, "reason"))
                     if not _is_missing(_get(r, "reason")) else ""),
            ])  # fmt: skip
        groups.append(Group(group_label(*key), rows))
    counts = _verdict_counts(df)
    return Table(
        id=f"claims-{slug(t.study.name)}",
        caption=(
            "The paper's claims, one row per claim and group (docs/statistics.md): estimate = "
            "the reproduced mean (value, range) or seed-paired mean difference method − versus; "
            "reproduced = its 90% CI inside the paper's value ± margin (TOST; superiority: "
            "one-sided paired test, Holm over the primary claims); contradicted = the 95% CI "
            "wholly outside; otherwise inconclusive, with the seeds a decision would need. "
            "Under each claim its scope and kind, under each comparison its metric, under each "
            "verdict claims.csv's reason (in the CSV's fractions; the other columns in the "
            "scorecard's units: accuracies in %, their differences in points, ratios as ×). "
            "Statements, sources, margin origins and tests are in claims.csv."
        ),
        columns=cols,
        groups=groups,
        title="Claims",
        summary=("Claims: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
                 + f" ({len(df)} claim rows, with their statistics)"),
    )


def _margin_text(r: Mapping[str, Any] | pd.Series) -> str:
    """A claim's margin in its unit (a spread: points for accuracies, not %)."""
    margin = _get(r, "margin")
    if _is_missing(margin):
        return MISSING_HTML
    u = claim_unit(r)
    spread = Unit(u.kind if u.kind != "percent" else "points", u.scale, 0.0,
                  " pts" if u.kind == "percent" else u.suffix)
    return spread(margin)


def _ci_text(r: Mapping[str, Any] | pd.Series) -> str:
    low, high, clipped = clip_interval(_get(r, "ci_low"), _get(r, "ci_high"), claim_bounds(r))
    if _is_missing(low) and _is_missing(high):
        return MISSING_HTML
    return claim_unit(r).interval(low, high) + (CLIPPED_MARK if clipped else "")


PAPER_TABLE_METRICS = 4  # metric pairs (ours, paper) that fit a 1280 px page and A4


def _paper_values(claims: pd.DataFrame) -> dict[tuple[str, str], list[pd.Series]]:
    """(method, metric) -> the claim rows that state the paper's value or range of it."""
    out: dict[tuple[str, str], list[pd.Series]] = {}
    if claims.empty or not {"kind", "method", "metric"} <= set(claims.columns):
        return out
    for _, r in claims.iterrows():
        if str(_get(r, "kind")) not in ("value", "range") or constant_of(r) is not None:
            continue
        has = (not _is_missing(_get(r, "paper_value")) if _get(r, "kind") == "value"
               else not (_is_missing(_get(r, "paper_low")) or _is_missing(_get(r, "paper_high"))))
        if has and not _is_missing(_get(r, "method")) and not _is_missing(_get(r, "metric")):
            out.setdefault((str(_get(r, "method")), str(_get(r, "metric"))), []).append(r)
    return out


def paper_table(t: StudyTables) -> Table | None:
    """The study as the paper would print it: methods as rows, per metric our mean ± std over
    seeds (cells with status ok) with the paper's value beside it (from the claims that state
    one: this group's row when there is one, else the paper's own setting), per group."""
    c = t.cells
    if c.empty or "status" not in c or "method" not in c:
        return None
    ok = c[c["status"] == "ok"]
    stated = _paper_values(t.claims)
    metrics = list(dict.fromkeys(
        [m for _, m in stated] + [m for m in t.study.metrics]))
    metrics = [m for m in metrics if m in ok.columns and _has(ok, m)][:PAPER_TABLE_METRICS]
    if ok.empty or not metrics:
        return None
    cols = [Column("method", html="id"), Column("n", "r")]
    for m in metrics:
        u = metric_unit(m)
        unit = {"percent": " (%)", "ratio": " (×)", "MiB": " (MiB)"}.get(u.kind, "")
        cols += [Column(f"{m}{unit}: ours", "r", html="wrapnum"),
                 Column("paper", "r", html="wrapnum")]
    groups = []
    for key, g in _groups(ok):
        rows = []
        for method in t.methods:
            mg = g[g["method"] == method]
            if mg.empty:
                continue
            row = [Cell(method, href=t.links.method_runs(method)), Cell(mg["seed"].nunique()
                                                        if "seed" in mg else len(mg), "int")]
            for m in metrics:
                u = metric_unit(m)
                x = pd.to_numeric(mg[m], errors="coerce").dropna()
                if x.empty:
                    row.append(Cell(None))
                else:
                    spread = Unit(u.kind, u.scale, 0.0, "")
                    std = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
                    text = (u.number(float(x.mean())) + (f" ± {spread.number(std)}"
                                                        if math.isfinite(std) else "")
                            + ({"percent": "", "ratio": "×", "MiB": ""}.get(u.kind, "")))
                    row.append(Cell(text, title=f"mean ± sample std over {len(x)} seeds"))
                claims = stated.get((method, m), [])
                here = [r for r in claims
                        if tuple(format_value(_get(r, k)) for k in GROUP_KEYS)
                        == tuple(format_value(v) for v in key)]
                pick = (here or claims or [None])[0]
                if pick is None:
                    row.append(Cell(None))
                else:
                    paper = paper_text(pick).split(f" ±{NBSP}")[0]
                    if u.kind in ("percent", "MiB"):  # the column's header carries it
                        paper = paper.replace(u.suffix, "")
                    row.append(Cell(paper, title=" — ".join(format_value(x) for x in (
                        _get(pick, "claim_id"), _get(pick, "source")) if not _is_missing(x))))
            rows.append(row)
        if rows:
            groups.append(Group(group_label(*key), rows))
    if not groups:
        return None
    return Table(
        id=f"papertable-{slug(t.study.name)}",
        caption=(f"Study {t.study.name} as a paper table: per method (rows) and metric, our "
                 "mean ± sample standard deviation over n seeds (cells with status ok), the "
                 "paper's value or range beside it (from the claims that state it; — where the "
                 "paper states none for that method). Accuracies in %."),
        columns=cols,
        groups=groups,
        title="Paper table",
    )


def checks_table(t: StudyTables) -> Table | None:
    """The paper-internal checks (paper_checks.csv)."""
    df = t.paper_checks
    if df.empty:
        return None
    cols = [
        Column("claim", html="id"), Column("check", html="wrap"), Column("stated", "r"),
        Column("recomputed", "r"), Column("consistent"), Column("note", html="clamp"),
    ]  # fmt: skip
    rows = []
    bad = 0
    for _, r in df.iterrows():
        consistent = _get(r, "consistent")
        css = ""
        if not _is_missing(consistent):
            ok = str(consistent).lower() in ("true", "yes", "1")
            bad += not ok
            css = "v-reproduced" if ok else "v-contradicted"
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
        title="Paper-internal checks",
        summary=f"Paper-internal checks: {len(df)} recomputed, {bad} inconsistent",
    )


def _passed(x: Any) -> bool | None:
    if _is_missing(x):
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    return str(x).strip().lower() in ("true", "yes", "1", "1.0")


def mechanism_table(t: StudyTables) -> Table | None:
    """Every mechanism check row (mechanism_checks.csv), grouped by group."""
    df = t.mechanism_checks
    if df.empty:
        return None
    cols = [
        Column("check", html="id"), Column("method", html="id"), Column("seed", "r"),
        Column("passed"), Column("value", html="wrap"), Column("expected", html="wrap"),
        Column("detail", html="clamp"),
    ]  # fmt: skip
    groups = []
    for key, g in _groups(df):
        rows = []
        for _, r in g.iterrows():
            ok = _passed(_get(r, "passed"))
            rows.append([
                Cell(_get(r, "check")), Cell(_get(r, "method")), Cell(_get(r, "seed"), "int"),
                Cell("yes" if ok else ("no" if ok is False else None),
                     css="v-reproduced" if ok else "v-contradicted"),
                Cell(_get(r, "value")), Cell(_get(r, "expected")), Cell(_get(r, "detail")),
            ])  # fmt: skip
        groups.append(Group(group_label(*key), rows))
    failed = int((~df["passed"].map(lambda x: bool(_passed(x)))).sum()) if "passed" in df else 0
    return Table(
        id=f"mechanisms-{slug(t.study.name)}",
        caption=(
            "Mechanism checks: invariants each method's mechanism must show for the verdicts "
            "that require them to mean anything (bench/checks.py); a claim whose required check "
            "failed for its method or versus in its group is withheld."
        ),
        columns=cols,
        groups=groups,
        title="Mechanism checks",
        summary=f"Mechanism checks: {len(df)} rows, {failed} failed",
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
        Column("method", html="id"), Column("seed", "r"), Column("status"),
        Column("val_acc", "r"), Column("reason", latex=False, html="trunc"),
        Column("config hash"), Column("MLflow run id"),
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
                Cell(_get(r, "config_hash"), "code"),
                Cell(_get(r, "mlflow_run_id"), "code",
                     href=t.links.run(_get(r, "mlflow_run_id"))),
            ]  # fmt: skip
            for r in ordered
        ]
        groups.append(Group(group_label(*key), rows))
    uri = t.study.tracking_uri
    where = (
        f"MLflow runs in tracking store {uri} (open with: mlflow ui --backend-store-uri {uri});"
        + (f" each run id links to its run page under {t.links.runs}." if t.links.runs else
           f" no links to them: {t.links.why}.")
        if uri
        else "MLflow tracking URI not given."
    )
    return Table(
        id=f"cells-{slug(t.study.name)}",
        caption=f"Every cell: status, final val_acc, config hash and MLflow run id; [bf16], "
        f"[channels_last]: run with those speed options, not the papers' fp32. {where}",
        columns=cols,
        groups=groups,
        title="Cells",
        summary=f"Cells: {_status_line(c)}, with config hash and MLflow run id",
    )


def _status_line(c: pd.DataFrame) -> str:
    """'9 cells: 8 ok, 1 oom'."""
    n = len(c)
    if "status" not in c or not n:
        return f"{n} cells"
    counts = c["status"].fillna("unknown").value_counts()
    order = [*STATUSES, *sorted(set(counts.index) - set(STATUSES))]
    parts = [f"{int(counts[s])} {s}" for s in order if s in counts]
    return f"{n} cell{'s' if n != 1 else ''}: " + ", ".join(parts)


def non_ok_table(t: StudyTables) -> Table | None:
    c = t.cells
    if c.empty or "status" not in c:
        return None
    bad = c[c["status"] != "ok"]
    if bad.empty:
        return None
    cols = [
        Column("method", html="id"), Column("model", html="id"), Column("dataset"),
        Column("budget"), Column("seed", "r"), Column("status"),
        Column("reason", html="clamp"),
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
        title="Cells not ok",
        summary=f"Cells not ok: {len(bad)} of {len(c)}, with their reason",
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


def key_value_table(id: str, caption: str, items: Mapping[str, Any], title: str = "") -> Table:
    rows = [[Cell(k), Cell(format_config_value(v), "code")] for k, v in items.items()]
    return Table(
        id=id,
        caption=caption,
        columns=[Column("key", html="id"), Column("value", html="wrap")],
        groups=[Group("", rows)],
        title=title,
        summary=f"{title or 'Settings'}: {len(rows)} settings" if title else "",
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
        columns=[Column("key", html="id"), Column("value", html="wrap")],
        groups=[Group("", rows)],
        title="Provenance",
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


LINESTYLES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)))


def method_linestyle(t: StudyTables, method: str) -> Any:
    """A line style per method (in the study's order) beside its colour: methods whose curves
    coincide (three top-k controllers with the same modelled memory) stay tellable apart."""
    i = t.methods.index(method) if method in t.methods else 0
    return LINESTYLES[i % len(LINESTYLES)]


def _method_legend(fig: MplFigure, t: StudyTables, methods: Iterable[str], extra=()) -> None:
    handles = [*(Line2D([], [], color=t.colors[m], lw=2, ls=method_linestyle(t, m), label=m)
                 for m in methods), *extra]
    # as many columns as fit the figure's width: a label of 8 pt is ~0.075 in a character,
    # its line and gaps ~0.6 in (a long method name must not run off the figure)
    widest = max((len(h.get_label()) for h in handles), default=1)
    fit = int(fig.get_figwidth() // (0.075 * widest + 0.6))
    fig.legend(handles=handles, loc="outside lower center",
               ncols=max(1, min(len(handles), 4, fit)), frameon=False)


def _epoch_axis(ax) -> None:
    ax.set_xlabel("epochs completed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot_band(ax, s: pd.DataFrame, color: str, scale: float = 1.0, **kw) -> None:
    marker = "o" if len(s) <= 12 else None
    ax.plot(s.index, scale * s["mean"], color=color, marker=marker, ms=3, lw=1.6, **kw)
    ax.fill_between(s.index, scale * s["min"], scale * s["max"], color=color, alpha=0.18, lw=0)


FINAL_DIFFERS = 0.005  # a final accuracy this far (0.5 points) from the curve's end is marked


def _final_value(t: StudyTables, method: str, key: tuple, metric: str) -> float | None:
    """The mean over ok seeds of a cell's final `metric` (cells.csv) in a group, or None."""
    c = t.cells
    if c.empty or metric not in c or "status" not in c:
        return None
    sel = (c["status"] == "ok") & (c["method"] == method)
    for k, v in zip(GROUP_KEYS, key):
        sel &= c[k].astype(object).where(c[k].notna(), "").astype(str) == str(v)
    x = pd.to_numeric(c.loc[sel, metric], errors="coerce").dropna()
    return float(x.mean()) if len(x) else None


def _budget_mib(budget: Any) -> float | None:
    """A memory budget in MiB ('512MiB' -> 512, '2GiB' -> 2048); None for 'none' or a budget
    in another unit (a study's own units)."""
    parsed = parse_budget("" if _is_missing(budget) else str(budget))
    if parsed is None:
        return None
    value, unit = parsed
    factor = {"MiB": 1.0, "GiB": 1024.0, "KiB": 1 / 1024}.get(unit)
    return value * factor if factor is not None else None


def _draw_budget(ax, key: tuple) -> bool:
    """The group's memory budget as a horizontal line on a memory axis (MiB)."""
    mib = _budget_mib(key[2])
    if mib is None:
        return False
    ax.axhline(mib, color="0.15", ls=(0, (6, 3)), lw=1.1, zorder=1)
    ax.annotate(f"budget {key[2]}", (0.01, mib), xycoords=("axes fraction", "data"),
                xytext=(0, 2), textcoords="offset points", fontsize=7, color="0.15")
    return True


# Study notes appended to a generic figure's caption: study -> figure name -> text (a study's
# report.py registers them with `register_caption_note`).
STUDY_CAPTION_NOTES: dict[str, dict[str, str]] = {}


def register_caption_note(study: str, figure: str, text: str) -> None:
    """Append `text` to the caption of the generic figure `figure` (val_acc, memory,
    acc_memory, acc_budget) of `study`: what only the study can explain."""
    STUDY_CAPTION_NOTES.setdefault(study, {})[figure] = text


def _caption_note(t: StudyTables, figure: str, caption: str) -> str:
    note = STUDY_CAPTION_NOTES.get(t.study.name, {}).get(figure)
    return f"{caption} {note}" if note else caption


def figure_val_acc(t: StudyTables) -> Figure:
    title = "Validation accuracy vs epoch"
    h = _ok_history(t)
    if not _has(h, "val_acc"):
        return Figure("val_acc", title, note="no val_acc of finished (ok) cells in history.csv")
    groups = _groups(h)
    fig, axes = _panels(len(groups))
    present: list[str] = []
    finals: list[str] = []
    for ax, (key, g) in zip(axes, groups):
        for method in t.methods:
            m = g[g["method"] == method]
            if m.empty or not _has(m, "val_acc"):
                continue
            present.append(method)
            curve = _per_epoch(m, "val_acc")
            _plot_band(ax, curve, t.colors[method], scale=100.0,
                       ls=method_linestyle(t, method))
            final = _final_value(t, method, key, "val_acc")
            if final is not None and abs(final - float(curve["mean"].iloc[-1])) > FINAL_DIFFERS:
                ax.plot(curve.index[-1], 100 * final, marker="*", ms=12, color=t.colors[method],
                        mec="black", mew=0.6, ls="none", zorder=6)
                ax.annotate(f"final {100 * final:.1f}%", (curve.index[-1], 100 * final),
                            xytext=(-4, 6), textcoords="offset points", ha="right",
                            fontsize=7, color=t.colors[method])
                finals.append(method)
        ax.set_title(group_label(*key))
        ax.set_ylabel("validation accuracy (%)")
        _epoch_axis(ax)
    fig.suptitle(f"{t.study.name}: validation accuracy vs epoch")
    extra = ([Line2D([], [], marker="*", ms=10, color="0.4", mec="black", ls="none",
                     label="final model (the tables' val_acc)")] if finals else [])
    _method_legend(fig, t, dict.fromkeys(present), extra=extra)
    caption = (
        "Validation accuracy (%) after each epoch, one panel per group: line = mean over seeds, "
        f"band = min–max over seeds ({_seed_counts(h)} per method; cells with status ok only)."
    )
    if finals:
        caption += (
            f" Star: the final model's val_acc, the number every table reports, where it differs "
            f"from the curve's last point by more than {100 * FINAL_DIFFERS:g} points "
            f"({', '.join(dict.fromkeys(finals))}: the curve is what the method logs per epoch, "
            "e.g. block-wise training's own head of each block, the final value is the model it "
            "returns, e.g. its early exit)."
        )
    return Figure("val_acc", title, _caption_note(t, "val_acc", caption), fig)


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
    budgets = False
    for ax, (key, g) in zip(axes, groups):
        for method in t.methods:
            m = g[g["method"] == method]
            if m.empty or not _has(m, col):
                continue
            present.append(method)
            _plot_band(ax, _per_epoch(m, col), t.colors[method], ls=method_linestyle(t, method))
        budgets |= _draw_budget(ax, key)
        ax.set_ylim(bottom=0)  # memory from zero: differences drawn to scale
        ax.set_title(group_label(*key))
        ax.set_ylabel(label)
        _epoch_axis(ax)
    what = "measured" if measured else "modelled"
    fig.suptitle(f"{t.study.name}: peak memory ({what}) vs epoch")
    budget_handle = [Line2D([], [], color="0.15", ls=(0, (6, 3)), lw=1.1,
                            label="memory budget of the group")]
    _method_legend(fig, t, dict.fromkeys(present), extra=budget_handle if budgets else ())
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
        f"({_seed_counts(h)}; cells with status ok only)"
        + ("; dashed black line: the group's memory budget." if budgets else ".")
    )
    return Figure("memory", title, _caption_note(t, "memory", caption), fig)


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
    budgets = False
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
        budgets |= _draw_budget(ax2, key)
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
    if budgets:
        styles.append(Line2D([], [], color="0.15", ls=(0, (6, 3)), lw=1.1,
                             label="memory budget (right axis)"))
    _method_legend(fig, t, dict.fromkeys(present), extra=styles)
    caption = (
        "Mean over seeds per method: validation accuracy (%, solid, left axis) and "
        f"{'measured peak allocated' if measured else 'modelled peak'} memory "
        "(MiB, dashed, right axis) after each epoch; one panel per group"
        + ("; black dashed line: the group's memory budget." if budgets else ".")
    )
    return Figure("acc_memory", title, _caption_note(t, "acc_memory", caption), fig)


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
    return Figure("acc_budget", title, _caption_note(t, "acc_budget", caption), fig)


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
    width: int = 0  # PNG pixels (the HTML page reserves the space before it decodes)
    height: int = 0

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
        # The layout the PDF's draw computed holds for the PNG: not solved a second time.
        figure.fig.set_layout_engine("none")
        figure.fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
    data = png.read_bytes()
    view.png_b64 = base64.b64encode(data).decode("ascii")
    view.width, view.height = (int.from_bytes(data[i:i + 4], "big") for i in (16, 20))  # IHDR
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
# The scorecard: every claim with its verdict, a forest plot, the mechanism checks beside them
# --------------------------------------------------------------------------------------------

NOT_IN_RUN = "Not testable in this run"


def _in_run(r: Mapping[str, Any] | pd.Series) -> bool:
    return _verdict_kind(_get(r, "verdict")) != "not testable"


def scorecard_order(claims: pd.DataFrame) -> list[tuple[tuple | None, list[pd.Series]]]:
    """The claim rows as the scorecard lists them: per group of the run (groups sorted as in
    every table), claims in file order; then the claims that are not testable here (key None)."""
    if claims.empty:
        return []
    rows = [r for _, r in claims.iterrows()]
    tested = pd.DataFrame([r for r in rows if _in_run(r)], columns=claims.columns)
    out: list[tuple[tuple | None, list[pd.Series]]] = []
    for key, g in _groups(tested):
        out.append((key, [r for _, r in g.iterrows()]))
    rest = [r for r in rows if not _in_run(r)]
    if rest:
        out.append((None, rest))
    return out


def _check_summaries(checks: pd.DataFrame, key: tuple, methods: Sequence[str]) -> list[Cell]:
    """One line per (method, check) of a group: passed k/n, or which seeds failed and how."""
    if checks.empty or not set(GROUP_KEYS) <= set(checks.columns):
        return []
    keyed = checks.assign(**{k: checks[k].astype(object).where(checks[k].notna(), "")
                             for k in GROUP_KEYS})
    mask = np.ones(len(keyed), dtype=bool)
    for k, v in zip(GROUP_KEYS, key):
        mask &= (keyed[k].astype(str) == str(v)).to_numpy()
    g = keyed[mask & keyed["method"].isin(list(methods)).to_numpy()]
    out = []
    for (method, check), rows in g.groupby(["method", "check"], sort=False):
        passed = rows["passed"].map(lambda x: bool(_passed(x)))
        n, bad = len(rows), rows[~passed]
        seeds = [format_value(s) for s in bad["seed"]] if "seed" in bad else []
        if bad.empty:
            text = f"✓ {check} · {method}" + (f" ({n}/{n})" if n > 1 else "")
            out.append(Cell(text, css="check-pass",
                            title=format_value(rows["expected"].iloc[0])
                            if "expected" in rows else ""))
            continue
        first = bad.iloc[0]
        seed_text = ", ".join(s for s in seeds if s != MISSING_HTML)
        where = f"seed{'s' if len(seeds) > 1 else ''} {seed_text}" if seed_text else "group"
        text = (f"✗ {check} · {method}: failed {len(bad)}/{n} ({where}): "
                f"{format_value(_get(first, 'value'))}, expected "
                f"{format_value(_get(first, 'expected'))}")
        out.append(Cell(text, css="check-fail", title=format_value(_get(first, "detail"))))
    out.sort(key=lambda c: c.css != "check-fail")  # failures first
    return out


def _seeds_cell(r: Mapping[str, Any] | pd.Series) -> Cell:
    """The seeds a decisive verdict would need: seeds_needed, or the verdict's own words when
    it has no number ('more than 10,000' is written '> 10,000')."""
    needed = _get(r, "seeds_needed")
    if _is_missing(needed) and _verdict_kind(_get(r, "verdict")) == "inconclusive":
        words = re.sub(r"\s*seeds? needed( to \w+)?$", "", _verdict_detail(_get(r, "verdict")))
        words = re.sub(r"^more than\s+", "> ", words.removeprefix("about "))
        return Cell(words or None, title=format_value(_get(r, "verdict")))
    return Cell(needed, "num")


def _scorecard_row(r: pd.Series, with_group: bool, *, untestable: bool = False,
                   runs_url: str = "") -> tuple[list[Cell], list[str]]:
    """A claim's scorecard cells (verdict, statement, paper, ours, why, n; a not-testable one:
    verdict, statement, paper, why), and the methods it compares (for its mechanism checks).
    Every number is in the claim's unit (`claim_unit`); `runs_url` links ours to the study's
    runs in MLflow."""
    verdict = _get(r, "verdict")
    statement = _get(r, "description")
    if _is_missing(statement):
        statement = _get(r, "claim_id")
    sub = [format_value(_get(r, "claim_id"))]
    if not _is_missing(_get(r, "method")):
        sub.append(claim_comparison(r))
    if not _is_missing(_get(r, "metric")):
        sub.append(format_value(_get(r, "metric")))
    if with_group and any(not _is_missing(_get(r, k)) for k in GROUP_KEYS):
        sub.append(claim_group(r))
    title = " — ".join(format_value(x) for x in (statement, _get(r, "source"))
                       if not _is_missing(x))
    methods = [str(m) for m in (_get(r, "method"), _get(r, "versus"))
               if not _is_missing(m) and not str(m).startswith("constant")]
    cells = [
        Cell(verdict, "badge", css=_verdict_css(verdict)),
        Cell(statement, title=title, sub=" · ".join(x for x in sub if x)),
        Cell(paper_text(r), title=format_value(_get(r, "margin_origin"))),
    ]
    if not untestable:
        cells.append(Cell(ours_text(r), href=runs_url))  # the runs of the claim's method
    cells.append(Cell(claim_reason(r), css="reason"))
    if not untestable:
        cells.append(Cell(_get(r, "n"), "int"))
    return cells, methods


SCORECARD_CAPTION = (
    "Paper: the paper's value ± margin, range, or for a comparison the band its gain must lie "
    "in (|Δ| ≤ margin: equivalent; > margin: superior). Ours: the mean over seeds, or the "
    "seed-paired difference method − versus, with its 90% t-interval, n seeds. Accuracies in "
    "%, differences of accuracies in percentage points (pts), speed-ups and reductions as "
    "ratios (×). Why: the verdict's reason in the same units (claims.csv's reason, in the "
    "CSV's fractions, is in the claims table). †: an interval clipped to the metric's range "
    "(an accuracy cannot pass 100%)."
)


def _scorecard_columns(untestable: bool = False) -> list[Column]:
    if untestable:
        return [Column("verdict", html="nowrap c-verdict"), Column("claim", html="wrap c-claim"),
                Column("paper", "r", html="wrapnum c-paper"),
                Column("why not testable", html="wrap c-why")]
    return [
        Column("verdict", html="nowrap c-verdict"), Column("claim", html="wrap c-claim"),
        Column("paper", "r", html="wrapnum c-paper"),
        Column("ours (90% CI)", "r", html="wrapnum c-ours"),
        Column("why", html="wrap c-why"), Column("n", "r", html="c-n"),
    ]  # fmt: skip


def scorecard_table(t: StudyTables) -> Table | None:
    """The claims tested in this run, per group, with their verdict badge, statement, the
    paper's number, ours (the estimate with its 90% CI, linked to the study's runs in MLflow),
    the verdict's reason in words and n; under each group the mechanism checks of the methods
    its claims compare. None when no claim is tested here (`untestable_table` lists those)."""
    groups = []
    has_checks = not t.mechanism_checks.empty
    for key, rows in scorecard_order(t.claims):
        if key is None:
            continue
        cells, methods = [], []
        for r in rows:
            row, ms = _scorecard_row(r, with_group=False,
                                     runs_url=t.links.method_runs(_get(r, "method")))
            cells.append(row)
            methods.extend(m for m in ms if m not in methods)
        footer = _check_summaries(t.mechanism_checks, key, methods) if has_checks else []
        if has_checks and not footer:
            footer = [Cell("no mechanism checks for these methods in this group",
                           css="check-none")]
        groups.append(Group(group_label(*key), cells, footer))
    if not groups:
        return None
    notes = []
    if not has_checks:
        notes.append("No mechanism checks were recorded for this study "
                     "(mechanism_checks.csv is empty or missing).")
    n = sum(len(g.rows) for g in groups)
    return Table(
        id=f"scorecard-{slug(t.study.name)}",
        caption=f"Scorecard of study {t.study.name}: the {n} claims tested in this run, per "
                f"group. {SCORECARD_CAPTION}",
        columns=_scorecard_columns(),
        groups=groups,
        notes=notes,
        title="Scorecard",
    )


def untestable_table(t: StudyTables) -> Table | None:
    """The claims that are not testable in this run, each with its reason."""
    rows = [r for key, rs in scorecard_order(t.claims) if key is None for r in rs]
    if not rows:
        return None
    cells = [_scorecard_row(r, with_group=True, untestable=True)[0] for r in rows]
    return Table(
        id=f"untestable-{slug(t.study.name)}",
        caption=(f"Claims of study {t.study.name} not testable in this run ({len(rows)}), each "
                 "with the paper's number and the reason."),
        columns=_scorecard_columns(untestable=True),
        groups=[Group("", cells)],
        title="Not testable here",
        summary=f"{len(rows)} claim{'s' if len(rows) != 1 else ''} not testable in this run "
                "(the paper's setting, a method or a metric is not in it)",
    )


def _forest_label(r: pd.Series, varying: Sequence[str]) -> str:
    """The claim id and the methods it compares ('gap_vs_sgd: restwake − sgd'), and the parts
    of its group that differ between the rows of the plot."""
    label = format_value(_get(r, "claim_id"))
    if len(label) > 34:
        label = label[:33] + "…"
    method, versus = _get(r, "method"), _get(r, "versus")
    if not _is_missing(method):
        if constant_of(r) is not None:
            label += f": {method}"
        elif not _is_missing(versus):
            label += f": {method} − {versus}"
        else:
            label += f": {method}"
    if not varying:
        return label
    return f"{label}  [{' / '.join(format_value(_get(r, k)) for k in varying)}]"


def _forest_panels(rows: Sequence[pd.Series]) -> dict[str, list[pd.Series]]:
    """The forest plot's panels: one per axis (metric and unit), in the rows' order."""
    panels: dict[str, list[pd.Series]] = {}
    for r in rows:
        panels.setdefault(claim_unit(r).axis, []).append(r)
    return panels


def figure_forest(t: StudyTables) -> Figure:
    """The scorecard's forest plot: one row per claim and group with an estimate (named by its
    claim and the methods it compares), one panel per metric and unit (`claim_unit`: accuracies
    in %, their differences in points, a superiority over a constant as the ratio itself, the
    constant drawn as a line): the band the estimate had to lie in (shaded), the paper's value
    (diamond) or range (bar), the reproduced estimate with its 90% CI, coloured by verdict (the
    verdict written at the right)."""
    title = "Forest plot of the claims"
    rows = [r for key, rs in scorecard_order(t.claims) if key is not None for r in rs
            if _numeric(_get(r, "estimate")) and not _is_missing(_get(r, "estimate"))]
    if not rows:
        why = ("no claims" if t.claims.empty else
               "no claim has an estimate in this run (every claim is not testable here)")
        return Figure("forest", title, note=f"not drawn: {why}")
    varying = [k for k in GROUP_KEYS if len({format_value(_get(r, k)) for r in rows}) > 1]
    panels = _forest_panels(rows)
    heights = [len(v) + 1.9 for v in panels.values()]
    fig = MplFigure(figsize=(9.6, 0.27 * sum(heights) + 0.55), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights).ravel()
    clipped_any = False
    for ax, (axis_label, prs) in zip(axes, panels.items()):
        u = claim_unit(prs[0])

        def shown(x: Any) -> float:
            return float(x) * u.scale + u.offset

        xs: list[float] = []
        for r in prs:
            for v in (claim_band(r) or ()):
                if math.isfinite(v):
                    xs.append(shown(v))
            for k in ("paper_value", "paper_low", "paper_high", "estimate", "ci_low", "ci_high"):
                v = _get(r, k)
                if _numeric(v) and not _is_missing(v) and math.isfinite(float(v)):
                    xs.append(shown(v))
        relative = _relative(_get(prs[0], "kind")) or constant_of(prs[0]) is not None
        if relative:
            xs.append(u.offset)  # no difference / the constant: always in view
        lo, hi = min(xs), max(xs)
        pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 1e-3)
        xlim = (lo - pad, hi + pad)
        for y, r in enumerate(prs):
            kind = str(_get(r, "kind"))
            verdict = _verdict_kind(_get(r, "verdict"))
            color = VERDICT_COLORS[verdict]
            band = claim_band(r)
            if band is not None:
                left = max(shown(band[0]), xlim[0])
                right = min(shown(band[1]), xlim[1]) if math.isfinite(band[1]) else xlim[1]
                ax.barh(y, right - left, left=left, height=0.72, color="#c9d6e8", lw=0,
                        zorder=1)
            if kind == "range":
                ax.plot([shown(_get(r, "paper_low")), shown(_get(r, "paper_high"))], [y, y],
                        color="#33475b", lw=3.2, solid_capstyle="butt", zorder=2)
            elif _numeric(_get(r, "paper_value")) and not _is_missing(_get(r, "paper_value")):
                ax.plot(shown(_get(r, "paper_value")), y, marker="D", ms=6, mfc="white",
                        mec="#33475b", mew=1.4, ls="none", zorder=3)
            low, high, clipped = clip_interval(_get(r, "ci_low"), _get(r, "ci_high"),
                                               claim_bounds(r))
            clipped_any |= clipped
            est = shown(_get(r, "estimate"))
            if not _is_missing(low) and not _is_missing(high):
                ax.plot([shown(low), shown(high)], [y, y], color=color, lw=1.8, zorder=4)
                for x in (shown(low), shown(high)):
                    ax.plot([x, x], [y - 0.18, y + 0.18], color=color, lw=1.4, zorder=4)
            ax.plot(est, y, marker="o", ms=6.5, color=color, ls="none", zorder=5)
            ax.annotate(_verdict_label(_get(r, "verdict")), xy=(1.0, y),
                        xycoords=("axes fraction", "data"), xytext=(6, 0),
                        textcoords="offset points", va="center", ha="left", color=color,
                        fontsize=8, fontweight="bold")
        if relative:
            ax.axvline(u.offset, color="0.35", lw=0.8, ls=":", zorder=0)
        ax.set_xlim(*xlim)
        ax.set_ylim(len(prs) - 0.5, -0.5)
        ax.set_yticks(range(len(prs)), [_forest_label(r, varying) for r in prs])
        ax.tick_params(axis="y", length=0)
        ax.grid(axis="y", visible=False)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_xlabel(axis_label, fontsize=8, labelpad=1)
    handles = [
        matplotlib.patches.Patch(color="#c9d6e8", label="band the estimate must lie in"),
        Line2D([], [], marker="D", ms=6, mfc="white", mec="#33475b", ls="none",
               label="paper value"),
        Line2D([], [], color="#33475b", lw=3.2, label="paper range"),
        Line2D([], [], color="0.3", marker="o", ms=6, lw=1.8, label="reproduced, 90% CI"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    caption = (
        "One row per claim and group with an estimate, named by the claim and the methods it "
        "compares; one panel per metric, its unit on the axis (accuracies in %, differences of "
        "accuracies in percentage points, a speed-up or reduction as the ratio itself). Shaded: "
        "the band the estimate must lie in for the claim to be reproduced (the paper's value ± "
        "margin, its range widened by the margin; for a comparison the band of the difference "
        "method − versus, right of the margin for a superiority claim). Dotted line: no "
        "difference, or the constant a ratio must exceed. Diamond: the paper's value; bar: its "
        "range. Dot and whisker: the reproduced mean or seed-paired difference and its 90% "
        "t-interval, coloured by verdict."
    )
    if clipped_any:
        caption += " Intervals of fractions (accuracies) are clipped to their range."
    return Figure("forest", title, caption, fig)


# --------------------------------------------------------------------------------------------
# Study view and rendering
# --------------------------------------------------------------------------------------------


@dataclass
class StudyView:
    """Everything the per-study partials render: the scorecard first, then the figures, then
    the tables (collapsed in HTML, the cells table last)."""

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
    status_line: str  # '9 cells: 8 ok, 1 oom'
    missing_tables: list[str]
    absent: list[str]  # notes on the tables that are absent or empty
    verdicts: dict[str, int]
    n_claims: int
    checks_failed: int  # failed mechanism check rows
    checks_total: int
    scorecard: Table | None
    untestable: Table | None
    forest: FigureView
    findings: list[list[Cell]]  # every claim row tested in this run: the first screen's rows
    paper_table: Table | None
    links: MlflowLinks
    figures: list[FigureView]
    tables: list[Table]  # in the order shown; the cells table last
    choices: Table | None = None
    cells: Table | None = None
    tex: dict[str, str] = field(default_factory=dict)  # piece -> tex/<file>.tex

    @property
    def lede(self) -> str:
        """The description's first sentence (the page shows the rest on demand)."""
        return _first_sentence(self.description, limit=220)


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
            title="Configuration",
        )
        if s.choices
        else None
    )
    extra = STUDY_TABLES.get(s.name)
    extra_tables = list(extra(t)) if extra is not None else []
    for tab in extra_tables:
        tab.scroll = True  # its columns are the study's: a scroll container, as a last resort
    cells = cells_table(t)
    tables = [x for x in (summary_table(t), paired_table(t), memory_table(t), claims_table(t),
                          checks_table(t), mechanism_table(t), *extra_tables, choices,
                          non_ok_table(t), cells) if x is not None]
    absent = [note for table, note in (
        (t.summary, "No summary table (summary.csv missing or empty)."),
        (t.paired_tests, "No paired tests (paired_tests.csv missing or empty)."),
        (t.memory_summary, "No memory summary (memory_summary.csv missing or empty)."),
        (t.paper_checks, "No paper-internal checks for this study."),
    ) if table.empty]
    mc = t.mechanism_checks
    failed = int((~mc["passed"].map(lambda x: bool(_passed(x)))).sum()) if "passed" in mc else 0
    with matplotlib.style.context(["default", FIGURE_STYLE]):
        forest = save_figure(figure_forest(t), s.name, figures_dir)
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
        status_line=_status_line(c),
        missing_tables=t.missing,
        absent=absent,
        verdicts=_verdict_counts(t.claims),
        n_claims=len(t.claims),
        checks_failed=failed,
        checks_total=len(mc),
        scorecard=scorecard_table(t),
        untestable=untestable_table(t),
        forest=forest,
        findings=findings_rows(t),
        paper_table=paper_table(t),
        links=t.links,
        figures=[save_figure(f, s.name, figures_dir) for f in study_figures(t)],
        tables=tables,
        choices=choices,
        cells=cells,
    )


def findings_rows(t: StudyTables) -> list[list[Cell]]:
    """The first screen's rows of a study: every claim row tested in this run (decided, a
    check, withheld), in scorecard order, as verdict, claim, paper, ours, why."""
    rows = [r for key, rs in scorecard_order(t.claims) if key is not None for r in rs]
    several = len({claim_group(r) for r in rows}) > 1
    out = []
    for r in rows:
        cells = _scorecard_row(r, with_group=several,
                               runs_url=t.links.method_runs(_get(r, "method")))[0][:-1]
        why = cells[-1]
        if len(str(why.value)) > FINDING_WHY_CHARS:  # the rest in the scorecard and tooltip
            cells[-1] = Cell(_short(str(why.value)), css=why.css, title=str(why.value))
        out.append(cells)
    return out


def _counts_text(counts: Mapping[str, int]) -> str:
    """'2 reproduced, 1 inconclusive; 3 not testable (appendix)'."""
    tested = ", ".join(f"{n} {k}" for k, n in counts.items() if n and k != "not testable")
    untested = counts.get("not testable", 0)
    parts = [tested or "no claim tested in this run"]
    if untested:
        parts.append(f"{untested} not testable (appendix)")
    return "; ".join(parts)


def findings_table(views: Sequence[StudyView]) -> Table:
    """The first screen: per paper, every claim tested in this run with the paper's number,
    ours (mean or paired difference with its 90% CI), the verdict and its reason in words.
    The claims not testable in this run are counted in each paper's line, listed in the
    appendix."""
    groups = [Group(f"{v.name}: {_counts_text(v.verdicts)}", v.findings)
              for v in views if v.findings]
    n = sum(len(g.rows) for g in groups)
    untested = sum(v.verdicts["not testable"] for v in views)
    return Table(
        id="findings",
        caption=(f"The {n} claims tested in this run. Accuracies in %, their differences in "
                 "points (pts), ratios ×; ours: mean or seed-paired difference [90% CI] († "
                 "clipped); full statements in each scorecard."),
        columns=[*_scorecard_columns()[:1], Column("claim", html="clamp1 c-claim"),
                 *_scorecard_columns()[2:4], Column("why", html="wrap clamp c-why")],
        groups=groups,
        title="Findings",
    )


def overview_table(views: Sequence[StudyView]) -> Table:
    """Per paper: its claims by verdict (a `check` or unknown verdict only when one occurs),
    its failed mechanism checks and its cells."""
    kinds = [k for k in VERDICTS
             if k in (*DECIDED, "not testable") or any(v.verdicts[k] for v in views)]
    cols = [Column("paper", html="id"), Column("claims", "r"),
            *[Column(k, "r") for k in kinds], Column("checks failed", "r"),
            Column("cells ok", "r")]  # fmt: skip
    rows = []
    for v in views:
        rows.append([
            Cell(v.name, href=f"#{v.anchor}"), Cell(v.n_claims, "int"),
            *[Cell(v.verdicts[k], "int", css=f"v-{k.replace(' ', '-')}"
                   + (" zero" if not v.verdicts[k] else "")) for k in kinds],
            Cell(f"{v.checks_failed} / {v.checks_total}" if v.checks_total else None,
                 css="v-contradicted" if v.checks_failed else ""),
            Cell(f"{v.n_ok} / {v.n_cells}", css="" if v.n_ok == v.n_cells else "status-bad"),
        ])  # fmt: skip
    return Table(
        id="overview",
        caption=(
            "Claims per paper by verdict (one per claim and group): reproduced (the 90% CI "
            "inside the paper's band), contradicted (the 95% CI wholly outside), inconclusive "
            "(neither: more seeds needed), withheld (a mechanism check it requires failed), "
            + ("check (the paper's value computed from our own model: a consistency check, "
               "not counted as reproduced), " if "check" in kinds else "")
            + ("other (a verdict this report does not know, shown as written), "
               if "other" in kinds else "")
            + "not testable (the paper's setting, a method, a metric or an accelerator is not "
            "in this run: listed in the appendix); mechanism checks failed; cells finished ok."
        ),
        columns=cols,
        groups=[Group("", rows)],
        title="Overview",
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
    env.filters["cell_title"] = html_title
    env.filters["wbr"] = html_breakable
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
    env.filters["breakable"] = lambda x: latex_escape(breakable(x))
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


# What a standalone LaTeX piece needs in the preamble of the document that \input's it.
TEX_NEEDS = {
    "table": r"\usepackage{booktabs,longtable,array}",
    "figure": r"\usepackage{graphicx}",
    "scorecard": r"\usepackage{booktabs,longtable,array,graphicx}",
}


def _tex_header(path: str, what: str, needs: str) -> str:
    return (
        f"% {path}: {what}\n"
        f"% A standalone piece of the memrepro report: \\input{{{path}}} (report.tex does).\n"
        f"% Preamble packages it needs: {needs}\n"
        "% Tables are longtables (not in twocolumn mode) sized to \\linewidth; figures are\n"
        "% figures/<name>.pdf relative to report.tex\n"
        "% (from another directory: \\graphicspath{{<report dir>/}}).\n"
        "% Text is UTF-8 (LaTeX's default input); report.tex also loads fontenc (T1) and lmodern.\n"
    )


def write_tex_pieces(views: Sequence[StudyView], overview: Table, provenance: Table,
                     tex_env: jinja2.Environment, tex_dir: Path,
                     findings: Table | None = None) -> dict[str, str]:
    """Every scorecard, table and figure as its own file under tex_dir (`\\input`-able); set
    each view's `tex` (piece -> 'tex/<file>.tex'); returns the overview and provenance paths."""
    macros = tex_env.get_template("partials/macros.tex.j2").module
    pieces = tex_env.get_template("partials/scorecard.tex.j2").module

    def write(stem: str, what: str, needs: str, body: str) -> str:
        name = f"{slug(stem)}.tex"  # letters, digits, '-': a name \\input takes as it is
        rel = f"{tex_dir.name}/{name}"
        _write_atomic(tex_dir / name, _tex_header(rel, what, needs) + body)
        return rel

    out = {
        "overview": write("overview", "overview of the claims per paper", TEX_NEEDS["table"],
                          str(macros.table(overview))),
        "provenance": write("provenance", "provenance of the report", TEX_NEEDS["table"],
                            str(macros.table(provenance))),
    }
    if findings is not None:
        needs = TEX_NEEDS["table"] + (r" \usepackage{pdflscape}" if findings.latex.landscape
                                      else "")
        out["findings"] = write("findings", "every claim tested in this run, per paper", needs,
                                str(macros.table(findings)))
    for v in views:
        v.tex = {}
        needs = TEX_NEEDS["scorecard"]
        if v.scorecard is not None and v.scorecard.latex.landscape:
            needs += r" \usepackage{pdflscape}"
        v.tex["scorecard"] = write(
            f"{v.name}-scorecard", f"scorecard of study {v.name} (forest plot and claims)",
            needs, str(pieces.scorecard(v)))
        if v.untestable is not None:
            needs = TEX_NEEDS["table"] + (r" \usepackage{pdflscape}"
                                          if v.untestable.latex.landscape else "")
            v.tex["untestable"] = write(
                f"{v.name}-untestable", f"claims of study {v.name} not testable in this run",
                needs, str(macros.table(v.untestable)))
        if v.paper_table is not None:
            needs = TEX_NEEDS["table"] + (r" \usepackage{pdflscape}"
                                          if v.paper_table.latex.landscape else "")
            v.tex["paper_table"] = write(
                f"{v.name}-paper-table", f"study {v.name} as a paper table", needs,
                str(macros.table(v.paper_table)))
        for f in v.figures:
            v.tex[f.id] = write(f.id, f"figure '{f.title}' of study {v.name}",
                                TEX_NEEDS["figure"], str(macros.figure(f)))
        for t in v.tables:
            needs = TEX_NEEDS["table"] + (r" \usepackage{pdflscape}" if t.latex.landscape else "")
            v.tex[t.id] = write(f"table-{t.id}", f"table '{t.title or t.id}' of study {v.name}",
                                needs, str(macros.table(t)))
    return out


def build_report(
    studies: list[StudyInput],
    out_dir: Path,
    provenance: dict,
    title: str = "memrepro report",
    *,
    template_dir: Path | None = None,
) -> dict[str, Path]:
    """Render out_dir/report.html and out_dir/report.tex (figures under out_dir/figures/, every
    scorecard, table and figure of the LaTeX document also as its own file under out_dir/tex/,
    which report.tex \\input's).

    Studies are shown in the given order, those without claims last (the page opens on
    verdicts). Returns {"html": ..., "tex": ..., "figures": out_dir/figures, "tex_dir":
    out_dir/tex}.
    Raises BenchError when a study has no cells.csv (aggregation has not run) or the templates
    are missing.
    """
    out_dir = Path(out_dir)
    html_env, tex_env = html_environment(template_dir), latex_environment(template_dir)
    figures_dir, tex_dir = out_dir / "figures", out_dir / "tex"
    figures_dir.mkdir(parents=True, exist_ok=True)
    tex_dir.mkdir(parents=True, exist_ok=True)

    loaded = [load_study_tables(s) for s in studies]
    share_colors(loaded)
    views = [study_view(t, figures_dir) for t in loaded]
    views.sort(key=lambda v: v.n_claims == 0)  # verdicts first: studies without claims last
    overview, prov = overview_table(views), provenance_table(provenance)
    findings = findings_table(views)
    for stale in tex_dir.glob("*.tex"):  # pieces of an earlier report (a study since removed)
        stale.unlink()
    tex_files = write_tex_pieces(views, overview, prov, tex_env, tex_dir, findings)

    css_path = _template_dir(template_dir) / "style.css"
    context = {
        "title": title,
        "studies": views,
        "overview": overview,
        "findings": findings,
        "provenance": prov,
        "tex_files": tex_files,
        "date": format_config_value(provenance.get("date", "")),
        "css": Markup(css_path.read_text(encoding="utf-8")) if css_path.exists() else "",
        "tracking_uris": list(dict.fromkeys(v.tracking_uri for v in views if v.tracking_uri)),
        "totals": {k: sum(v.verdicts[k] for v in views) for k in VERDICTS},
    }
    html = html_env.get_template("report.html.j2").render(**context)
    tex = tex_env.get_template("report.tex.j2").render(**context)
    html_path, tex_path = out_dir / "report.html", out_dir / "report.tex"
    _write_atomic(html_path, html)
    _write_atomic(tex_path, tex)
    return {"html": html_path, "tex": tex_path, "figures": figures_dir, "tex_dir": tex_dir}
