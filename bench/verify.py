"""Is a finished run complete, and is nothing in it lost or duplicated?

    python -m bench verify --configfile config/smoke.yaml [--results DIR]

Checks, against the plan of the config (what Snakemake was asked to produce):
- every cell has exactly one `result.json`, with its own axes and config hash and an accepted
  status, and no half-written file beside it (a staged or temporary result, a checkpoint);
- every study's tables hold each cell once, and the report exists and names every study;
- a result was computed with the config's `threads` and `device` (not hashed, see
  `bench.train.ENVIRONMENT_KEYS`);
- with tracking on, the study's MLflow experiment holds exactly one current run per cell,
  FINISHED, the run its result points at, and that run equals the result: every metric it
  logged, at every step, is the value result.json holds (`bench.tracking.result_metrics`),
  nothing in the result is missing from it, no step is logged twice, and the latest value of
  every final metric is the result's. Runs of a cell's earlier configs and runs superseded by
  a retrain (tag `superseded_by`) are history; the study's summary run is not a cell.

`--results DIR` judges a results folder by what it holds: the plan its last workflow run
recorded in `DIR/run-plan.json` (every cell and its config hash, the threads, device and
tracking store of that run; written by the workflow's `onstart`), not by this clone's config
or code, which may plan other cells or resolve them to other hashes (another clone, another
version). A folder without that record is judged by the config, and the summary says so.
Judged by a config, a stale result says whether the folder's own record explains it.

The cluster test and the fault-injection suite call it after each fault; users can call it
after any run (it reads, never writes).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.aggregate import TABLES
from bench.config import Cell, cell_dir, config_hash, plan, resolve_cell, tracking_uri

FINISHED_STATUSES = ("ok", "oom", "diverged", "skipped")
RUN_PLAN = "run-plan.json"  # <results>/run-plan.json: what the folder's last run planned


@dataclass
class Verdict:
    """What `verify_run` found: counts for the summary line and every problem, each a line."""

    cells: int = 0
    results: int = 0
    runs: int = 0
    earlier_runs: int = 0  # runs of a cell's earlier configs (history, not duplicates)
    superseded_runs: int = 0  # runs of a cell trained again under the same config (history)
    lost: int = 0  # planned cells without a result, results not mirrored to MLflow
    duplicated: int = 0  # cells with two results/runs/rows, metric steps logged twice
    differing: int = 0  # MLflow values that are not the result's
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how it was judged (not problems)

    def add(self, problem: str, lost: int = 0, duplicated: int = 0, differing: int = 0
            ) -> None:
        self.problems.append(problem)
        self.lost += lost
        self.duplicated += duplicated
        self.differing += differing

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        history = [f"+{n} {what}" for n, what in ((self.earlier_runs, "of earlier configs"),
                                                   (self.superseded_runs, "superseded"))
                   if n]
        earlier = f" ({', '.join(history)})" if history else ""
        differing = (f", {self.differing} MLflow values differing from result.json"
                     if self.differing else "")
        notes = "".join(f"note: {n}\n" for n in self.notes)
        head = notes + (f"{self.cells} cells planned, {self.results} results found, "
                f"{self.runs} MLflow runs found{earlier}, {self.lost} lost, "
                f"{self.duplicated} duplicated{differing}")
        if self.ok:
            return head + ": complete, nothing lost or duplicated"
        shown = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        return f"{head}: {len(self.problems)} problem(s)\n{shown}{more}"


def verify_run(cfg: dict[str, Any], *, statuses: tuple[str, ...] = FINISHED_STATUSES,
               tables: bool = True, report: bool = True, tracking: bool = True,
               uri: str | None = None) -> Verdict:
    """Check a run of the (checked) config `cfg`; see the module docstring."""
    cells = plan(cfg)
    expected = {c.cell_id: config_hash(resolve_cell(cfg, c)) for c in cells}
    record = read_run_plan(cfg["results"])
    return _verify(Path(cfg["results"]), cells, expected,
                   {"threads": cfg["threads"], "device": cfg["device"]}, list(cfg["studies"]),
                   statuses=statuses, tables=tables, report=report,
                   uri=(uri or tracking_uri(cfg)) if tracking and cfg["tracking"]["enabled"]
                   else None, record=record)


def verify_folder(results: str | Path, cfg: dict[str, Any] | None = None, *,
                  statuses: tuple[str, ...] = FINISHED_STATUSES, tables: bool = True,
                  report: bool = True, tracking: bool = True, uri: str | None = None
                  ) -> Verdict:
    """Check the results folder `results` by its own record (`run-plan.json`): its cells, their
    config hashes, the threads, device and MLflow store of the run that made it. Without a
    record, by `cfg` (its `results` replaced), saying so. A `cfg` that plans otherwise than
    the record is named in a note: it is not what this folder was made from."""
    results = Path(results)
    record = read_run_plan(results)
    if record is None:
        if cfg is None:
            raise FileNotFoundError(f"{results / RUN_PLAN} not found and no config given")
        v = verify_run({**cfg, "results": str(results)}, statuses=statuses, tables=tables,
                       report=report, tracking=tracking, uri=uri)
        v.notes.append(f"{results} has no {RUN_PLAN} (made before runs recorded their plan, "
                       "or never run by the workflow): judged by this clone's config, "
                       "which may differ from what made it")
        return v
    cells = [cell_of_id(cid) for cid in record["cells"]]
    track = record.get("tracking") or {}
    store = None
    if tracking and track.get("enabled"):
        # where that run mirrored to (its default store moves with the folder), not where
        # this shell's $MLFLOW_TRACKING_URI points; --tracking-uri overrides
        store = uri or (f"sqlite:///{(results / 'mlflow.db').resolve()}"
                        if track.get("in_results") else track.get("uri"))
    v = _verify(results, cells, dict(record["cells"]),
                {"threads": record.get("threads"), "device": record.get("device")},
                list(record.get("studies") or sorted({c.study for c in cells})),
                statuses=statuses, tables=tables, report=report, uri=store)
    v.notes.append(f"judged by {results / RUN_PLAN}: the plan of this folder's last run "
                   f"({_who(record)})")
    if cfg is not None:
        differ = _plan_difference(cfg, record)
        if differ:
            v.notes.append(f"the config given plans otherwise than that run: {differ}; "
                           "this folder was not made from it (run snakemake with it to "
                           "bring the folder up to date)")
    return v


def _who(record: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(record.get("written") or 0))
    return f"clone {record.get('clone', '?')}, host {record.get('host', '?')}, {when}"


def _plan_difference(cfg: dict[str, Any], record: dict[str, Any]) -> str:
    mine = {c.cell_id: config_hash(resolve_cell(cfg, c)) for c in plan(cfg)}
    theirs = record["cells"]
    only_mine = sorted(set(mine) - set(theirs))
    only_theirs = sorted(set(theirs) - set(mine))
    other = sorted(c for c in set(mine) & set(theirs) if mine[c] != theirs[c])
    parts = []
    for what, ids in (("cells it plans that the run did not", only_mine),
                      ("cells of the run it does not plan", only_theirs),
                      ("cells it resolves to another config hash (another config or code)",
                       other)):
        if ids:
            parts.append(f"{len(ids)} {what} (e.g. {ids[0]})")
    return "; ".join(parts)


def cell_of_id(cell_id: str) -> Cell:
    """'study/method/model/dataset/budget/s<seed>' -> Cell."""
    parts = cell_id.split("/")
    if len(parts) != 6 or not parts[5].startswith("s") or not parts[5][1:].isdigit():
        raise ValueError(f"not a cell id: {cell_id!r}")
    return Cell(*parts[:5], int(parts[5][1:]))


def read_run_plan(results: str | Path) -> dict[str, Any] | None:
    """The folder's `run-plan.json`, or None where there is none (or it is unreadable)."""
    try:
        doc = json.loads((Path(results) / RUN_PLAN).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("cells"), dict) else None


