"""Nothing from a config or a results folder runs as code: names are checked, every value that
reaches a shell is quoted, and checkpoints are unpickled with `weights_only=True`."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from bench.config import ROOT, check_config
from bench.errors import BenchError, ConfigError
from bench.faults import TINY_STUDY
from bench.methods import METHODS

# Each payload would create a file named pwned* in the shell's working directory if any shell
# ever parsed it. No slashes: a payload may also stand in a single path component.
PAYLOADS = [
    "x$(touch pwned1)",
    "x`touch pwned2`",
    "x; touch pwned3",
    "x' ; touch pwned4 ; '",
    'x" ; touch pwned5 ; "',
    "x && touch pwned6",
    "x|touch pwned7",
    "x\ntouch pwned8",
]


def tiny(**study: object) -> dict:
    s = copy.deepcopy(TINY_STUDY)
    s.update(study)
    return {"device": "cpu", "threads": 1, "studies": {"t": s}}


def pwned(*folders: Path) -> list[str]:
    return [str(p) for d in folders if d.is_dir() for p in d.rglob("pwned*")]


def name_fields(payload: str) -> dict[str, dict]:
    """A config per name field, each with the payload in that field."""
    out = {"study": {"device": "cpu", "studies": {payload: copy.deepcopy(TINY_STUDY)}}}
    out["method"] = tiny(methods=[payload], reference=payload)
    out["reference"] = tiny(reference=payload)
    out["model"] = tiny(models=[payload])
    out["dataset"] = tiny(datasets=[payload], data_options={})
    out["budget"] = tiny(budgets=[payload])
    out["method_budget"] = tiny(method_budgets={"sgd": [payload]})
    out["variant"] = tiny(methods=["sgd", payload], variants={payload: {"method": "sgd"}})
    out["variant_method"] = tiny(methods=["sgd", "v"], variants={"v": {"method": payload}})
    out["pretrain_dataset"] = tiny(pretrain={"dataset": payload, "epochs": 1})
    out["metric"] = tiny(metrics=[payload])
    out["device"] = {**tiny(), "device": payload}
    out["model_options_key"] = tiny(model_options={payload: {}})
    out["data_options_key"] = tiny(data_options={payload: {}})
    out["method_options_key"] = tiny(method_options={payload: {}})
    return out


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_payload_in_any_name_field_is_a_config_error(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for cfg in name_fields(payload).values():
        with pytest.raises(ConfigError):
            check_config(cfg)
    assert not pwned(tmp_path)


@pytest.mark.parametrize("path", ["a{b}", "a\nb", "tab\there", ""])
def test_paths_with_braces_or_control_characters_are_refused(path):
    for key in ("results", "data_root"):
        with pytest.raises(ConfigError, match=key):
            check_config({**tiny(), key: path})


def test_every_templated_shell_value_is_quoted():
    """Each `{...}` in a rule's shell command is quoted (`:q`), and the values baked into the
    command text in rules/common.smk are shell-quoted; the onstart command uses no shell."""
    import re

    blocks = 0
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        text = smk.read_text()
        for block in re.findall(r"shell:\n((?:[ \t]+f?\".*\"\n?)+)", text):
            blocks += 1
            for line in block.splitlines():
                if line.strip().startswith('f"'):
                    continue  # Python's own substitution (GPU_SLOT), quoted where it is built
                for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", line):
                    assert field.endswith(":q"), f"{smk.name}: unquoted {{{field}}} in {line}"
    assert blocks >= 6
    common = (ROOT / "rules" / "common.smk").read_text()
    assert "--lock-dir {shlex.quote(GPU_SLOTS_DIR)}" in common
    assert "shell(" not in (ROOT / "Snakefile").read_text() + common


@pytest.mark.slow
def test_payload_paths_run_end_to_end_and_execute_nothing(tmp_path):
    """A results folder, data_root and tracking URI full of shell syntax, quotes and Unicode:
    the whole workflow (onstart tracking, data, a cell, aggregate, report) runs, writes where it
    was told and runs none of it."""
    study = {**copy.deepcopy(TINY_STUDY), "epochs": 1}
    results = "res $(touch pwned1) `touch pwned2` ; touch pwned3 ' \" ü 結果"
    uri = f"sqlite:///{tmp_path}/db $(touch pwned5) ` ;.db"
    cfg = {"results": results, "data_root": "data ' $(touch pwned4)", "device": "cpu",
           "threads": 1, "tracking": {"enabled": True, "uri": uri}, "studies": {"t": study}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        ["snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "c.yaml"), "--cores", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = tmp_path / results
    assert (out / "report" / "report.html").is_file()
    result = json.loads((out / "t" / "cells" / "sgd" / "resnet18_cifar" / "synthetic" / "none"
                         / "s0" / "result.json").read_text())
    assert result["status"] == "ok" and result["mlflow"]["run_id"]
    assert result["mlflow"]["tracking_uri"] == uri
    assert not pwned(tmp_path, ROOT), "a payload ran"


# ----------------------------------------------------------------------------- checkpoints


class _Plant:
    """Unpickling this creates the file `path` (what a planted checkpoint could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_planted_checkpoint_is_refused_without_running_code(tmp_path, capsys):
    from bench.config import config_hash
    from bench.train import Checkpoint

    marker = tmp_path / "pwned"
    ckpt = Checkpoint(tmp_path)
    torch.save({"config_hash": "abc", "epoch": 1, "payload": _Plant(marker)}, ckpt.path)
    assert ckpt.load("abc") is None
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert "refused" in capsys.readouterr().err
    # ... and a cell finding it starts from scratch, overwriting it
    from tests.conftest import tiny_cell

    cfg = tiny_cell(tmp_path / "r", epochs=1)
    from bench.train import run_cell

    out = tmp_path / "cell" / "result.json"
    out.parent.mkdir()
    torch.save({"config_hash": config_hash(cfg), "payload": _Plant(marker)},
               out.parent / "checkpoint.pt")
    result = run_cell(cfg, out, tracker=None)
    assert result["status"] == "ok" and result["provenance"]["resumed_from_epoch"] is None
    assert not marker.exists()


def test_a_planted_pretrained_backbone_is_refused(tmp_path):
    from bench.models import build_model
    from bench.pretrain import load_backbone

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"payload": _Plant(marker)}, path)
    with pytest.raises(BenchError, match="cannot be read"):
        load_backbone(build_model("resnet18_cifar", 4, 3, {"width": 0.125}), str(path))
    assert not marker.exists()


