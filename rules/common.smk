# Config -> cell table, path helpers. All logic lives in bench.config; this file only binds it.
import functools
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from bench.config import (
    Cell,
    CellResolver,
    canonical_json,
    cell_dir,
    check_config,
    check_config_files,
    config_hash,
    check_device,
    claims_path,
    dataset_spec,
    plan,
    pretrain_spec,
    ranking_spec,
    tracking_uri,
    write_cell_config,
)
from bench.errors import ConfigError
from bench.runlock import RunLock, RunLockError
from bench.verify import result_problem, set_aside, write_run_plan


# Schema, names, options, shapes: every bad input stops here, before any job, in one line per
# problem (check_config validates against config/schema/config.schema.yaml itself). A cluster
# job step re-reads the config its main process checked in full: there the checks that import
# torch and SciPy are skipped (deep=False returns the same config).
PLANNING_SINCE = time.time()  # a run that used the results folder after this: plan outdated
try:
    check_config_files(workflow.configfiles)  # a key twice: Snakemake keeps the last
    CONFIG = check_config(config, deep=workflow.is_main_process)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

RESULTS = CONFIG["results"]
CELLS = plan(CONFIG)
# Resolves each cell once, from parts shared per study, method, model and dataset (a
# 10,000-cell plan in seconds: benchmarks/plan_scale.py).
RESOLVER = CellResolver(CONFIG)
STUDIES = list(CONFIG["studies"])
CONFIG_JSON = json.dumps(CONFIG, sort_keys=True)


TRACKING_URI = tracking_uri(CONFIG) if CONFIG["tracking"]["enabled"] else ""
CELL_PATH = "{study}/cells/{method}/{model}/{dataset}/{budget}/s{seed}"
REPORT_HTML = f"{RESULTS}/report/report.html"
REPORT_TEX = f"{RESULTS}/report/report.tex"
TABLES = [
    "cells",
    "history",
    "summary",
    "paired_tests",
    "memory_summary",
    "claims",
    "paper_checks",
    "mechanism_checks",
]  # bench.aggregate.TABLES (tests/test_workflow.py checks they agree)


wildcard_constraints:
    study="[^/]+",
    method="[^/]+",
    model="[^/]+",
    dataset="[^/]+",
    budget="[^/]+",
    seed="[0-9]+",
    spec="[0-9a-f]{10}",


def prepared_data(wildcards):
    """The manifest a cell's data check writes. Its name carries a hash of the study's data
    options: a changed option is a new file (and reruns exactly the cells that use it), while
    a changed learning rate reloads nothing."""
    return _prepared_path(wildcards.study, wildcards.dataset)


@functools.cache  # once per (study, dataset), not once per cell
def _prepared_path(study, dataset):
    spec = canonical_json(dataset_spec(CONFIG, dataset, study))
    digest = hashlib.sha256(spec.encode()).hexdigest()[:10]
    return f"{RESULTS}/.prepared/{study}/{dataset}-{digest}.json"


def dataset_spec_json(wildcards):
    return canonical_json(dataset_spec(CONFIG, wildcards.dataset, wildcards.study))


def cell_inputs(wildcards):
    """The files a cell reads: its resolved config, its data check, and the pretrained
    checkpoint and layer ranking the config names (made by rules/pretrain.smk, or given by
    the user).

    The resolved config is written here, while planning, as `config-<digest>.json` beside the
    cell's result (bench.config.write_cell_config): a changed setting is a new, newer file, so
    the cell reruns whether or not `.snakemake/` remembers the old params (a fresh clone on an
    existing results folder); a result that already matches keeps a config file older than
    itself and reruns nothing."""
    cell = cell_of(wildcards)
    cfg = RESOLVER.resolve(cell)
    try:
        config_file = write_cell_config(RESULTS, cell, cfg)
    except OSError as e:
        raise WorkflowError(f"cannot write the resolved config of cell {cell.cell_id} under "
                            f"{RESULTS}: {e.strerror}") from None
    PLANNED_HASHES[cell.cell_id] = config_hash(cfg)
    check_existing_result(cell, config_file, PLANNED_HASHES[cell.cell_id])
    return {"config": str(config_file), "data": prepared_data(wildcards), **cfg["inputs"]}


