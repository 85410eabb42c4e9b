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

Claims file format (``config/claims/<study>.yaml``)
---------------------------------------------------

.. code-block:: yaml

    study: restwake                  # must match the study being aggregated
    paper:                           # free-form: title, citation, url, ...
      title: "Rest-Wake training"
      citation: "..."
    notes: "optional free text"
    claims:
      - id: sgd_val_acc              # unique within the file
        description: "SGD reference, final val accuracy"   # optional
        source: "Table 2"            # where the number is printed in the paper (required)
        method: sgd                  # a method label of the study (required)
        metric: val_acc              # a column of cells.csv, in its units (required)
        where: {model: resnet18_imagenet_stem, dataset: cifar10, budget: none}   # optional filters
        value: 0.8319                # the paper's number ...
        std: 0.0061                  # ... optional stated std (sets the default tolerance)
        runs: [0.8263, 0.8311, 0.8384]   # optional per-run values (paper-internal checks)
        tolerance: {abs: 0.01}       # optional: {abs: x} or {rel: x}
      - id: neuroflux_speedup
        source: "Abstract"
        method: neuroflux
        metric: speedup
        range: [2.3, 6.1]            # instead of value: reproduced if the mean lies inside
        tolerance: {rel: 0.1}        # optional widening of both ends
      - id: restwake_p
        source: "Section 5"
        method: restwake_improved
        metric: val_acc
        statistic: paired_p          # the paper's paired t-test p-value
        value: 0.0919
        runs: [0.8266, 0.8333, 0.8303]            # the method's runs
        reference: sgd               # optional; default the study's reference
        reference_runs: [0.8263, 0.8311, 0.8384]  # the reference's runs
        alpha: 0.05                  # optional: verdict = same side of alpha

Accepted claim keys: see ``CLAIM_KEYS``; any other key is a ``ConfigError``. A claim has exactly
one of ``value`` and ``range``; ``statistic: paired_p`` needs ``value``, ``runs`` and
``reference_runs``. Numbers may be quoted (``"0.8300"``) to keep trailing zeros for the rounding
checks (and YAML reads ``1e-5`` as a string anyway). ``where`` pins the group (model, dataset,
budget); a claim whose method matches cells in several groups without pinning them is "not
testable" until ``where`` says which. Default tolerance (no ``tolerance`` key): abs = 2 x the
stated ``std`` if one is stated, else rel 0.05 (see ``bench.stats``); ranges are not widened by
default; paired_p claims are reproduced when the reproduced p falls on the same side of alpha.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench import stats
from bench.checks import checks_table
from bench.errors import BenchError, ConfigError

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
    "study", "method", "reference", *GROUP, "metric", "n_pairs", "mean_method", "mean_reference",
    "mean_diff", "diff_ci_low", "diff_ci_high", "t", "p", "p_holm", "d_z", "status",
)  # fmt: skip
MEMORY_SUMMARY_COLUMNS = ("study", "method", *GROUP, "metric", "mean", "std", "min", "max", "n")
CLAIMS_COLUMNS = (
    "claim_id", "description", "source", "method", "metric", "model", "dataset", "budget",
    "paper_value", "paper_low", "paper_high", "reproduced", "n", "difference", "tolerance",
    "verdict",
)  # fmt: skip
PAPER_CHECKS_COLUMNS = ("claim_id", "check", "stated", "recomputed", "consistent", "note")

# summary.csv: the study's metrics, then these when any ok cell has them
SUMMARY_EXTRA = (
    "val_acc", "val_loss", "train_loss", "train_acc",
    "modelled_peak_mib", "activation_mib", "peak_alloc_mib", "train_images_per_s",
)  # fmt: skip

CLAIMS_TOP_KEYS = ("study", "paper", "notes", "claims")
CLAIM_KEYS = (
    "id", "description", "source", "method", "metric", "where", "value", "std", "runs",
    "tolerance", "range", "statistic", "reference", "reference_runs", "alpha", "note",
)  # fmt: skip
CLAIM_REQUIRED = ("id", "source", "method", "metric")
WHERE_KEYS = GROUP
STATISTICS = ("paired_p",)

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