def write_run_plan(results: str | Path, cfg: dict[str, Any], hashes: dict[str, str],
                   uri: str, clone: str) -> Path:
    """Record what a workflow run plans in `<results>/run-plan.json` (atomically): what
    `verify --results` judges the folder by, whichever clone or version looks at it."""
    import socket

    results = Path(results)
    default_uri = "sqlite:///" + str((results / "mlflow.db").resolve())
    doc = {"written": time.time(), "clone": clone, "workdir": os.getcwd(),
           "host": socket.gethostname(), "pid": os.getpid(),
           "studies": list(cfg["studies"]), "threads": cfg["threads"], "device": cfg["device"],
           "tracking": {"enabled": bool(uri), "uri": uri or None,
                        "in_results": bool(uri) and uri == default_uri},
           "cells": hashes, "config": cfg}
    path = results / RUN_PLAN
    tmp = results / f".{RUN_PLAN}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def result_problem(path: Path, cell_id: str, expected_hash: str) -> str | None:
    """Why the file at `path` is not a result of cell `cell_id` under config hash
    `expected_hash` (unreadable, not a JSON object, another cell, another config), or None."""
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        return f"unreadable: {e.strerror}"
    except ValueError:
        return "not valid JSON"
    if not isinstance(doc, dict) or not doc:
        return "not a result (an empty or non-object JSON document)"
    if doc.get("cell_id") != cell_id:
        return f"a result of cell {doc.get('cell_id')!r}"
    if doc.get("config_hash") != expected_hash:
        return (f"a result of config hash {doc.get('config_hash')!r}, this cell's config "
                f"hashes to {expected_hash!r}")
    return None