PLANNED_HASHES = {}  # cell id -> config hash, as planned (the run's record: run-plan.json)


def check_existing_result(cell, config_file, expected_hash):
    """A result.json that Snakemake would keep (newer than the cell's config file) but that is
    not a result of this cell's config (`{}`, damaged, another cell's or config's): kept, the
    cell would never be trained again and every aggregate of its study would fail, deleting
    the study's tables and the report each time. A real run takes the results folder's lock
    (right here: never beside another run), renames the file to `result.json.bad-<time>`
    beside it (kept) and so plans the cell again; a dry run only says so. A result older than
    its config file reruns anyway (a changed setting): Snakemake replaces it."""
    result = config_file.parent / "result.json"
    try:
        mtime = result.stat().st_mtime_ns
        if mtime < config_file.stat().st_mtime_ns:
            return
    except OSError:
        return
    why = result_problem(result, cell.cell_id, expected_hash)
    if why is None:
        return
    if not executing():
        logger.warning(f"memrepro: {result} is not a result of this cell's config ({why}): "
                       "a run (not -n) sets it aside as result.json.bad-<time> beside it (kept) "
                       "and trains the cell again")
        return
    take_results_lock()
    kept = set_aside(result)
    logger.warning(f"memrepro: {result} is not a result of this cell's config ({why}): set "
                   f"aside as {kept.name} beside it (kept); the cell is trained again")


def ranking_checkpoint(wildcards):
    spec = ranking_spec(CONFIG, wildcards.study, wildcards.model, wildcards.dataset)
    return [spec["init_checkpoint"]] if spec["init_checkpoint"] else []


def cell_of(wildcards):
    return Cell(
        wildcards.study,
        wildcards.method,
        wildcards.model,
        wildcards.dataset,
        wildcards.budget,
        int(wildcards.seed),
    )


def study_config_json(wildcards):
    """The config with only this study: another study's change does not re-aggregate it."""
    return json.dumps({**CONFIG, "studies": {wildcards.study: CONFIG["studies"][wildcards.study]}},
                      sort_keys=True)


@functools.cache
def _results_of(study):
    return [f"{RESULTS}/{c.study}/cells/{c.method}/{c.model}/{c.dataset}/{c.budget}/s{c.seed}/"
            "result.json" for c in CELLS if c.study == study]  # cell_dir, as strings


def study_results(wildcards):
    return list(_results_of(wildcards.study))


def study_claims(wildcards):
    path = claims_path(wildcards.study)
    return [str(path)] if path is not None else []


# Resources. Snakemake's local scheduler counts them against `--resources`; the slurm executor
# turns them into sbatch options (--mem, --time, --gpus, --cpus-per-task). Memory and runtime
# grow with each retry (`retries:` in the profiles), so a cell killed for exceeding its
# allocation comes back with more. profiles/slurm can override them with `set-resources`.
TRAIN_MEM_MB = 2000  # per attempt; a quick cell needs < 1 GB on CPU
TRAIN_RUNTIME_MIN = 60  # per attempt


def uses_gpu():
    """1 when cells run on CUDA (`device: cuda`): Slurm then places them on GPU nodes."""
    return 1 if str(CONFIG["device"]).startswith("cuda") else 0


def gpu_exclusive(wildcards):
    """1 for studies marked `device_exclusive` (cells that measure speed want a whole GPU)."""
    return int(bool(CONFIG["studies"][wildcards.study].get("device_exclusive", False)))


# On a local multi-GPU machine, `bench.slots` gives each job a free device (Snakemake counts
# GPUs but never assigns them) and execs the command; with `gpu=0`, or under Slurm (which
# assigns devices itself), it only execs. Values travel as resources, not params, so changing
# them never reruns a finished cell.
# The lock folder is baked into the command text: shell-quoted here (check_config refuses
# braces in paths, which Snakemake would read as placeholders).
GPU_SLOTS_DIR = f"{RESULTS}/.gpu-slots"
GPU_SLOT = (
    f"python -m bench.slots --lock-dir {shlex.quote(GPU_SLOTS_DIR)} "
    "--need {resources.gpu:q} --exclusive-if {resources.gpu_exclusive:q} --"
)


