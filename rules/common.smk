# Config -> cell table, path helpers. All logic lives in bench.config; this file only binds it.
import functools
import hashlib
import json
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from bench.config import (
    Cell,
    CellResolver,
    canonical_json,
    cell_dir,
    check_config,
    claims_path,
    dataset_spec,
    plan,
    pretrain_spec,
    ranking_spec,
    tracking_uri,
)
from bench.errors import ConfigError


validate(config, "../config/schema/config.schema.yaml")
try:
    CONFIG = check_config(config)
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
]


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
    """The files a cell reads: its data check, and the pretrained checkpoint and layer ranking
    its resolved config names (made by rules/pretrain.smk, or given by the user)."""
    cfg = RESOLVER.resolve(cell_of(wildcards))
    return [prepared_data(wildcards), *cfg["inputs"].values()]


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


def cell_config_json(wildcards):
    """The resolved cell config: a params value, so a changed setting reruns the cell."""
    return RESOLVER.json(cell_of(wildcards))


def study_config_json(wildcards):
    """The config with only this study: another study's change does not re-aggregate it."""
    return json.dumps({**CONFIG, "studies": {wildcards.study: CONFIG["studies"][wildcards.study]}},
                      sort_keys=True)


@functools.cache
def _results_of(study):
    return [f"{RESULTS}/{c.study}/cells/{c.method}/{c.model}/{c.dataset}/{c.budget}/s{c.seed}"
            "/result.json" for c in CELLS if c.study == study]  # cell_dir, as strings


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
GPU_SLOT = (
    f"python -m bench.slots --lock-dir {RESULTS}/.gpu-slots "
    "--need {resources.gpu} --exclusive-if {resources.gpu_exclusive} --"
)


def init_tracking_command():
    """Create the MLflow store and the studies' experiments once, before any job (`onstart`):
    MLflow's schema migration races when several cells open a brand-new sqlite file at once."""
    studies = " ".join(f"--study {s}" for s in STUDIES)
    return (
        f"python -m bench init-tracking {studies} --tracking-uri '{TRACKING_URI}' "
        f"--results '{RESULTS}' --out '{RESULTS}/.tracking.json'"
    )


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
