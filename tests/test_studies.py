"""The layout contract (docs/design.md, "Layout"): one folder per paper under
bench/studies/, a harness that names no study, studies that import the harness and never each
other, and a new paper added with `bench new-study` that runs and is tested without touching any
file outside its folder and the configs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import studies
from bench.config import ROOT
from bench.newstudy import config_block, write_skeleton
from tests.conftest import run_cli

BENCH = ROOT / "bench"
STUDIES = studies.names()


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _code_words(path: Path) -> set[str]:
    """Every identifier, attribute, import path and string literal of a module, docstrings and
    comments left out (they may cite a study as an example)."""
    tree = ast.parse(path.read_text())
    docs = _docstring_nodes(tree)
    words: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.alias):
            words.update(node.name.split("."))
        elif isinstance(node, ast.ImportFrom) and node.module:
            words.update(node.module.split("."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words.update(node.value.replace("/", " ").replace(".", " ").split())
    return words


def test_the_four_papers_are_study_packages():
    assert {"restwake", "tradyn", "sparsity_regimes", "neuroflux"} <= set(STUDIES)
    for name in STUDIES:
        folder = studies.folder(name)
        for required in ("__init__.py", "README.md", "claims.yaml"):
            assert (folder / required).is_file(), f"{folder} lacks {required}"


@pytest.mark.parametrize("path", sorted(p for p in BENCH.rglob("*.py")
                                        if "studies" not in p.relative_to(BENCH).parts),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_harness_names_no_study(path):
    named = _code_words(path) & set(STUDIES)
    assert not named, f"{path.relative_to(ROOT)} names study {sorted(named)}: move that code " \
                      f"into bench/studies/<study>/ or make it generic"


@pytest.mark.parametrize("name", STUDIES)
def test_a_study_imports_the_harness_never_another_study(name):
    for path in studies.folder(name).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                parts = module.split(".")
                if parts[:2] == ["bench", "studies"] and len(parts) > 2:
                    assert parts[2] == name, f"{path} imports study {parts[2]}"


def test_new_study_refuses_a_bad_name_or_an_existing_folder(tmp_path):
    proc = run_cli("new-study", "Bad-Name", "--dest", str(tmp_path))
    assert proc.returncode == 2 and "lower-case letters" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())
    write_skeleton("tiny_x", tmp_path)
    proc = run_cli("new-study", "tiny_x", "--dest", str(tmp_path))
    assert proc.returncode == 2 and "exists already" in proc.stderr


@pytest.mark.slow
def test_a_new_study_runs_end_to_end_and_is_covered_by_the_registry_tests(tmp_path):
    """`bench new-study` + one config block: the workflow trains, aggregates and reports it, and
    the registry-driven method tests pick its method up, with no file outside its folder and
    the config touched."""
    extra = tmp_path / "studies"
    proc = run_cli("new-study", "tiny_x", "--title", "A throwaway paper", "--dest", str(extra))
    assert proc.returncode == 0, proc.stderr
    assert "tiny_x_method" in proc.stdout
    env = {**os.environ, studies.PATH_ENV: str(extra), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)

    block = yaml.safe_load("studies:\n" + config_block("tiny_x", "A throwaway paper"))
    block["studies"]["tiny_x"].update(seeds=2, epochs=1, data={"image_size": 16},
                                      model={"width": 0.125})
    cfg = {"results": str(tmp_path / "results"), "data_root": str(tmp_path / "data"),
           "device": "cpu", "threads": 1, "tracking": {"enabled": False}, **block}
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run(
        ["snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "2", "--configfile", str(cfg_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = tmp_path / "results"
    assert len(list((results / "tiny_x" / "cells" / "tiny_x_method").rglob("result.json"))) == 2
    assert "tiny_x_method" in (results / "report" / "report.html").read_text()

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_methods.py"), "-k", "tiny_x_method"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
