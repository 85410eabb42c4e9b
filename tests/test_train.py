"""A cell: result file, resume after SIGKILL, divergence, out-of-memory, skip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.config import ROOT, config_hash
from bench.methods import METHODS
from bench.methods.base import Method
from bench.train import Checkpoint, lr_factor, run_cell
from tests.conftest import tiny_cell

METRIC_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "activation_mib")


def test_result_has_axes_history_memory_compute_and_provenance(tmp_path):
    cfg = tiny_cell(tmp_path)
    result = run_cell(cfg, tmp_path / "cell" / "result.json")
    assert result["status"] == "ok" and result["reason"] is None
    assert result["axes"] == {"study": "t", "method": "sgd", "model": "resnet18_cifar",
                              "dataset": "synthetic", "budget": "none", "seed": 0}
    assert result["config_hash"] == config_hash(cfg)
    assert len(result["history"]) == 2
    assert result["final"]["val_acc"] == result["history"][-1]["val_acc"]
    assert result["memory"]["activation_mib"] > 0
    assert result["memory"]["peak_alloc_mib"] is None  # CPU: no accelerator peak
    assert result["timing"]["train_images_per_s"] > 0
    prov = result["provenance"]
    assert prov["torch"] and prov["host"] and prov["device"] == "cpu"
    assert prov["git_sha"] is None or len(prov["git_sha"]) == 40


def test_same_seed_same_result(tmp_path):
    a = run_cell(tiny_cell(tmp_path), tmp_path / "a" / "result.json")
    b = run_cell(tiny_cell(tmp_path), tmp_path / "b" / "result.json")
    strip = lambda h: [{k: e[k] for k in METRIC_KEYS} for e in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def _train_proc(cfg_path, out, uri):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "train", "--cell", f"@{cfg_path}", "--out", str(out),
         "--tracking-uri", uri, "--threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_then_resume_matches_uninterrupted_run_and_reuses_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from bench.tracking import init_store

    cfg = tiny_cell(tmp_path, epochs=5,
                    data_options={"synthetic": {"n_train": 1024, "n_val": 128, "num_classes": 4}})
    cfg_path = tmp_path / "cell.json"
    cfg_path.write_text(json.dumps(cfg))
    results = {}
    for name in ("straight", "killed"):
        uri = f"sqlite:///{tmp_path / name}.db"
        init_store(uri, ["t"], tmp_path / f"{name}-artifacts")
        out = tmp_path / name / "result.json"
        proc = _train_proc(cfg_path, out, uri)
        if name == "killed":
            ckpt = out.parent / "checkpoint.pt"
            deadline = time.time() + 300
            while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, "the cell finished before it could be killed"
            first = torch_load_epoch(ckpt)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert not out.exists(), "a killed cell left a result.json"
            assert first < cfg["epochs"]
            proc = _train_proc(cfg_path, out, uri)
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, log
        results[name] = json.loads(out.read_text())
        if name == "killed":
            assert "resuming from the checkpoint" in log
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name("t")
            runs = client.search_runs([exp.experiment_id])
            assert len(runs) == 1, "resume created a second MLflow run"
            assert runs[0].info.run_id == results[name]["mlflow"]["run_id"]
            steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_acc")]
            assert sorted(steps) == list(range(cfg["epochs"])), steps
    straight, killed = results["straight"], results["killed"]
    assert killed["provenance"]["resumed_from_epoch"] is not None
    for a, b in zip(straight["history"], killed["history"], strict=True):
        assert {k: a[k] for k in METRIC_KEYS} == {k: b[k] for k in METRIC_KEYS}
    assert straight["final"] == killed["final"]


def torch_load_epoch(path):
    import torch

    for _ in range(100):  # the file appears by rename, so it is complete once it exists
        try:
            return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
        except Exception:  # noqa: BLE001
            time.sleep(0.01)
    raise AssertionError("checkpoint unreadable")


def test_unreadable_checkpoint_restarts_cleanly(tmp_path):
    cfg = tiny_cell(tmp_path)
    out = tmp_path / "c" / "result.json"
    out.parent.mkdir()
    (out.parent / "checkpoint.pt").write_bytes(b"truncated")
    result = run_cell(cfg, out)
    assert result["status"] == "ok" and result["provenance"]["resumed_from_epoch"] is None
    assert Checkpoint(out.parent).load(config_hash(cfg)) is None


def test_nan_loss_gives_diverged(tmp_path):
    cfg = tiny_cell(tmp_path, epochs=3, train={"batch_size": 32, "lr": 1e12, "momentum": 0.9,
                                               "weight_decay": 0.0, "warmup_steps": 1})
    result = run_cell(cfg, tmp_path / "r.json")
    assert result["status"] == "diverged", result["history"]
    assert "epoch" in result["reason"]
    json.loads((tmp_path / "r.json").read_text())  # valid JSON: NaN stored as null


def test_out_of_memory_is_a_result(tmp_path):
    # width 1000: one conv weight of layer1 alone needs ~147 GB, refused at once by the allocator.
    cfg = tiny_cell(tmp_path, model={"width": 1000.0})
    result = run_cell(cfg, tmp_path / "r.json")
    assert result["status"] == "oom"
    assert "memory" in result["reason"]


class _NeverMethod(Method):
    name = "never_for_tests"
    defaults: dict = {}

    def supports(self, cfg):
        return False, "needs a budget axis"


@pytest.fixture
def never_method():
    METHODS._entries["never_for_tests"] = _NeverMethod
    yield
    del METHODS._entries["never_for_tests"]


def test_unsupported_cell_is_skipped_with_reason(tmp_path, never_method):
    cfg = tiny_cell(tmp_path, method="never_for_tests", methods=["sgd", "never_for_tests"])
    result = run_cell(cfg, tmp_path / "r.json")
    assert result["status"] == "skipped" and result["reason"] == "needs a budget axis"


@pytest.mark.parametrize("schedule,progress,expected", [
    ("constant", 3.0, 1.0), ("cosine", 0.0, 1.0), ("cosine", 5.0, 0.5), ("cosine", 10.0, 0.0),
])
def test_lr_schedule(schedule, progress, expected):
    train = {"warmup_epochs": 0, "schedule": schedule, "step_epochs": [], "step_gamma": 0.1}
    assert lr_factor(train, 10, progress) == pytest.approx(expected, abs=1e-9)
    warm = {**train, "warmup_epochs": 2}
    assert lr_factor(warm, 10, 1.0) == pytest.approx(0.5)
    step = {**train, "schedule": "step", "step_epochs": [3, 6]}
    assert lr_factor(step, 10, 6.5) == pytest.approx(0.01)


def _damage_model(state):
    """Right hash, another model's weights (a wider network: every shape differs)."""
    from bench.models import build_model

    state["model"] = build_model("resnet18_cifar", 4, 3, {"width": 0.25}).state_dict()


