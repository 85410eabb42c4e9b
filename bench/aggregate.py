"""Aggregate a study's result.json files into the tables of docs/contracts.md ("Tables").

``aggregate_study`` writes ``cells, history, summary, paired_tests, memory_summary, claims,
paper_checks`` (``.csv``) into the study's ``tables/`` folder: atomically (temp file +
``os.replace``), with a header even when empty, missing values empty, floats at full (round-trip)
precision, and rows in a fixed order: method, model, dataset, budget (natural order: ``none``
first, then by number), then seed / epoch / metric (metrics in the order of the metric list).

Which cells count: only cells with ``status: ok`` contribute values to summary, memory_summary,
paired_tests and claims; a non-ok cell's metric is NaN (its pair is dropped and the test says how
many pairs remain). A *missing* cell (a seed the reference has and the method lacks, or the other
way round) is an error: the pairing is undefined until the cell is run or removed. A group with no
reference cells at all pairs against the reference's cells of the same model and dataset at budget
``none`` (a reference that ignores the budget axis is run once); if there are none, the rows say
``not testable (no reference cells)``.

Paired tests cover every declared comparison: each method vs the study's reference, the
study config's ``comparisons:`` and every pair a claim compares (``versus``). Holm's correction
runs over the tested rows of the study's primary endpoints (config ``primary_endpoints:``, else
the metrics of its thesis claims), each comparison once whichever way round it is written
(``bench.claims.holm_family``, the family definition claims.csv uses too); the rest are
labelled ``secondary`` and left unadjusted.

Claims (``bench/studies/<study>/claims.yaml``, format in docs/contracts.md "Claims") are validated and
decided by :mod:`bench.claims`; ``claims.csv`` has one row per claim and group.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import claims, stats
from bench.checks import checks_table
from bench.errors import BenchError, ConfigError

load_claims = claims.load_claims
validate_claims = claims.validate_claims

AXES = ("study", "method", "model", "dataset", "budget", "seed")
GROUP = ("model", "dataset", "budget")
STATUSES = ("ok", "oom", "diverged", "skipped", "failed")

FINAL_FIRST = ("val_acc", "val_loss", "train_loss", "train_acc")
MEMORY_COLUMNS = (
    "param_mib", "activation_mib", "modelled_peak_mib", "peak_alloc_mib", "peak_reserved_mib",
    "peak_train_mib", "peak_eval_mib",
)  # fmt: skip
COMPUTE_COLUMNS = (
    "forward_flops_per_image", "backward_flops_per_image", "weight_grad_flops_per_image",
)  # fmt: skip
TIMING_COLUMNS = ("train_images_per_s", "eval_images_per_s", "train_s", "total_s")
CELLS_HEAD = (*AXES, "status", "reason", "config_hash", "mlflow_run_id", "epochs")
CELLS_TAIL = (*MEMORY_COLUMNS, *COMPUTE_COLUMNS, *TIMING_COLUMNS)

HISTORY_HEAD = (*AXES, "epoch", "phase")
HISTORY_FIRST = (
    "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s", "train_images_per_s",
    "peak_alloc_mib", "peak_reserved_mib", "peak_train_mib", "peak_eval_mib", "activation_mib",
    "modelled_peak_mib",
)  # fmt: skip

SUMMARY_COLUMNS = ("study", "method", *GROUP, "metric", "mean", "std", "ci_low", "ci_high", "n")
PAIRED_COLUMNS = (
    "study", "method", "versus", "model", "dataset", "budget", "metric", "endpoint", "n_pairs",
    "mean_method", "mean_versus", "mean_diff", "diff_ci_low", "diff_ci_high", "t", "p", "p_holm",
    "d_z", "status",
)  # fmt: skip
MEMORY_SUMMARY_COLUMNS = ("study", "method", *GROUP, "metric", "mean", "std", "min", "max", "n")
CLAIMS_COLUMNS = claims.CLAIMS_COLUMNS
PAPER_CHECKS_COLUMNS = claims.PAPER_CHECKS_COLUMNS

# summary.csv: the study's metrics, then these when any ok cell has them
SUMMARY_EXTRA = (
    "val_acc", "val_loss", "train_loss", "train_acc",
    "modelled_peak_mib", "activation_mib", "peak_alloc_mib", "train_images_per_s",
)  # fmt: skip

TABLES = ("cells", "history", "summary", "paired_tests", "memory_summary", "claims", "paper_checks",
          "mechanism_checks")


class ResultFileError(BenchError):
    """A result.json is missing, malformed or duplicated."""


# --------------------------------------------------------------------------------------------
# ordering and frame helpers


_NUM = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*(.*)$")


def budget_key(budget: Any) -> tuple:
    """Natural order of budgets: ``none`` first, then by number (``512MiB`` < ``1024MiB``)."""
    text = str(budget)
    if text == "none":
        return (0, 0.0, "", text)
    m = _NUM.match(text)
    if m:
        return (1, float(m.group(1)), m.group(2), text)
    return (2, 0.0, text, text)


def _cell_key(axes: Mapping[str, Any]) -> tuple:
    return (
        str(axes["study"]), str(axes["method"]), str(axes["model"]), str(axes["dataset"]),
        budget_key(axes["budget"]), int(axes["seed"]),
    )  # fmt: skip


def _group_sort_key(row: Mapping[str, Any]) -> tuple:
    return (
        str(row["study"]), str(row["method"]), str(row["model"]), str(row["dataset"]),
        budget_key(row["budget"]),
    )  # fmt: skip


_INT_TYPES = {int, type(None)}
_NUM_TYPES = {int, float, type(None)}


def _column(values: list[Any]) -> Any:
    """A column keeping ints as ints when some are missing (nullable Int64), floats as floats."""
    types = set(map(type, values))
    if types == {int}:
        return np.array(values, dtype=np.int64)
    if types <= _INT_TYPES and int in types:
        return pd.array(values, dtype="Int64")
    if types <= _NUM_TYPES and (int in types or float in types):
        return np.array([np.nan if v is None else v for v in values], dtype=float)
    return pd.Series(values, dtype=object).to_numpy()


def _frame(rows: list[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    data = {c: _column([r.get(c) for r in rows]) for c in columns}
    return pd.DataFrame(data, columns=list(columns))


def _scalar(v: Any) -> Any:
    """A CSV-friendly cell value: nested lists/dicts become compact JSON text."""
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return v


def _is_numeric_type(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------
# results


def load_results(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Read result.json files; a missing, malformed or duplicated one raises ResultFileError."""
    results, seen = [], {}
    for p in paths:
        path = Path(p)
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            raise ResultFileError(
                f"{path}: result file not found; run the cell or drop it from the list"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResultFileError(
                f"{path}: not valid JSON ({e}); delete it and re-run the cell"
            ) from None
        _check_result(doc, path)
        key = _cell_key(doc["axes"])
        if key in seen:
            raise ResultFileError(
                f"{path}: duplicate result for cell {doc.get('cell_id')!r} (also in {seen[key]}); "
                "pass each cell once"
            )
        seen[key] = path
        results.append(doc)
    return results


def _check_result(doc: Any, path: Path) -> None:
    def bad(what: str) -> ResultFileError:
        return ResultFileError(
            f"{path}: malformed result.json: {what}; re-run the cell "
            "(schema in docs/contracts.md)"
        )

    if not isinstance(doc, dict):
        raise bad("the top level is not a JSON object")
    if doc.get("schema_version") != 1:
        raise bad(f"schema_version is {doc.get('schema_version')!r}, expected 1")
    axes = doc.get("axes")
    if not isinstance(axes, dict):
        raise bad("'axes' is missing or not an object")
    missing = [k for k in AXES if k not in axes]
    if missing:
        raise bad(f"'axes' lacks {missing}")
    if isinstance(axes["seed"], bool) or not isinstance(axes["seed"], int):
        raise bad(f"axes.seed is {axes['seed']!r}, expected an integer seed index")
    if doc.get("status") not in STATUSES:
        raise bad(f"status is {doc.get('status')!r}, expected one of {list(STATUSES)}")
    for k in ("history",):
        if doc.get(k) is not None and not isinstance(doc[k], list):
            raise bad(f"'{k}' is not a list")
    for k in ("final", "memory", "compute", "timing", "mlflow", "config"):
        if doc.get(k) is not None and not isinstance(doc[k], dict):
            raise bad(f"'{k}' is not an object")


def _sorted(results: Sequence[Mapping]) -> list[Mapping]:
    return sorted(results, key=lambda r: _cell_key(r["axes"]))


def _axes_row(r: Mapping) -> dict[str, Any]:
    a = r["axes"]
    return {
        "study": str(a["study"]), "method": str(a["method"]), "model": str(a["model"]),
        "dataset": str(a["dataset"]), "budget": str(a["budget"]), "seed": int(a["seed"]),
    }  # fmt: skip


def cells_table(results: Sequence[Mapping]) -> pd.DataFrame:
    """One row per cell (contract column order; extra final metrics after the standard four).

    ``epochs`` is ``final.epochs`` (the epochs trained), else the number of history entries.
    A final key that is also a memory/compute/timing column fills it only when that section
    lacks the value.
    """
    fixed = set(CELLS_HEAD) | set(CELLS_TAIL)
    final_keys: dict[str, None] = {}
    rows = []
    for r in _sorted(results):
        final = r.get("final") or {}
        memory = r.get("memory") or {}
        compute = r.get("compute") or {}
        timing = r.get("timing") or {}
        row = _axes_row(r)
        epochs = final.get("epochs")
        if epochs is None:
            epochs = len(r.get("history") or [])
        row.update(
            status=r.get("status"),
            reason=r.get("reason"),
            config_hash=r.get("config_hash"),
            mlflow_run_id=(r.get("mlflow") or {}).get("run_id"),
            epochs=epochs,
        )
        for k, v in final.items():
            if k == "epochs":
                continue
            if k in fixed:
                continue
            final_keys.setdefault(k, None)
            row[k] = _scalar(v)
        sections = ((MEMORY_COLUMNS, memory), (COMPUTE_COLUMNS, compute), (TIMING_COLUMNS, timing))
        for cols, src in sections:
            for c in cols:
                v = src.get(c)
                row[c] = final.get(c) if v is None else v
        rows.append(row)
    extra = [k for k in FINAL_FIRST if k in final_keys] + sorted(
        k for k in final_keys if k not in FINAL_FIRST
    )
    return _frame(rows, [*CELLS_HEAD, *extra, *CELLS_TAIL])


def devices(results: Sequence[Mapping]) -> list[Any]:
    """Each cell's device from its result's provenance ('cpu', 'cuda:0', ...; None when not
    recorded), in the row order of :func:`cells_table`: the claims that hold on one device
    class (``device: accelerator``) are judged only on cells that ran on it."""
    return [(r.get("provenance") or {}).get("device") for r in _sorted(results)]


def history_table(results: Sequence[Mapping]) -> pd.DataFrame:
    """One row per cell and epoch; every key of the history entries whose values are numbers."""
    keys: dict[str, None] = {}
    rows = []
    for r in _sorted(results):
        axes = _axes_row(r)
        for entry in r.get("history") or []:
            row = {**entry, **axes, "epoch": entry.get("epoch"), "phase": entry.get("phase")}
            rows.append(row)
            for k in entry:
                keys[k] = None
    candidates = [k for k in keys if k not in HISTORY_HEAD]
    numeric = []
    for k in candidates:
        types = set(map(type, (row.get(k) for row in rows)))
        if types <= _NUM_TYPES and (int in types or float in types):
            numeric.append(k)
    ordered = [k for k in HISTORY_FIRST if k in numeric] + sorted(
        k for k in numeric if k not in HISTORY_FIRST
    )
    return _frame(rows, [*HISTORY_HEAD, *ordered])


def _ok_numeric(cells: pd.DataFrame, metric: str) -> pd.Series:
    """The metric as floats, NaN for non-ok cells, non-numbers and a missing column."""
    if metric not in cells.columns:
        return pd.Series(np.nan, index=cells.index, dtype=float)
    vals = pd.to_numeric(cells[metric], errors="coerce").astype(float)
    return vals.where(cells["status"] == "ok")


def summary_metrics(cells: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """The study's metrics, then SUMMARY_EXTRA entries that some ok cell has a number for."""
    out = list(dict.fromkeys(metrics))
    for m in SUMMARY_EXTRA:
        if m not in out and m in cells.columns and _ok_numeric(cells, m).notna().any():
            out.append(m)
    return out


def _groups(cells: pd.DataFrame) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(study, method, model, dataset, budget) groups in table order, with their row positions."""
    if cells.empty:
        return []
    keys = ["study", "method", *GROUP]
    grouped = cells.groupby(keys, sort=False, dropna=False).indices
    out = []
    for key, idx in grouped.items():
        out.append((dict(zip(keys, key)), np.sort(idx)))
    out.sort(key=lambda g: _group_sort_key(g[0]))
    return out


def summary_table(cells: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, sample std, 95% t-interval and n per (study, method, group) and metric; ok cells only.

    Every (method, group) that has cells gets a row per metric, n=0 when none is ok.
    """
    metrics = list(dict.fromkeys(metrics))
    arrays = {m: _ok_numeric(cells, m).to_numpy() for m in metrics}
    rows = []
    for g, idx in _groups(cells):
        for m in metrics:
            rows.append({**g, "metric": m, **stats.summarize(arrays[m][idx])})
    return _frame(rows, SUMMARY_COLUMNS)


def memory_summary_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std, min, max, n of the memory columns per (study, method, group); ok cells."""
    arrays = {m: _ok_numeric(cells, m).to_numpy() for m in MEMORY_COLUMNS}
    rows = []
    for g, idx in _groups(cells):
        for m in MEMORY_COLUMNS:
            rows.append({**g, "metric": m, **stats.describe(arrays[m][idx])})
    return _frame(rows, MEMORY_SUMMARY_COLUMNS)


def _seed_values(cells: pd.DataFrame, idx: np.ndarray, values: np.ndarray) -> dict[int, float]:
    seeds = cells["seed"].to_numpy()
    return {int(seeds[i]): float(values[i]) for i in idx}


def _paired_row(cells: pd.DataFrame, g: Mapping[str, Any], method: str, versus: str, metric: str,
                idx: np.ndarray | None, v_idx: np.ndarray | None, values: np.ndarray,
                min_pairs: int, note: str = "") -> dict[str, Any]:
    base = {"study": g["study"], "method": method, "versus": versus, "model": g["model"],
            "dataset": g["dataset"], "budget": g["budget"], "metric": metric}  # fmt: skip
    if idx is None or v_idx is None:
        missing = versus if v_idx is None else method
        res: dict[str, Any] = {
            "n_pairs": 0, "status": f"not testable (no cells of {missing})",
            **{c: np.nan for c in ("mean_method", "mean_reference", "mean_diff",
                                   "diff_ci_low", "diff_ci_high", "t", "p", "d_z")},
        }  # fmt: skip
        if idx is not None and np.isfinite(values[idx]).any():
            res["mean_method"] = float(np.nanmean(values[idx]))
    else:
        where = (f"study {g['study']}, group {g['model']}/{g['dataset']}/{g['budget']}"
                 + (f" ({note})" if note else "") + f", metric {metric}")
        try:
            res = stats.paired_test(_seed_values(cells, idx, values),
                                    _seed_values(cells, v_idx, values), min_pairs,
                                    method=method, reference=versus)
        except stats.SeedMismatchError as e:
            raise stats.SeedMismatchError(f"{where}: {e}") from None
    res["mean_versus"] = res.pop("mean_reference")
    return {**base, **res}


def paired_tests_table(
    cells: pd.DataFrame,
    reference: str,
    metrics: Sequence[str],
    min_pairs: int = stats.MIN_PAIRS,
    *,
    comparisons: Iterable[tuple[str, str, str | None]] = (),
    primary: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Paired tests (seed-paired, method - versus) per group and metric.

    Every non-reference method vs ``reference`` on ``metrics`` (a group without reference cells
    pairs with the reference's budget-``none`` cells, else reads not testable); then each
    declared ``(method, versus, metric)`` comparison on ``metrics`` and its own metric, in the
    groups where both methods have cells (either side may fall back to budget ``none``).
    ``endpoint`` is ``primary`` when the metric is in ``primary`` (default: every metric), else
    ``secondary``. Holm's correction runs over the tested primary rows of each study, each
    comparison once (:func:`bench.claims.holm_family`); secondary rows keep ``p_holm`` empty.
    Missing cells on either side of a pair raise :class:`bench.stats.SeedMismatchError`.
    """
    metrics = list(dict.fromkeys(metrics))
    groups = _groups(cells)
    index = {(g["study"], g["method"], g["model"], g["dataset"], g["budget"]): idx
             for g, idx in groups}  # fmt: skip
    arrays: dict[str, np.ndarray] = {}

    def values(m: str) -> np.ndarray:
        if m not in arrays:
            arrays[m] = _ok_numeric(cells, m).to_numpy()
        return arrays[m]

    def resolve(study: str, method: str, g: Mapping) -> tuple[np.ndarray | None, bool]:
        idx = index.get((study, method, g["model"], g["dataset"], g["budget"]))
        if idx is not None:
            return idx, False
        idx = index.get((study, method, g["model"], g["dataset"], "none"))
        return idx, idx is not None

    rows, seen = [], set()
    for g, idx in groups:
        if g["method"] == reference:
            continue
        r_idx, r_none = resolve(g["study"], reference, g)
        note = "reference at budget none" if r_none and g["budget"] != "none" else ""
        for m in metrics:
            rows.append(_paired_row(cells, g, g["method"], reference, m, idx, r_idx, values(m),
                                    min_pairs, note))
            seen.add((g["study"], g["method"], reference, g["model"], g["dataset"],
                      g["budget"], m))
    studies = sorted({g["study"] for g, _ in groups})
    for method, versus, metric in comparisons:
        tested = metrics + ([metric] if metric and metric not in metrics else [])
        for study in studies:
            cand = [g for g, _ in groups if g["study"] == study and g["method"] in (method, versus)]
            for g in sorted({(g["model"], g["dataset"], g["budget"]): g for g in cand}.values(),
                            key=_group_sort_key):
                m_idx, m_none = resolve(study, method, g)
                v_idx, v_none = resolve(study, versus, g)
                if m_idx is None or v_idx is None:
                    continue
                if g["budget"] == "none" and (m_none or v_none):
                    continue
                if g["budget"] != "none" and m_none and v_none:
                    continue
                notes = [f"{x} at budget none" for x, used in ((method, m_none), (versus, v_none))
                         if used and g["budget"] != "none"]
                for m in tested:
                    key = (study, method, versus, g["model"], g["dataset"], g["budget"], m)
                    if key in seen:
                        continue
                    seen.add(key)
                    rows.append(_paired_row(cells, {**g, "study": study}, method, versus, m,
                                            m_idx, v_idx, values(m), min_pairs,
                                            "; ".join(notes)))
    rows.sort(key=lambda r: (_group_sort_key(r), r["versus"] != reference, str(r["versus"]),
                             tested_order(r["metric"], metrics)))
    primary_set = set(primary) if primary else None
    for row in rows:
        row["endpoint"] = ("primary" if primary_set is None or row["metric"] in primary_set
                           else "secondary")
    # one family definition with claims.csv (bench.claims.holm_family): per study, the tested
    # primary rows, each comparison once (A vs B and B vs A are one hypothesis)
    family = claims.holm_family(rows, primary_set, "p")
    for i, row in enumerate(rows):
        row["p_holm"] = family[i][0] if i in family else np.nan
    return _frame(rows, PAIRED_COLUMNS)


def tested_order(metric: str, metrics: Sequence[str]) -> tuple[int, str]:
    """Metrics in the order of the study's list, a claim's own metric after them."""
    return (metrics.index(metric), "") if metric in metrics else (len(metrics), metric)


# --------------------------------------------------------------------------------------------
# claims


def claims_table(
    claims_doc: Mapping | None,
    cells: pd.DataFrame,
    study_cfg: Mapping | None = None,
    *,
    study: str = "",
    mechanism_checks: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per claim and group with its verdict and the numbers that decided it
    (bench.claims.evaluate_claims; columns CLAIMS_COLUMNS)."""
    rows = claims.evaluate_claims(claims_doc, cells, study=study, study_cfg=study_cfg,
                                  mechanism_checks=mechanism_checks)
    return _frame(rows, CLAIMS_COLUMNS)


def paper_checks_table(claims_doc: Mapping | None) -> pd.DataFrame:
    """The paper's stated numbers and statements recomputed from its own per-run values."""
    rows = []
    for c in (claims_doc or {}).get("claims") or []:
        rows.extend(claims.paper_check_rows(c))
    return _frame(rows, PAPER_CHECKS_COLUMNS)


# --------------------------------------------------------------------------------------------
# writing


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table (header always, NaN empty, full float precision) via temp file + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            df.to_csv(fh, index=False, lineterminator="\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; tables are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def add_speedup_vs_reference(cells: pd.DataFrame, reference: str,
                             time_column: str = "train_wall_s") -> pd.DataFrame:
    """`speedup_vs_reference` = the reference's training wall time / this cell's, for the same
    model, dataset, seed and budget (or the reference's budget-`none` cell when it runs without
    a budget), where cells report `time_column` (e.g. NeuroFlux vs backprop under one budget)."""
    if cells.empty or time_column not in cells:
        return cells
    ok = cells[(cells["status"] == "ok") & (cells["method"] == reference)]
    times = {(r.model, r.dataset, str(r.budget), int(r.seed)): getattr(r, time_column)
             for r in ok.itertuples()}
    speedups = []
    for r in cells.itertuples():
        ref = times.get((r.model, r.dataset, str(r.budget), int(r.seed)),
                        times.get((r.model, r.dataset, "none", int(r.seed))))
        own = getattr(r, time_column)
        valid = r.status == "ok" and ref is not None and own is not None
        valid = valid and np.isfinite(ref) and np.isfinite(own) and own > 0
        speedups.append(float(ref) / float(own) if valid else np.nan)
    return cells.assign(speedup_vs_reference=speedups)


def aggregate_study(
    result_paths: Iterable[str | os.PathLike],
    reference: str,
    metrics: Sequence[str],
    claims_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    study_cfg: Mapping | None = None,
) -> dict[str, Path]:
    """Build every table of a study and write them to ``out_dir``; returns {table name: path}.

    ``study_cfg`` (the study's config block) supplies the declared ``comparisons``, the
    ``primary_endpoints`` and the methods list (a claim on a method outside it reads
    ``not testable (method ... not in this run)``).
    """
    results = load_results(result_paths)
    claims_doc = load_claims(claims_path)
    studies = sorted({str(r["axes"]["study"]) for r in results})
    if claims_doc and claims_doc.get("study") is not None and studies:
        if [str(claims_doc["study"])] != studies:
            raise ConfigError(
                f"{claims_path}: claims are for study {claims_doc['study']!r} but the results are "
                f"for {studies}; pass the claims file of the same study"
            )
    study = studies[0] if len(studies) == 1 else str((claims_doc or {}).get("study") or "")
    cells = add_speedup_vs_reference(cells_table(results), reference)
    history = history_table(results)
    declared = [(str(m), str(v), None) for m, v in (study_cfg or {}).get("comparisons") or []]
    comparisons = [*declared, *claims.claim_comparisons(claims_doc)]
    primary = claims.primary_endpoints(claims_doc, study_cfg)
    mechanism = checks_table(study, results)
    tables = {
        "cells": cells,
        "history": history,
        "summary": summary_table(cells, summary_metrics(cells, metrics)),
        "paired_tests": paired_tests_table(cells, reference, metrics, comparisons=comparisons,
                                           primary=primary or None),
        "memory_summary": memory_summary_table(cells),
        "claims": claims_table(claims_doc, cells.assign(device=devices(results)), study_cfg,
                               study=study, mechanism_checks=mechanism),
        "paper_checks": paper_checks_table(claims_doc),
        "mechanism_checks": mechanism,
    }
    out_dir = Path(out_dir)
    return {name: write_csv_atomic(tables[name], out_dir / f"{name}.csv") for name in TABLES}