def set_aside(path: Path) -> Path:
    """Rename a bad result to `result.json.bad-<UTC time>` beside it (kept, never deleted)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.bad-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bad-{stamp}-{n}")
    os.replace(path, target)
    return target


def _verify(results: Path, cells: list[Cell], expected: dict[str, str], env: dict[str, Any],
            studies: list[str], *, statuses: tuple[str, ...], tables: bool, report: bool,
            uri: str | None, record: dict[str, Any] | None = None) -> Verdict:
    """The checks, given the plan: cells, their expected config hashes, the environment
    (threads, device) and the MLflow store (None: not checked)."""
    v = Verdict(cells=len(cells))
    found: dict[str, dict[str, Any]] = {}
    for cell in cells:
        d = cell_dir(results, cell)
        path = d / "result.json"
        leftovers = sorted(p.name for p in d.glob(".*") if p.name != ".lock") if d.is_dir() else []
        if leftovers:
            v.problems.append(f"{cell.cell_id}: half-written files left: {', '.join(leftovers)}")
        if not path.is_file():
            v.add(f"{cell.cell_id}: no result.json (lost or never run)", lost=1)
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            v.problems.append(f"{cell.cell_id}: result.json unreadable ({e})")
            continue
        if not isinstance(doc, dict):
            v.problems.append(f"{cell.cell_id}: result.json is not a JSON object")
            continue
        v.results += 1
        found[cell.cell_id] = doc
        if doc.get("cell_id") != cell.cell_id:
            v.problems.append(f"{cell.cell_id}: result.json names cell {doc.get('cell_id')!r}")
        want = expected[cell.cell_id]
        if doc.get("config_hash") != want:
            v.problems.append(f"{cell.cell_id}: result is for config {doc.get('config_hash')}, "
                              f"the config now hashes to {want} (stale result)"
                              + _explain(record, cell.cell_id, doc.get("config_hash")))
        if doc.get("status") not in statuses:
            v.problems.append(f"{cell.cell_id}: status {doc.get('status')!r} "
                              f"({doc.get('reason')}); accepted: {', '.join(statuses)}")
        if (d / "checkpoint.pt").exists():
            v.problems.append(f"{cell.cell_id}: checkpoint.pt left beside a finished result")
        ran = doc.get("config") or {}
        for key in ("threads", "device"):
            if key in ran and env.get(key) is not None and ran[key] != env[key]:
                v.problems.append(f"{cell.cell_id}: result was computed with {key} "
                                  f"{ran[key]!r}, the config now says {env[key]!r} (stale "
                                  f"result: rerun the cell)")
    if tables:
        _check_tables(results, studies, cells, v)
    if report:
        _check_report(results, studies, v)
    if uri:
        # MLflow mirrors the results: a cell's run is the one of its result's config (a stale
        # result is reported above, once, not a second time as a lost run)
        hashes = {c.cell_id: (found.get(c.cell_id) or {}).get("config_hash")
                  or expected[c.cell_id] for c in cells}
        _check_tracking(uri, cells, hashes, found, v)
    return v


def _explain(record: dict[str, Any] | None, cell_id: str, result_hash: Any) -> str:
    """Why a result's hash differs from the config's, when the folder's record knows."""
    if record is None:
        return ""
    recorded = record["cells"].get(cell_id)
    if recorded is not None and recorded == result_hash:
        return (f"; but it is current for this folder's own last run ({_who(record)}), "
                "which planned it with that hash: the folder was made with another config or "
                "code than this one; `python -m bench verify --results DIR` judges it by its "
                "own record")
    return ""


def _check_tables(results: Path, studies: list[str], cells: list, v: Verdict) -> None:
    for study in studies:
        tdir = results / study / "tables"
        for name in TABLES:
            if not (tdir / f"{name}.csv").is_file():
                v.problems.append(f"table {study}/{name}.csv is missing")
        path = tdir / "cells.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            ids = Counter("/".join([study, r["method"], r["model"], r["dataset"], r["budget"],
                                    f"s{r['seed']}"]) for r in csv.DictReader(f))
        want = {c.cell_id for c in cells if c.study == study}
        for cid, n in ids.items():
            if n > 1:
                v.add(f"table {study}/cells.csv lists {cid} {n} times", duplicated=1)
        for cid in sorted(want - set(ids)):
            v.add(f"table {study}/cells.csv lacks {cid}", lost=1)
        for cid in sorted(set(ids) - want):
            v.problems.append(f"table {study}/cells.csv has {cid}, which is not in the plan")


def _check_report(results: Path, studies: list[str], v: Verdict) -> None:
    rdir = results / "report"
    for name in ("report.html", "report.tex"):
        path = rdir / name
        if not path.is_file() or path.stat().st_size == 0:
            v.problems.append(f"report {path} is missing or empty")
            continue
        text = path.read_text(errors="replace")
        for study in studies:
            if study not in text and study.replace("_", r"\_") not in text:
                v.problems.append(f"report {name} does not mention study {study}")


