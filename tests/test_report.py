"""The HTML/LaTeX report: built from realistic contract tables written in tmp_path.

The tables follow docs/contracts.md ("Tables") column by column; the statistics in them are
computed here with scipy the way aggregation computes them, so the report is tested on data of
the real shape, and every number it prints is checked against the CSV it came from.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import report
from bench.claims import CLAIMS_COLUMNS
from bench.errors import BenchError
from bench.report import (
    Figure,
    StudyInput,
    build_report,
    format_number,
    format_p,
    latex_escape,
)

STUDY = "rest_wake"
REFERENCE = "sgd"
METHODS = [REFERENCE, "restwake_original"]
MODEL, DATASET = "resnet18_cifar", "digits"
SEEDS, EPOCHS = 3, 3
TRACKING_URI = "sqlite:///results/mlflow.db"
PROVENANCE = {
    "git_sha": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": False,
    "torch": "2.15.0",
    "device": "cpu",
    "host": "ci-runner",
    "date": "2026-11-21T05:40:00+00:00",
    "command": "python -m bench report --config config/smoke.yaml",
}

# --------------------------------------------------------------------------------------------
# A fake study's tables, exactly as the contract lays them out
# --------------------------------------------------------------------------------------------


def _run_id(*parts: object) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()  # 32 hex, like MLflow


def _holm(p: list[float]) -> list[float]:
    order = np.argsort(p)
    adjusted, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _t_interval(x: np.ndarray) -> tuple[float, float]:
    if len(x) < 2:
        return (float("nan"), float("nan"))
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return (x.mean() - half, x.mean() + half)


def write_study_tables(
    tables_dir: Path,
    *,
    study: str = STUDY,
    methods: list[str] = METHODS,
    budgets: tuple[str, ...] = ("none",),
    oom: bool = False,
    claims: bool = True,
    accelerator: bool = False,
) -> Path:
    """cells, history, summary, paired_tests, memory_summary, claims, paper_checks.csv for a
    study of len(methods) methods x 3 seeds x 3 epochs (x budgets). `oom`: the last seed of the
    last method ran out of memory (so that method has 2 pairs: not testable).
    `accelerator`: peak_alloc_mib was measured."""
    rng = np.random.default_rng(0)
    tables_dir.mkdir(parents=True, exist_ok=True)
    cells, history = [], []
    for mi, method in enumerate(methods):
        for budget in budgets:
            for seed in range(SEEDS):
                axes = dict(study=study, method=method, model=MODEL, dataset=DATASET,
                            budget=budget, seed=seed)  # fmt: skip
                failed = oom and mi == len(methods) - 1 and seed == SEEDS - 1
                base_acc = 0.80 + 0.03 * mi + 0.01 * seed + rng.normal(0, 0.004)
                activation = 12.5 - 4.0 * mi + (0 if budget == "none" else 0.001)
                modelled = 20.1 + activation - 12.5
                peak = modelled + 30.0 if accelerator else None
                for epoch in range(0 if failed else EPOCHS):
                    acc = base_acc - 0.1 * (EPOCHS - 1 - epoch) + rng.normal(0, 0.002)
                    history.append(
                        {**axes, "epoch": epoch, "phase": "train",
                         "train_loss": 1.0 / (epoch + 1), "train_acc": acc + 0.05,
                         "val_loss": 1.2 / (epoch + 1) + rng.normal(0, 0.01),
                         "val_acc": acc, "lr": 0.05,
                         "epoch_s": 3.1, "train_images_per_s": 460.0 + seed,
                         "peak_alloc_mib": peak, "peak_reserved_mib": peak and peak + 2,
                         "activation_mib": activation, "modelled_peak_mib": modelled}
                    )  # fmt: skip
                final = history[-1] if not failed else None
                cells.append(
                    {**axes, "status": "oom" if failed else "ok",
                     "reason": ("CUDA out of memory: tried to allocate 20.00 MiB"
                                if failed else None),
                     "config_hash": hashlib.sha256(str(axes).encode()).hexdigest()[:12],
                     "mlflow_run_id": _run_id(*axes.values()),
                     "epochs": 0 if failed else EPOCHS,
                     "val_acc": final and final["val_acc"], "val_loss": final and final["val_loss"],
                     "train_loss": final and final["train_loss"],
                     "train_acc": final and final["train_acc"],
                     "param_mib": 2.7, "activation_mib": activation, "modelled_peak_mib": modelled,
                     "peak_alloc_mib": peak, "peak_reserved_mib": peak and peak + 2,
                     "forward_flops_per_image": 1.1e7, "backward_flops_per_image": 2.2e7,
                     "weight_grad_flops_per_image": 1.1e7, "train_images_per_s": 480.0,
                     "eval_images_per_s": 3000.0, "train_s": 15.0, "total_s": 18.0}
                )  # fmt: skip
    cells_df, history_df = pd.DataFrame(cells), pd.DataFrame(history)
    if not accelerator:  # CPU: the columns exist, every value empty
        for df in (cells_df, history_df):
            df["peak_alloc_mib"] = np.nan
            df["peak_reserved_mib"] = np.nan
    cells_df.to_csv(tables_dir / "cells.csv", index=False)
    history_df.to_csv(tables_dir / "history.csv", index=False)

    ok = cells_df[cells_df["status"] == "ok"]
    keys = ["study", "method", "model", "dataset", "budget"]
    summary, memory = [], []
    for key, g in ok.groupby(keys, sort=False):
        for metric in ("val_acc", "val_loss", "train_acc"):
            x = g[metric].to_numpy(float)
            low, high = _t_interval(x)
            summary.append({**dict(zip(keys, key)), "metric": metric, "mean": x.mean(),
                            "std": x.std(ddof=1), "ci_low": low, "ci_high": high,
                            "n": len(x)})  # fmt: skip
        for metric in report.MEMORY_METRICS:
            x = g[metric].dropna().to_numpy(float)
            memory.append({**dict(zip(keys, key)), "metric": metric,
                           "mean": x.mean() if len(x) else None,
                           "std": x.std(ddof=1) if len(x) > 1 else None,
                           "min": x.min() if len(x) else None, "max": x.max() if len(x) else None,
                           "n": len(x)})  # fmt: skip
    pd.DataFrame(summary).to_csv(tables_dir / "summary.csv", index=False)
    pd.DataFrame(memory).to_csv(tables_dir / "memory_summary.csv", index=False)

    paired = []
    for method in methods[1:]:
        for budget in budgets:
            for metric in ("val_acc", "val_loss"):
                sel = ok[ok["budget"] == budget]
                a = sel[sel["method"] == method].set_index("seed")[metric]
                b = sel[sel["method"] == REFERENCE].set_index("seed")[metric]
                common = a.index.intersection(b.index)
                d = (a[common] - b[common]).to_numpy(float)
                row = {"study": study, "method": method, "versus": REFERENCE, "model": MODEL,
                       "dataset": DATASET, "budget": budget, "metric": metric,
                       "endpoint": "primary", "n_pairs": len(d),
                       "mean_method": a[common].mean(), "mean_versus": b[common].mean(),
                       "mean_diff": d.mean()}  # fmt: skip
                if len(d) >= 3:
                    res = stats.ttest_rel(a[common], b[common])
                    low, high = _t_interval(d)
                    row |= {"diff_ci_low": low, "diff_ci_high": high, "t": res.statistic,
                            "p": res.pvalue, "d_z": d.mean() / d.std(ddof=1),
                            "status": "tested"}  # fmt: skip
                else:
                    row |= {"status": f"not testable (n={len(d)} pairs < 3)"}
                paired.append(row)
    paired_df = pd.DataFrame(paired)
    tested = paired_df["status"] == "tested"
    if tested.any():
        paired_df.loc[tested, "p_holm"] = _holm(paired_df.loc[tested, "p"].tolist())
    paired_df = paired_df.reindex(
        columns=["study", "method", "versus", "model", "dataset", "budget", "metric", "endpoint",
                 "n_pairs", "mean_method", "mean_versus", "mean_diff", "diff_ci_low",
                 "diff_ci_high", "t", "p", "p_holm", "d_z", "status"]  # fmt: skip
    )
    paired_df.to_csv(tables_dir / "paired_tests.csv", index=False)

    claim_cols = list(CLAIMS_COLUMNS)
    check_cols = ["claim_id", "check", "stated", "recomputed", "consistent", "note"]
    if claims:
        m1 = ok[ok["method"] == methods[1]]["val_acc"]
        claim_rows = [
            {"claim_id": "acc_50ep", "description": "RestWake reaches ~83% & beats SGD",
             "source": "Table 2, row 3 (p. 7)", "kind": "value", "scope": "thesis",
             "method": methods[1], "metric": "val_acc", "model": MODEL, "dataset": DATASET,
             "budget": budgets[0], "paper_value": 0.83, "margin": 0.02,
             "margin_origin": "explicit: a test", "estimate": m1.mean(), "ci_low": 0.82,
             "ci_high": 0.84, "test": "TOST", "p": 0.01, "n": len(m1),
             "verdict": "reproduced", "reason": "90% CI inside the band"},
            {"claim_id": "mem_range", "description": "peak memory 430-490 MB",
             "source": "Section 4.2", "kind": "range", "scope": "thesis", "method": methods[1],
             "metric": "modelled_peak_mib", "model": MODEL, "dataset": DATASET,
             "budget": budgets[0], "paper_low": 430.0, "paper_high": 490.0, "margin": 0.0,
             "estimate": 16.1, "ci_low": 15.0, "ci_high": 17.0, "n": 3,
             "verdict": "contradicted", "reason": "95% CI wholly below the band"},
            {"claim_id": "cifar_acc", "description": "CIFAR-10 accuracy", "source": "Table 1",
             "kind": "value", "scope": "paper", "method": methods[1], "metric": "val_acc",
             "model": MODEL, "dataset": "cifar10", "budget": "none", "paper_value": 0.912,
             "n": 0, "margin": 0.02, "verdict": "not testable (no cells for dataset cifar10)"},
        ]  # fmt: skip
        pd.DataFrame(claim_rows, columns=claim_cols).to_csv(tables_dir / "claims.csv", index=False)
        checks = [
            {"claim_id": "acc_50ep", "check": "mean of per-run accuracies equals stated mean",
             "stated": 0.83, "recomputed": 0.8276, "consistent": True, "note": ""},
            {"claim_id": "p_value", "check": "pairwise t-test p-value",
             "stated": 0.0919, "recomputed": 0.62, "consistent": False,
             "note": "the paper's p = 0.0919 does not follow from its runs"},
        ]  # fmt: skip
        checks_df = pd.DataFrame(checks, columns=check_cols)
        checks_df.to_csv(tables_dir / "paper_checks.csv", index=False)
    else:  # a study without claims: the tables exist with their header only
        pd.DataFrame(columns=claim_cols).to_csv(tables_dir / "claims.csv", index=False)
        pd.DataFrame(columns=check_cols).to_csv(tables_dir / "paper_checks.csv", index=False)
    return tables_dir


def study_input(tables_dir: Path, study: str = STUDY) -> StudyInput:
    return StudyInput(
        name=study,
        description="RestWake against plain SGD: does the sleep/wake schedule keep accuracy?",
        reference=REFERENCE,
        metrics=["val_acc", "val_loss"],
        tables_dir=tables_dir,
        choices={"epochs": EPOCHS, "train": {"lr": 0.05, "batch_size": 64, "weight_decay": 5e-4},
                 "seeds": SEEDS},  # fmt: skip
        tracking_uri=TRACKING_URI,
    )


# --------------------------------------------------------------------------------------------
# Parsing the HTML report
# --------------------------------------------------------------------------------------------


class ReportParser(HTMLParser):
    """Collects every <table> (header, rows with the group each lies in) and every asset link."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict] = {}
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.images: list[str] = []
        self._table: dict | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._group = ""
        self._in_caption = False
        self._row_is_group = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for attr in ("src", "href"):
            if attr in a:
                self.links.append((tag, attr, a[attr] or ""))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "table":
            self._table = {"columns": [], "rows": [], "caption": ""}
            self.tables[a.get("id", f"table{len(self.tables)}")] = self._table
            self._group = ""
        elif tag == "caption":
            self._in_caption = True
        elif tag == "tr":
            self._row, self._row_is_group = [], "group" in (a.get("class") or "")
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._table is not None and self._row is not None:
            if self._row_is_group:
                self._group = self._row[0]
            elif not self._table["columns"]:
                self._table["columns"] = self._row
            else:
                self._table["rows"].append((self._group, self._row))
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_caption and self._table is not None:
            self._table["caption"] += data


