"""Shared fixtures: small configs built in code, and a way to run the CLI in a subprocess."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import faults
from bench.config import ROOT, Cell, check_config, load_config, resolve_cell

# the same tiny study the fault-injection suite uses
TINY_STUDY: dict[str, Any] = faults.TINY_STUDY


def tiny_config(results: Path, **study_overrides: Any) -> dict[str, Any]:
    """A validated config with one tiny study `t` writing under `results`."""
    study = copy.deepcopy(TINY_STUDY)
    study.update(study_overrides)
    cfg = {"results": str(results), "device": "cpu", "threads": 1,
           "data_root": str(results / "data"), "studies": {"t": study}}
    return check_config(cfg)


def tiny_cell(results: Path, method: str = "sgd", seed: int = 0, **study_overrides: Any
              ) -> dict[str, Any]:
    cfg = tiny_config(results, **study_overrides)
    s = cfg["studies"]["t"]
    return resolve_cell(cfg, Cell("t", method, s["models"][0], s["datasets"][0],
                                  str(s["budgets"][0]), seed))


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def smoke_config() -> dict[str, Any]:
    return check_config(load_config([ROOT / "config" / "smoke.yaml"]))


def aggregate_scripted(tmp_path: Path, study: str, docs: list[dict[str, Any]], budget: str
                       ) -> tuple[dict[str, str], Any]:
    """Scripted result.json documents of `study` through the harness's aggregation with the
    default config's study settings: (verdict by claim id in the group at `budget`, the
    mechanism-check rows). The degenerate-mechanism catalogues of the studies use it."""
    import json

    import pandas as pd

    from bench.aggregate import aggregate_study
    from bench.config import claims_path

    paths = []
    for i, d in enumerate(docs):
        p = tmp_path / "cells" / f"{i}" / "result.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(d))
        paths.append(p)
    cfg = check_config(load_config([ROOT / "config" / "config.yaml"]))
    study_cfg = cfg["studies"][study]
    out = aggregate_study(paths, study_cfg["reference"], study_cfg["metrics"],
                          claims_path(study), tmp_path / "tables", study_cfg)
    claims = pd.read_csv(out["claims"], dtype={"budget": str})
    claims = claims[claims["budget"] == budget]
    return dict(zip(claims["claim_id"], claims["verdict"])), pd.read_csv(out["mechanism_checks"])