def _damage_missing_key(state):
    del state["optimizer"]


@pytest.mark.parametrize("damage", [_damage_model, _damage_missing_key],
                         ids=["other_model", "missing_key"])
def test_a_checkpoint_that_loads_but_does_not_fit_is_set_aside_and_the_cell_retrains(
        tmp_path, monkeypatch, capsys, damage):
    """The old code restored it, failed with a traceback, and kept it: every rerun failed."""
    import torch

    from bench import train

    cfg = tiny_cell(tmp_path)
    clean = run_cell(cfg, tmp_path / "clean" / "result.json")
    out = tmp_path / "c" / "result.json"
    with monkeypatch.context() as m:
        m.setattr(train.Checkpoint, "remove", lambda self: None)  # keep the last checkpoint
        run_cell(cfg, out)
    ckpt = out.parent / "checkpoint.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    damage(state)
    torch.save(state, ckpt)
    original = ckpt.read_bytes()
    out.unlink()
    capsys.readouterr()
    result = run_cell(cfg, out)
    log = capsys.readouterr().err
    assert result["status"] == "ok" and result["provenance"]["resumed_from_epoch"] is None
    assert "does not fit the cell" in log and "set aside as checkpoint.damaged-" in log, log
    aside = list(out.parent.glob("checkpoint.damaged-*.pt"))
    assert len(aside) == 1 and aside[0].read_bytes() == original  # kept, renamed
    assert not ckpt.exists()
    strip = lambda h: [{k: e[k] for k in METRIC_KEYS} for e in h]  # noqa: E731
    assert strip(result["history"]) == strip(clean["history"])  # as if never interrupted


def test_an_unreadable_checkpoint_is_kept_under_another_name(tmp_path, capsys):
    cfg = tiny_cell(tmp_path)
    out = tmp_path / "c" / "result.json"
    out.parent.mkdir()
    (out.parent / "checkpoint.pt").write_bytes(b"truncated")
    assert run_cell(cfg, out)["status"] == "ok"
    assert "unreadable" in capsys.readouterr().err
    assert [p.read_bytes() for p in out.parent.glob("checkpoint.damaged-*.pt")] == [b"truncated"]


def test_a_cell_runs_the_configs_threads_not_the_cores_snakemake_granted(tmp_path, monkeypatch,
                                                                          capsys):
    """`threads: 2` under `--cores 1`: Snakemake passes `--threads 1`. The old code ran on 1
    thread and recorded the config's 2 under a hash that holds neither (other val_acc, same
    hash); the cell now runs the config's 2, whatever the grant."""
    import torch

    from bench.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = {**tiny_cell(tmp_path), "threads": 2}
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "cell" / "result.json"
    try:
        assert main(["train", "--cell", f"@{path}", "--out", str(out), "--threads", "1"]) == 0
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(1)
    result = json.loads(out.read_text())
    assert used == 2 and result["provenance"]["threads"] == 2 and result["config"]["threads"] == 2
    assert "runs with the config's threads: 2, not the 1 Snakemake granted" in (
        capsys.readouterr().err)