def parse_html(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def rows_as_dicts(table: dict) -> list[dict[str, str]]:
    return [dict(zip(table["columns"], cells), _group=group) for group, cells in table["rows"]]


def group_of(row: pd.Series) -> str:
    return report.group_label(row["model"], row["dataset"], row["budget"])


def find_row(table: dict, **match: str) -> dict[str, str]:
    found = [r for r in rows_as_dicts(table) if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} rows match {match} in {table['columns']}"
    return found[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One report of the fake study (3 methods, the last with an OOM cell), shared by the
    read-only tests."""
    root = tmp_path_factory.mktemp("report")
    tables = write_study_tables(
        root / "results" / STUDY / "tables", methods=[*METHODS, "restwake_lowmem"], oom=True
    )
    paths = build_report([study_input(tables)], root / "out", PROVENANCE, title="test report")
    return {"tables": tables, "paths": paths, "html": parse_html(paths["html"])}


def read_csv(tables: Path, name: str) -> pd.DataFrame:
    return report.read_table(tables / f"{name}.csv")


# --------------------------------------------------------------------------------------------
# Number format and escaping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (0.831945, 4, "0.8319"),
        (12.3456, 4, "12.35"),
        (0.0001234567, 4, "0.0001235"),
        (1.2e-07, 3, "1.2e-07"),
        (27946.4, 4, "27946"),
        (3, 4, "3"),
        (3.0, 4, "3"),
        (np.int64(27946), 4, "27946"),
        (-0.0, 4, "0"),
        (-0.01234, 4, "-0.01234"),
        (True, 4, "yes"),
        (float("inf"), 4, "inf"),
        (0.0919, 3, "0.0919"),
        (0.123456, 3, "0.123"),
    ],
)
def test_format_number(value, digits, expected):
    assert format_number(value, digits) == expected


def test_format_number_missing_values():
    for missing in (None, float("nan"), np.nan, pd.NA):
        assert format_number(missing) == "—"
        assert format_number(missing, latex=True) == "--"
    assert format_p(0.000123456) == "0.000123"


def test_latex_escape_every_special_character():
    assert latex_escape("a_b & 5% $x$ #1 {y} ~ ^ \\") == (
        r"a\_b \& 5\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    assert latex_escape("±") == r"$\pm$"


# --------------------------------------------------------------------------------------------
# The HTML page
# --------------------------------------------------------------------------------------------


def test_html_is_self_contained_with_embedded_figures(built):
    html = built["html"]
    text = built["paths"]["html"].read_text(encoding="utf-8")
    for tag, attr, value in html.links:
        assert not re.match(r"\s*(https?:)?//", value), f"external {attr} on <{tag}>: {value}"
    assert "<link" not in text and "<script" not in text and "url(" not in text
    assert len(html.images) >= 3  # val acc, memory, dual-axis (single budget: no budget plot)
    for src in html.images:
        assert src.startswith("data:image/png;base64,") and len(src) > 1000
    assert "<style>" in text and "table.data" in text  # the CSS is inlined


def test_html_summary_numbers_are_the_csv_numbers_in_the_right_rows(built):
    table = built["html"].tables[f"summary-{report.slug(STUDY)}"]
    summary = read_csv(built["tables"], "summary")
    assert len(table["rows"]) == len(summary)
    for _, r in summary.iterrows():
        row = find_row(table, _group=group_of(r), method=r["method"], metric=r["metric"])
        assert row["mean"] == format_number(r["mean"])
        assert row["std"] == format_number(r["std"])
        assert row["n"] == format_number(r["n"])
        assert row["95% CI"] == f"[{format_number(r['ci_low'])}, {format_number(r['ci_high'])}]"
    # the OOM cell is left out of the summary: 2 seeds for restwake_lowmem, 3 for the others
    assert find_row(table, method="restwake_lowmem", metric="val_acc")["n"] == "2"
    assert find_row(table, method="restwake_original", metric="val_acc")["n"] == "3"
    assert find_row(table, method="sgd", metric="val_acc")["n"] == "3"


def test_html_paired_tests_numbers_and_caption(built):
    table = built["html"].tables[f"paired-{report.slug(STUDY)}"]
    paired = read_csv(built["tables"], "paired_tests")
    assert len(table["rows"]) == len(paired)
    for _, r in paired.iterrows():
        row = find_row(table, _group=group_of(r), method=r["method"], metric=r["metric"])
        assert row["mean diff"] == format_number(r["mean_diff"])
        assert row["p"] == format_p(r["p"])
        assert row["p (Holm)"] == format_p(r["p_holm"])
        assert row["n pairs"] == format_number(r["n_pairs"])
        assert row["status"] == r["status"]
    caption = table["caption"]
    k = int((paired["status"] == "tested").sum())
    assert "scipy.stats.ttest_rel" in caption and "Holm" in caption and "seed index" in caption
    assert k == 2 and f"K = {k} " in caption  # restwake_original: tested; lowmem: 2 pairs
    assert find_row(table, method="restwake_lowmem", metric="val_acc")["p"] == "—"


def test_html_claims_and_paper_checks(built):
    table = built["html"].tables[f"claims-{report.slug(STUDY)}"]
    claims = read_csv(built["tables"], "claims")
    assert len(table["rows"]) == len(claims)
    for _, r in claims.iterrows():
        row = find_row(table, claim=r["claim_id"])
        assert row["paper value"] == format_number(r["paper_value"])
        assert row["estimate"] == format_number(r["estimate"])
        assert row["verdict"] == r["verdict"]
        assert row["source"] == r["source"]
    assert find_row(table, claim="mem_range")["paper range"] == "[430, 490]"
    assert find_row(table, claim="acc_50ep")["description"] == "RestWake reaches ~83% & beats SGD"
    overview = find_row(built["html"].tables["overview"], study=STUDY)
    verdicts = ("claims reproduced", "contradicted", "inconclusive", "not testable")
    assert [overview[k] for k in verdicts] == ["1", "1", "0", "1"]
    assert (overview["cells"], overview["ok"], overview["not ok"]) == ("9", "8", "1")
    checks = built["html"].tables[f"checks-{report.slug(STUDY)}"]
    row = find_row(checks, claim="p_value")
    assert (row["stated"], row["recomputed"], row["consistent"]) == ("0.0919", "0.62", "no")


def test_html_memory_table_and_cpu_note(built):
    table = built["html"].tables[f"memory-{report.slug(STUDY)}"]
    memory = read_csv(built["tables"], "memory_summary")
    measured = memory[memory["mean"].notna()]
    assert len(table["rows"]) == len(measured)
    for _, r in measured.iterrows():
        row = find_row(table, _group=group_of(r), method=r["method"], metric=r["metric"])
        assert [row[c] for c in ("mean (MiB)", "std", "min", "max", "n")] == [
            format_number(r[c]) for c in ("mean", "std", "min", "max", "n")
        ]
    text = built["paths"]["html"].read_text(encoding="utf-8")
    assert "peak_alloc_mib, peak_reserved_mib: not measured on this device" in text


def test_html_cells_run_ids_status_and_header(built):
    html, cells = built["html"], read_csv(built["tables"], "cells")
    table = html.tables[f"cells-{report.slug(STUDY)}"]
    assert len(table["rows"]) == len(cells)
    for _, r in cells.iterrows():
        row = find_row(table, _group=group_of(r), method=r["method"], seed=str(r["seed"]))
        assert row["MLflow run id"] == r["mlflow_run_id"]
        assert row["config hash"] == r["config_hash"]
        assert row["status"] == r["status"]
        assert row["val_acc"] == format_number(r["val_acc"])
    text = built["paths"]["html"].read_text(encoding="utf-8")
    assert f"mlflow ui --backend-store-uri {TRACKING_URI}" in text
    # the non-ok cell is listed with its reason; status counts are stated
    nonok = html.tables[f"nonok-{report.slug(STUDY)}"]
    (row,) = rows_as_dicts(nonok)
    assert row["status"] == "oom" and row["reason"].startswith("CUDA out of memory")
    assert "ok: 8" in text and "oom: 1" in text and "diverged: 0" in text
    assert "methods (3)" in text and "seeds (3)" in text


def test_html_choices_and_provenance(built):
    html = built["html"]
    table = html.tables[f"choices-{report.slug(STUDY)}"]
    choices = {r["key"]: r["value"] for r in rows_as_dicts(table)}
    assert choices["train.lr"] == "0.05" and choices["train.weight_decay"] == "0.0005"
    prov = {r["key"]: r["value"] for r in rows_as_dicts(html.tables["provenance"])}
    assert prov["git_sha"] == PROVENANCE["git_sha"]
    assert prov["git_dirty"] == "no"
    assert prov["command"] == PROVENANCE["command"]
    assert prov["device"] == "cpu" and prov["torch"] == "2.15.0"


# --------------------------------------------------------------------------------------------
# The LaTeX document
# --------------------------------------------------------------------------------------------


def test_tex_booktabs_figures_and_escaping(built):
    tex_path = built["paths"]["tex"]
    tex = tex_path.read_text(encoding="utf-8")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    included = re.findall(r"\\includegraphics\[[^]]*\]\{([^}]*)\}", tex)
    assert len(included) >= 3
    for rel in included:
        assert rel.endswith(".pdf") and (tex_path.parent / rel).is_file(), rel
        assert (tex_path.parent / rel).read_bytes().startswith(b"%PDF")
        assert (tex_path.parent / rel).with_suffix(".png").is_file()
    assert r"restwake\_original" in tex
    assert not re.search(r"(?<!\\)restwake_original", tex.replace(r"restwake\_original", ""))
    assert r"\textasciitilde{}83\% \& beats" in tex  # a claim's description, escaped
    # every number of the paired tests is there, formatted the same way
    paired = read_csv(built["tables"], "paired_tests")
    for _, r in paired.iterrows():
        assert format_number(r["mean_diff"], latex=True) in tex
        assert format_p(r["p_holm"], latex=True) in tex
    assert tex.count(r"\begin{longtable}") == tex.count(r"\end{longtable}")
    assert tex.strip().endswith(r"\end{document}")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_tex_compiles_with_pdflatex(built, tmp_path):
    out = shutil.copytree(built["paths"]["tex"].parent, tmp_path / "out")
    tex = out / "report.tex"
    for _ in range(2):  # longtable needs two passes
        proc = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name],
            cwd=tex.parent, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:]
    assert tex.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    log = tex.with_suffix(".log").read_text(errors="replace")
    assert "Missing character" not in log and "undefined references" not in log


# --------------------------------------------------------------------------------------------
# Templates, figures, robustness
# --------------------------------------------------------------------------------------------


def test_strict_undefined_in_both_environments():
    html_env, tex_env = report.html_environment(), report.latex_environment()
    with pytest.raises(jinja2.UndefinedError):
        html_env.from_string("<p>{{ missing }}</p>").render()
    with pytest.raises(jinja2.UndefinedError):
        tex_env.from_string(r"\section{((( missing )))}").render()
    with pytest.raises(jinja2.UndefinedError):  # the real page, without its context
        html_env.get_template("report.html.j2").render(title="x")
    with pytest.raises(jinja2.UndefinedError):
        tex_env.get_template("report.tex.j2").render(title="x", date="")


def test_latex_environment_escapes_every_variable():
    env = report.latex_environment()
    out = env.from_string(r"((( a ))) ((( b ))) ((( 'x_1' | latex_escape )))").render(
        a="50% of a_b", b=report.LatexSafe(r"\textbf{ok}")
    )
    assert out == r"50\% of a\_b \textbf{ok} x\_1"
    html = report.html_environment().from_string("{{ a }}").render(a="<b>&")
    assert html == "&lt;b&gt;&amp;"


def test_figures_are_deterministic(tmp_path):
    tables = write_study_tables(tmp_path / "tables")
    a = build_report([study_input(tables)], tmp_path / "a", PROVENANCE)
    b = build_report([study_input(tables)], tmp_path / "b", PROVENANCE)
    files_a = sorted(p.name for p in a["figures"].iterdir())
    assert files_a == sorted(p.name for p in b["figures"].iterdir())
    assert files_a, "no figures written"
    for name in files_a:
        assert (a["figures"] / name).read_bytes() == (b["figures"] / name).read_bytes(), name
    assert a["html"].read_bytes() == b["html"].read_bytes()
    assert a["tex"].read_bytes() == b["tex"].read_bytes()


def test_accuracy_vs_budget_drawn_only_with_several_numeric_budgets(tmp_path):
    one = write_study_tables(tmp_path / "one", budgets=("256MiB",))
    paths = build_report([study_input(one)], tmp_path / "out1", PROVENANCE)
    assert not list(paths["figures"].glob("*acc_budget*"))
    note = "needs at least 2 numeric memory budgets and this study has 1 (budgets: 256MiB)"
    assert note in paths["html"].read_text(encoding="utf-8")

    two = write_study_tables(tmp_path / "two", budgets=("256MiB", "512MiB"))
    paths = build_report([study_input(two)], tmp_path / "out2", PROVENANCE)
    slug = report.slug(STUDY)
    assert (paths["figures"] / f"{STUDY}_acc_budget.pdf").is_file()
    html = parse_html(paths["html"])
    summary = html.tables[f"summary-{slug}"]
    groups = {g for g, _ in summary["rows"]}
    assert groups == {report.group_label(MODEL, DATASET, b) for b in ("256MiB", "512MiB")}


def test_missing_optional_tables_and_no_claims(tmp_path):
    tables = write_study_tables(tmp_path / "tables", claims=False)
    for name in ("paired_tests", "memory_summary", "summary"):
        (tables / f"{name}.csv").unlink()
    hist = pd.read_csv(tables / "history.csv").drop(columns=["peak_alloc_mib", "peak_reserved_mib"])
    hist.to_csv(tables / "history.csv", index=False)
    paths = build_report([study_input(tables)], tmp_path / "out", PROVENANCE)
    text = paths["html"].read_text(encoding="utf-8")
    assert "No paper claims are recorded for study" in text
    assert "No paired tests" in text and "No memory summary" in text
    assert "not measured on this device" in text  # the memory figure falls back to modelled
    assert "modelled peak memory" in text
    tex = paths["tex"].read_text(encoding="utf-8")
    assert "No paper claims are recorded" in tex


def test_accelerator_memory_is_preferred(tmp_path):
    tables = write_study_tables(tmp_path / "tables", accelerator=True)
    paths = build_report([study_input(tables)], tmp_path / "out", PROVENANCE)
    html = parse_html(paths["html"])
    metrics = {r["metric"] for r in rows_as_dicts(html.tables[f"memory-{report.slug(STUDY)}"])}
    assert {"peak_alloc_mib", "peak_reserved_mib"} <= metrics
    text = paths["html"].read_text(encoding="utf-8")
    assert "measured peak allocated" in text and "not measured on this device" not in text


def test_missing_cells_table_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="no cells.csv"):
        build_report([study_input(tmp_path / "nothing")], tmp_path / "out", PROVENANCE)


def test_study_hooks_add_figures_tables_and_a_partial(tmp_path, monkeypatch):
    tables = write_study_tables(tmp_path / "tables")

    def lr_trace(t: report.StudyTables) -> list[Figure]:
        fig = report.MplFigure(figsize=(4, 3))
        ax = fig.subplots()
        ax.plot(t.history["epoch"], t.history["lr"])
        return [Figure("lr", "Learning rate", "lr per epoch", fig)]

    def extra(t: report.StudyTables) -> list[report.Table]:
        rows = [[report.Cell("answer"), report.Cell(42.0, "num")]]
        cols = [report.Column("what"), report.Column("value", "r")]
        return [report.Table("extra-table", "An extra table.", cols, [report.Group("", rows)])]

    monkeypatch.setitem(report.STUDY_FIGURES, STUDY, lr_trace)
    monkeypatch.setitem(report.STUDY_TABLES, STUDY, extra)
    templates = tmp_path / "templates"
    shutil.copytree(report.TEMPLATE_DIR, templates)
    (templates / "partials" / "studies").mkdir(parents=True, exist_ok=True)
    (templates / "partials" / "studies" / f"{STUDY}.html.j2").write_text(
        "<p id='own'>own section of {{ s.name }}</p>"
    )
    (templates / "partials" / "studies" / f"{STUDY}.tex.j2").write_text(
        r"\paragraph{Own} section of ((( s.name )))"
    )
    paths = build_report([study_input(tables)], tmp_path / "out", PROVENANCE,
                         template_dir=templates)  # fmt: skip
    html = parse_html(paths["html"])
    assert (paths["figures"] / f"{STUDY}_lr.pdf").is_file()  # figures/<study>_<figure>.pdf
    assert find_row(html.tables["extra-table"], what="answer")["value"] == "42"
    text = paths["html"].read_text(encoding="utf-8")
    assert f"own section of {STUDY}" in text
    assert r"section of rest\_wake" in paths["tex"].read_text(encoding="utf-8")


def test_method_colours_are_shared_across_studies(tmp_path):
    a = write_study_tables(tmp_path / "a", study="a", methods=[REFERENCE, "restwake_original"])
    b = write_study_tables(tmp_path / "b", study="b",
                           methods=[REFERENCE, "other", "restwake_original"])  # fmt: skip
    ta = report.load_study_tables(study_input(a, "a"))
    tb = report.load_study_tables(study_input(b, "b"))
    assert tb.methods == [REFERENCE, "other", "restwake_original"]  # reference first
    # alone, each study would colour restwake_original differently; together they agree
    assert ta.colors["restwake_original"] != tb.colors["restwake_original"]
    colors = report.share_colors([ta, tb])
    assert len(set(colors.values())) == 3
    for m in ("restwake_original", REFERENCE):
        assert ta.colors[m] == tb.colors[m] == colors[m]