def paired_tests_table(
    cells: pd.DataFrame, reference: str, metrics: Sequence[str], min_pairs: int = stats.MIN_PAIRS
) -> pd.DataFrame:
    """Each non-reference method vs ``reference``, paired by seed, per group and metric.

    Holm's correction runs over every ``tested`` row of a study (the family). Missing cells on
    either side raise :class:`bench.stats.SeedMismatchError`.
    """
    metrics = list(dict.fromkeys(metrics))
    arrays = {m: _ok_numeric(cells, m).to_numpy() for m in metrics}
    groups = _groups(cells)
    ref_idx = {
        (g["study"], g["model"], g["dataset"], g["budget"]): idx
        for g, idx in groups
        if g["method"] == reference
    }
    rows = []
    for g, idx in groups:
        if g["method"] == reference:
            continue
        key = (g["study"], g["model"], g["dataset"], g["budget"])
        r_idx = ref_idx.get(key)
        note = ""
        if r_idx is None and g["budget"] != "none":
            r_idx = ref_idx.get((g["study"], g["model"], g["dataset"], "none"))
            note = "reference at budget none"
        for m in metrics:
            base = {**g, "reference": reference, "metric": m}
            if r_idx is None:
                res = {
                    "n_pairs": 0, "status": f"not testable (no reference cells of {reference})",
                    **{c: np.nan for c in ("mean_method", "mean_reference", "mean_diff",
                                           "diff_ci_low", "diff_ci_high", "t", "p", "d_z")},
                }  # fmt: skip
                mv = arrays[m][idx]
                if np.isfinite(mv).any():
                    res["mean_method"] = float(np.nanmean(mv))
            else:
                where = (
                    f"study {g['study']}, group {g['model']}/{g['dataset']}/{g['budget']}"
                    + (f" ({note})" if note else "")
                    + f", metric {m}"
                )
                try:
                    res = stats.paired_test(
                        _seed_values(cells, idx, arrays[m]),
                        _seed_values(cells, r_idx, arrays[m]),
                        min_pairs,
                        method=g["method"],
                        reference=reference,
                    )
                except stats.SeedMismatchError as e:
                    raise stats.SeedMismatchError(f"{where}: {e}") from None
            rows.append({**base, **res})
    # Holm over each study's tested rows
    by_study: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        row["p_holm"] = np.nan
        if row["status"] == stats.TESTED:
            by_study.setdefault(row["study"], []).append(i)
    for idxs in by_study.values():
        for i, ph in zip(idxs, stats.holm([rows[i]["p"] for i in idxs])):
            rows[i]["p_holm"] = ph
    return _frame(rows, PAIRED_COLUMNS)


# --------------------------------------------------------------------------------------------
# claims