def _check_tracking(uri: str, cells: list, hashes: dict[str, str],
                    found: dict[str, dict[str, Any]], v: Verdict) -> None:
    """One current run per cell and config, equal to its result. Runs of a cell's earlier
    configs (a changed setting starts a new run) and superseded runs (a retrain under the
    same config) are history, not duplicates: they are counted apart."""
    from mlflow.tracking import MlflowClient

    from bench.tracking import RUN_KIND_TAG, SUPERSEDED_TAG

    client = MlflowClient(tracking_uri=uri)
    by_study: dict[str, list] = defaultdict(list)
    for cell in cells:
        by_study[cell.study].append(cell)
    for study, study_cells in by_study.items():
        exp = client.get_experiment_by_name(study)
        if exp is None:
            v.problems.append(f"MLflow {uri}: no experiment {study!r}")
            continue
        per_cell: dict[str, list] = defaultdict(list)
        for run in _all_runs(client, exp.experiment_id):
            tags = run.data.tags
            if tags.get(RUN_KIND_TAG) == "study_summary":
                continue
            cid = tags.get("cell_id", "?")
            if cid in hashes and tags.get("config_hash") != hashes[cid]:
                v.earlier_runs += 1  # a run of an earlier config of this cell
                continue
            if SUPERSEDED_TAG in tags:
                v.superseded_runs += 1  # trained again; the new run replaces it
                continue
            v.runs += 1
            per_cell[cid].append(run)
        for cid, group in per_cell.items():
            if len(group) > 1:
                v.add(f"MLflow: {len(group)} runs for cell {cid} (duplicated)", duplicated=1)
        planned = {c.cell_id for c in study_cells}
        for cid in sorted(set(per_cell) - planned):
            v.problems.append(f"MLflow: run for {cid}, which is not in the plan")
        for cell in study_cells:
            group = per_cell.get(cell.cell_id, [])
            doc = found.get(cell.cell_id)
            if not group:
                if doc is not None:
                    v.add(f"MLflow: no run for {cell.cell_id} (result not mirrored)", lost=1)
                continue
            linked = (doc or {}).get("mlflow") or {}
            run = next((r for r in group if r.info.run_id == linked.get("run_id")), group[0])
            if doc is None:
                continue
            if run.info.status != "FINISHED" and doc.get("status") != "failed":
                v.problems.append(f"MLflow: run of {cell.cell_id} is {run.info.status}")
            if linked.get("run_id") != run.info.run_id:
                v.problems.append(f"{cell.cell_id}: result points at run "
                                  f"{linked.get('run_id')}, the store has {run.info.run_id}")
            compare_run(client, run, doc, v)


def compare_run(client: Any, run: Any, doc: dict[str, Any], v: Verdict) -> None:
    """Every metric of `run`, step by step, against what its result says it must hold."""
    from bench.tracking import _same, after_training_metrics, result_metrics

    cid = doc.get("cell_id")
    want = result_metrics(doc)
    logged = {key: client.get_metric_history(run.info.run_id, key)
              for key in sorted(set(run.data.metrics) | set(want))}
    for key, history in logged.items():
        expected = want.get(key, {})
        steps = Counter(m.step for m in history)
        dup = sorted(s for s, n in steps.items() if n > 1)
        miss = sorted(s for s, x in expected.items() if x is not None and s not in steps)
        if dup or miss:
            v.add(f"MLflow: {cid} metric {key}: "
                  + (f"epochs logged twice {dup} " if dup else "")
                  + (f"epochs missing {miss}" if miss else ""),
                  lost=int(bool(miss)), duplicated=int(bool(dup)))
        wrong = sorted({m.step for m in history if m.step not in dup and (
            m.step not in expected or not _same(m.value, expected[m.step]))})
        if wrong:
            shown = ", ".join(
                f"step {s}: {next(m.value for m in history if m.step == s)!r} vs "
                f"{expected.get(s, 'absent')}" for s in wrong[:3])
            v.add(f"MLflow: {cid} metric {key} differs from result.json ({shown}"
                  f"{', ...' if len(wrong) > 3 else ''})", differing=1)
    finals = {k: val for k, (_, val) in after_training_metrics(doc).items()}
    finals.update({k: float(x) for k, x in (doc.get("final") or {}).items()
                   if isinstance(x, (int, float)) and not isinstance(x, bool)
                   and math.isfinite(x)})
    for key, value in sorted(finals.items()):
        latest = run.data.metrics.get(key)
        if not _same(latest, value):
            v.add(f"MLflow: {cid} shows {key} = {latest!r}, its result.json says {value!r}",
                  differing=1)


def _all_runs(client: Any, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