def init_tracking_args():
    """Create the MLflow store and the studies' experiments once, before any job (`onstart`):
    MLflow's schema migration races when several cells open a brand-new sqlite file at once.
    An argument list, run without a shell: no value of the config is ever parsed as shell."""
    args = ["python", "-m", "bench", "init-tracking"]
    for s in STUDIES:
        args += ["--study", s]
    return args + ["--tracking-uri", TRACKING_URI, "--results", RESULTS,
                   "--out", f"{RESULTS}/.tracking.json"]


RUN_LOCK = RunLock(Path(RESULTS).resolve(), clone=str(Path(workflow.basedir).resolve()),
                   command=shlex.join(sys.argv))


def before_any_job():
    """`onstart` (main process only; never on a dry run): devices that the local jobs will ask
    for, then the results folder's lock, the run's plan recorded (`run-plan.json`) and the
    MLflow store. A failure after the lock releases it again."""
    if not workflow.is_main_process:
        return
    if workflow.local_exec:  # a cluster's jobs run elsewhere: their devices are theirs to check
        try:
            check_device(CONFIG)
        except ConfigError as e:
            raise WorkflowError(str(e)) from None
    take_results_lock()
    try:
        _prepare_run()
    except BaseException:
        RUN_LOCK.release()
        raise


def executing():
    """Is this the main process of a run that executes jobs (not -n, --touch, --dag, --summary,
    --lint, ..., and not a cluster job's step)?"""
    return (workflow.is_main_process and workflow.executor_plugin is not None
            and not workflow.dryrun and not workflow.touch)


def take_results_lock():
    """The results folder's lock for this (main) process, or a WorkflowError naming the run
    that holds it; taken once, held until snakemake ends."""
    try:
        notes = RUN_LOCK.acquire(planned_since=PLANNING_SINCE)
    except RunLockError as e:
        raise WorkflowError(str(e)) from None
    except OSError as e:
        raise WorkflowError(f"cannot lock the results folder {RESULTS}: {e}") from None
    for note in notes:
        logger.warning(f"memrepro: {note}")


def after_last_job():
    """`onsuccess` and `onerror` (also after Ctrl-C): release the results folder."""
    RUN_LOCK.release()


def _prepare_run():
    for c in CELLS:
        if c.cell_id not in PLANNED_HASHES:
            PLANNED_HASHES[c.cell_id] = config_hash(RESOLVER.resolve(c))
    try:
        write_run_plan(RESULTS, CONFIG, {c.cell_id: PLANNED_HASHES[c.cell_id] for c in CELLS},
                       TRACKING_URI, str(Path(workflow.basedir).resolve()))
    except OSError as e:
        raise WorkflowError(f"cannot write {RESULTS}/run-plan.json: {e.strerror}") from None
    if TRACKING_URI:
        proc = subprocess.run(init_tracking_args(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise WorkflowError(f"creating the MLflow store {TRACKING_URI} failed:\n"
                                f"{proc.stdout[-3000:]}")


# Where results are mirrored is not part of what a cell computes: it travels to the jobs in
# the environment, not in params, so pointing MLflow elsewhere reruns nothing.
# `envvars` also hands them on to jobs of distributed executors (Slurm).
os.environ["MEMREPRO_TRACKING"] = "on" if TRACKING_URI else "off"
os.environ["MLFLOW_TRACKING_URI"] = TRACKING_URI
os.environ["MEMREPRO_ARTIFACT_ROOT"] = (
    os.path.abspath(f"{RESULTS}/mlartifacts") if TRACKING_URI else ""
)


envvars:
    "MEMREPRO_TRACKING",
    "MLFLOW_TRACKING_URI",
    "MEMREPRO_ARTIFACT_ROOT",