def test_a_planted_pretrain_checkpoint_is_refused_by_validate_without_running_code(tmp_path):
    """A study's own `pretrain.checkpoint` is read at validation (before any job): weights
    only, so a planted file is a clear config error and runs nothing."""
    marker = tmp_path / "pwned"
    path = tmp_path / "backbone.pt"
    torch.save({"payload": _Plant(marker)}, path)
    with pytest.raises(ConfigError, match="cannot be read as a checkpoint of weights"):
        check_config(tiny(pretrain={"checkpoint": str(path)}))
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_real_checkpoints_of_every_method_load_weights_only_and_metrics_are_declared(name, tmp_path, monkeypatch):
    """Registry-driven: a checkpoint each method writes mid-run loads with weights_only=True
    and resumes (a method whose state needs more than tensors and plain data fails here)."""
    from bench.config import config_hash
    from bench.train import Checkpoint, run_cell
    from tests.conftest import tiny_cell

    cls = METHODS.get(name)
    study = {"methods": sorted({name, cls.test_study.get("reference", "sgd")}),
             "reference": "sgd", **cls.test_study}
    cfg = tiny_cell(tmp_path, method=name, **study)
    monkeypatch.setattr(Checkpoint, "remove", lambda self: None)  # keep the last one
    out = tmp_path / "cell" / "result.json"
    result = run_cell(cfg, out, tracker=None)
    if result["status"] == "skipped":
        pytest.skip(result["reason"])
    path = out.parent / "checkpoint.pt"
    assert path.is_file(), "no checkpoint was written"
    torch.load(path, map_location="cpu", weights_only=True)
    state = Checkpoint(out.parent).load(config_hash(cfg))
    assert state is not None and state["epoch"] == cfg["epochs"]
    # the same run: every final metric it reports is one a config may name (`Method.metrics`)
    import fnmatch

    from bench.config import CORE_METRICS

    known = [*CORE_METRICS, *cls.metrics]
    undeclared = [k for k in result["final"] if not any(fnmatch.fnmatchcase(k, p) for p in known)]
    assert not undeclared, f"{name}: declare {undeclared} in {cls.__name__}.metrics"


def test_every_torch_load_of_the_harness_is_weights_only():
    import re

    for py in (ROOT / "bench").rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", py.read_text()):
            assert "weights_only=True" in call, f"{py}: {call}"
