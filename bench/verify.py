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

The cluster test and the fault-injection suite call it after each fault; users can call it
after any run (it reads, never writes).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.aggregate import TABLES
from bench.config import cell_dir, config_hash, plan, resolve_cell, tracking_uri

FINISHED_STATUSES = ("ok", "oom", "diverged", "skipped")


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
        head = (f"{self.cells} cells planned, {self.results} results found, "
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
    results = Path(cfg["results"])
    cells = plan(cfg)
    v = Verdict(cells=len(cells))
    found: dict[str, dict[str, Any]] = {}
    hashes: dict[str, str] = {}
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
        v.results += 1
        found[cell.cell_id] = doc
        if doc.get("cell_id") != cell.cell_id:
            v.problems.append(f"{cell.cell_id}: result.json names cell {doc.get('cell_id')!r}")
        resolved = resolve_cell(cfg, cell)
        expected = hashes[cell.cell_id] = config_hash(resolved)
        if doc.get("config_hash") != expected:
            v.problems.append(f"{cell.cell_id}: result is for config {doc.get('config_hash')}, "
                              f"the config now hashes to {expected} (stale result)")
        if doc.get("status") not in statuses:
            v.problems.append(f"{cell.cell_id}: status {doc.get('status')!r} "
                              f"({doc.get('reason')}); accepted: {', '.join(statuses)}")
        if (d / "checkpoint.pt").exists():
            v.problems.append(f"{cell.cell_id}: checkpoint.pt left beside a finished result")
        ran = doc.get("config") or {}
        for key in ("threads", "device"):
            want = resolved[key]
            if key in ran and ran[key] != want:
                v.problems.append(f"{cell.cell_id}: result was computed with {key} "
                                  f"{ran[key]!r}, the config now says {want!r} (stale result: "
                                  f"rerun the cell)")
    if tables:
        _check_tables(cfg, cells, v)
    if report:
        _check_report(cfg, v)
    if tracking and cfg["tracking"]["enabled"]:
        for cell in cells:
            hashes.setdefault(cell.cell_id, config_hash(resolve_cell(cfg, cell)))
        _check_tracking(uri or tracking_uri(cfg), cells, hashes, found, v)
    return v


def _check_tables(cfg: dict[str, Any], cells: list, v: Verdict) -> None:
    for study in cfg["studies"]:
        tdir = Path(cfg["results"]) / study / "tables"
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


def _check_report(cfg: dict[str, Any], v: Verdict) -> None:
    rdir = Path(cfg["results"]) / "report"
    for name in ("report.html", "report.tex"):
        path = rdir / name
        if not path.is_file() or path.stat().st_size == 0:
            v.problems.append(f"report {path} is missing or empty")
            continue
        text = path.read_text(errors="replace")
        for study in cfg["studies"]:
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