def load_claims(path: str | os.PathLike | None) -> dict | None:
    """Read and validate a claims file; a missing file (or None) -> None (no claims yet)."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}); fix the claims file") from None
    validate_claims(doc, str(path))
    return doc


def validate_claims(doc: Any, name: str = "claims") -> None:
    """Raise ConfigError naming the file and claim for anything outside the claims format."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: the top level must be a mapping with a 'claims' list")
    unknown = sorted(set(doc) - set(CLAIMS_TOP_KEYS))
    if unknown:
        raise ConfigError(
            f"{name}: unknown top-level keys {unknown}; accepted: {list(CLAIMS_TOP_KEYS)}"
        )
    claims = doc.get("claims")
    if claims is None:
        doc["claims"] = claims = []
    if not isinstance(claims, list):
        raise ConfigError(f"{name}: 'claims' must be a list of claims")
    ids = set()
    for i, c in enumerate(claims):
        where = f"{name}: claim #{i + 1}"
        if not isinstance(c, dict):
            raise ConfigError(f"{where}: must be a mapping")
        if "id" in c:
            where = f"{name}: claim {c['id']!r}"
        unknown = sorted(set(c) - set(CLAIM_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; accepted keys: {list(CLAIM_KEYS)}")
        missing = [k for k in CLAIM_REQUIRED if c.get(k) in (None, "")]
        if missing:
            raise ConfigError(f"{where}: missing required keys {missing}")
        if c["id"] in ids:
            raise ConfigError(f"{where}: duplicate claim id; ids must be unique")
        ids.add(c["id"])
        _validate_claim(c, where)


def _number(c: Mapping, key: str, where: str, nonneg: bool = False) -> None:
    try:
        x = stats.to_float(c[key])
        stats.decimals(c[key])
    except ValueError as e:
        raise ConfigError(f"{where}: '{key}' {e}") from None
    if math.isnan(x) or (nonneg and x < 0):
        raise ConfigError(f"{where}: '{key}' must be a {'non-negative ' if nonneg else ''}number")


def _numbers(c: Mapping, key: str, where: str) -> None:
    v = c[key]
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}: '{key}' must be a non-empty list of numbers")
    for x in v:
        try:
            stats.to_float(x)
            stats.decimals(x)
        except ValueError as e:
            raise ConfigError(f"{where}: '{key}': {e}") from None


def _validate_claim(c: Mapping, where: str) -> None:
    has_value, has_range = c.get("value") is not None, c.get("range") is not None
    if has_value == has_range:
        raise ConfigError(f"{where}: give exactly one of 'value' and 'range'")
    if has_value:
        _number(c, "value", where)
    if has_range:
        r = c["range"]
        if not isinstance(r, list) or len(r) != 2:
            raise ConfigError(f"{where}: 'range' must be [low, high]")
        _numbers(c, "range", where)
        if stats.to_float(r[0]) > stats.to_float(r[1]):
            raise ConfigError(f"{where}: 'range' low {r[0]} is above high {r[1]}")
    if c.get("std") is not None:
        _number(c, "std", where, nonneg=True)
    for k in ("runs", "reference_runs"):
        if c.get(k) is not None:
            _numbers(c, k, where)
    if c.get("tolerance") is not None:
        try:
            stats._tolerance_spec(c["tolerance"])
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if c.get("where") is not None:
        w = c["where"]
        if not isinstance(w, dict):
            raise ConfigError(f"{where}: 'where' must be a mapping of {list(WHERE_KEYS)}")
        unknown = sorted(set(w) - set(WHERE_KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown 'where' keys {unknown}; accepted: {list(WHERE_KEYS)}"
            )
        for k, v in w.items():
            if v is None or isinstance(v, (list, dict, bool)):
                raise ConfigError(
                    f"{where}: where.{k} must be a single name or number (got {v!r}); "
                    "leave the key out to match every value"
                )
    stat = c.get("statistic")
    if stat is not None:
        if stat not in STATISTICS:
            raise ConfigError(f"{where}: statistic {stat!r} unknown; accepted: {list(STATISTICS)}")
        if not has_value:
            raise ConfigError(f"{where}: a {stat} claim needs 'value' (the stated p)")
        if c.get("runs") is None or c.get("reference_runs") is None:
            raise ConfigError(
                f"{where}: a {stat} claim needs 'runs' (method) and 'reference_runs' "
                "(reference) to recompute the p-value"
            )
    else:
        for k in ("reference_runs", "alpha", "reference"):
            if c.get(k) is not None:
                raise ConfigError(f"{where}: '{k}' only applies to 'statistic: paired_p' claims")
    if c.get("alpha") is not None:
        _number(c, "alpha", where, nonneg=True)


def _claim_groups(cells: pd.DataFrame, method: str, where: Mapping) -> pd.DataFrame:
    mask = cells["method"] == str(method)
    for k, v in (where or {}).items():
        mask &= cells[k] == str(v)
    return cells[mask]


def claims_table(
    claims_doc: Mapping | None, cells: pd.DataFrame, reference: str | None = None
) -> pd.DataFrame:
    """One row per claim: the paper's number beside the reproduction, difference and verdict.

    ``tolerance`` is the absolute half-width used (range claims: the widening of the range, 0 by
    default; paired_p claims: empty); the rule behind it is the module docstring's.

    ``reference`` is the study's reference (the default comparison of paired_p claims).
    """
    rows = []
    for c in (claims_doc or {}).get("claims") or []:
        where = c.get("where") or {}
        row: dict[str, Any] = {
            "claim_id": c["id"], "description": c.get("description"), "source": c.get("source"),
            "method": c["method"], "metric": c["metric"],
            "model": where.get("model"), "dataset": where.get("dataset"),
            "budget": None if where.get("budget") is None else str(where["budget"]),
            "paper_value": stats.to_float(c.get("value")),
            "paper_low": stats.to_float(c["range"][0]) if c.get("range") else np.nan,
            "paper_high": stats.to_float(c["range"][1]) if c.get("range") else np.nan,
        }  # fmt: skip
        rows.append(row)
        sel = _claim_groups(cells, c["method"], where) if not cells.empty else cells
        groups = sorted(
            {tuple(x) for x in sel[list(GROUP)].itertuples(index=False)},
            key=lambda g: (g[0], g[1], budget_key(g[2])),
        )
        if len(groups) == 1:
            row["model"], row["dataset"], row["budget"] = groups[0]
        is_p = c.get("statistic") == "paired_p"
        blank = {"reproduced": np.nan, "n": 0, "difference": np.nan}
        if is_p:
            tol = np.nan  # paired_p claims compare sides of alpha, not a distance
        elif c.get("range") is not None:
            tol = stats.claim_verdict(c, [])["tolerance"]
        else:
            tol = stats.claim_tolerance(c)[0]
        if len(groups) > 1:
            listed = ", ".join("/".join(g) for g in groups)
            row.update(
                blank,
                tolerance=tol,
                verdict=f"not testable (claim matches {len(groups)} groups: {listed}; "
                "pin one with 'where')",
            )
            continue
        if not groups:
            row.update(blank, tolerance=tol,
                       verdict="not testable (no matching cells with status ok)")  # fmt: skip
            continue
        if c["metric"] not in cells.columns:
            row.update(
                blank,
                tolerance=tol,
                verdict=f"not testable (metric {c['metric']!r} not in the results)",
            )
            continue
        if is_p:
            ref = c.get("reference") or reference
            if not ref:
                row.update(blank, tolerance=tol,
                           verdict="not testable (no reference method given)")  # fmt: skip
                continue
            g = dict(zip(GROUP, groups[0]))
            ref_sel = _claim_groups(cells, ref, g)
            if ref_sel.empty and g["budget"] != "none":
                ref_sel = _claim_groups(cells, ref, {**g, "budget": "none"})
            mvals = _ok_numeric(sel, c["metric"])
            rvals = _ok_numeric(ref_sel, c["metric"])
            try:
                paired = stats.paired_test(
                    dict(zip(sel["seed"].astype(int), mvals)),
                    dict(zip(ref_sel["seed"].astype(int), rvals)),
                    method=c["method"],
                    reference=ref,
                )
            except stats.SeedMismatchError as e:
                raise stats.SeedMismatchError(f"claim {c['id']!r}: {e}") from None
            v = stats.pvalue_claim_verdict(c, paired)
        else:
            v = stats.claim_verdict(c, _ok_numeric(sel, c["metric"]).tolist())
        row.update({k: v[k] for k in ("reproduced", "n", "difference", "tolerance", "verdict")})
    return _frame(rows, CLAIMS_COLUMNS)


def paper_checks_table(claims_doc: Mapping | None) -> pd.DataFrame:
    """The paper's stated numbers recomputed from its own per-run values (stats.paper_checks)."""
    rows = []
    for c in (claims_doc or {}).get("claims") or []:
        rows.extend(stats.paper_checks(c))
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
) -> dict[str, Path]:
    """Build every table of a study and write them to ``out_dir``; returns {table name: path}."""
    results = load_results(result_paths)
    claims_doc = load_claims(claims_path)
    studies = sorted({str(r["axes"]["study"]) for r in results})
    if claims_doc and claims_doc.get("study") is not None and studies:
        if [str(claims_doc["study"])] != studies:
            raise ConfigError(
                f"{claims_path}: claims are for study {claims_doc['study']!r} but the results are "
                f"for {studies}; pass the claims file of the same study"
            )
    cells = add_speedup_vs_reference(cells_table(results), reference)
    tables = {
        "cells": cells,
        "history": history_table(results),
        "summary": summary_table(cells, summary_metrics(cells, metrics)),
        "paired_tests": paired_tests_table(cells, reference, metrics),
        "memory_summary": memory_summary_table(cells),
        "claims": claims_table(claims_doc, cells, reference),
        "paper_checks": paper_checks_table(claims_doc),
        "mechanism_checks": checks_table(studies[0] if studies else "", results),
    }
    out_dir = Path(out_dir)
    return {name: write_csv_atomic(tables[name], out_dir / f"{name}.csv") for name in TABLES}
