# Config -> cell table, path helpers. All logic lives in bench.config; this file only binds it.
import json

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from bench.config import (
    Cell,
    cell_dir,
    check_config,
    claims_path,
    config_hash,
    plan,
    resolve_cell,
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
STUDIES = list(CONFIG["studies"])
DATASETS = sorted({d for s in CONFIG["studies"].values() for d in s["datasets"]})
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
    return json.dumps(resolve_cell(CONFIG, cell_of(wildcards)), sort_keys=True)


def study_results(wildcards):
    return [
        str(cell_dir(RESULTS, c) / "result.json") for c in CELLS if c.study == wildcards.study
    ]


def study_claims(wildcards):
    path = claims_path(wildcards.study)
    return [str(path)] if path.exists() else []


def tracking_args():
    if not TRACKING_URI:
        return ""
    return f"--tracking-uri '{TRACKING_URI}' --artifact-root '{RESULTS}/mlartifacts'"
