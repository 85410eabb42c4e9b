"""A real MLflow tracking server that is down when a cell starts, or goes away mid-run.

The issue: "a tracking server that is down when a cell starts and comes back: the cell still
writes its result and syncs the run later, or fails clearly - never a silent gap".

One `mlflow server` (sqlite backend, one worker) serves the whole module; each test uses its
own cell (seed index), so "one run per cell" is checked per `cell_id` tag, and no cell may
have two runs anywhere in the experiment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from bench.config import ROOT
from tests.conftest import tiny_cell

pytestmark = pytest.mark.slow

METRICS = ("train_loss", "val_loss", "val_acc", "modelled_peak_mib")
# about 1 s per epoch on one CPU thread: long enough to stop the server between two epochs
SLOW_DATA = {"synthetic": {"n_train": 2048, "n_val": 64, "num_classes": 4}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` in its own process group, started and stopped on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / "server.log"
        self.initialised = False

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{self.root / 'm.db'}",
             "--artifacts-destination", str(self.root / "art"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_up(self, timeout: float = 150) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")

    def ensure_up(self) -> None:
        if self.proc is None:
            self.start()
        self.wait_up()
        if not self.initialised:  # once, before any cell: what the workflow's onstart does
            from bench.tracking import init_store

            init_store(self.uri, ["t"], None)
            self.initialised = True

    def stop(self, kill: bool = False) -> None:
        """Stop the whole process group (SIGKILL: a crash, at once; SIGTERM: a shutdown)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    saved = dict(os.environ)
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    yield srv
    srv.stop()
    os.environ.clear()  # Tracker sets MLflow's HTTP retry defaults in this process
    os.environ.update(saved)


class Cell:
    """`python -m bench train` in a subprocess, its output collected line by line."""

    def __init__(self, cfg_path: Path, out: Path, uri: str, wait_s: float) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMREPRO_TRACKING_WAIT_S": str(wait_s)}
        for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT", "MEMREPRO_TRACKING", "MLFLOW_TRACKING_URI"):
            env.pop(key, None)  # the cell's own defaults are under test
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "train", "--cell", f"@{cfg_path}", "--out", str(out),
             "--tracking-uri", uri, "--threads", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in list(self.lines)):
                return
            assert self.proc.poll() is None or self.reader.is_alive(), (
                f"the cell ended before printing {text!r}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output}")

    def finish(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc


def _cell(tmp_path: Path, seed: int, epochs: int, slow: bool = False) -> tuple[dict, Path]:
    extra = {"data_options": SLOW_DATA} if slow else {}
    cfg = tiny_cell(tmp_path, seed=seed, seeds=4, epochs=epochs, **extra)
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(cfg))
    return cfg, path


def _cell_id(cfg: dict) -> str:
    from bench.config import Cell as CellId

    return CellId(cfg["study"], cfg["method"], cfg["model"], cfg["dataset"], cfg["budget"],
                  cfg["seed_index"]).cell_id


def _check_store(uri: str, cfg: dict, result: dict) -> None:
    """One FINISHED run for the cell, every epoch's metrics exactly once, no duplicate runs,
    and every value the result's (after an outage too)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    cell_ids = [r.data.tags["cell_id"] for r in runs]
    assert len(cell_ids) == len(set(cell_ids)), f"a cell has two runs: {cell_ids}"
    mine = [r for r in runs if r.data.tags["cell_id"] == _cell_id(cfg)]
    assert len(mine) == 1, cell_ids
    run = mine[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["status"] == "ok"
    assert run.info.run_id == result["mlflow"]["run_id"]
    for key in METRICS:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(cfg["epochs"])), (key, steps)
    assert {"result.json", "config.json"} <= {a.path for a in client.list_artifacts(
        run.info.run_id)}
    from bench.verify import Verdict, compare_run

    v = Verdict()
    compare_run(client, run, result, v)  # every metric at every step is the result's
    assert v.ok, v.problems


def _epoch_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("epoch ")]


def test_wait_prints_progress_and_http_defaults_keep_what_the_user_set(monkeypatch, capsys):
    from bench import tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    monkeypatch.setattr(tracking, "WAIT_PROGRESS_EVERY_S", 1.0)
    dead = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="unreachable after 3 s") as info:
        tracking.Tracker(dead, wait_s=3)
    assert time.monotonic() - start < 10
    assert "MEMREPRO_TRACKING=off" in str(info.value)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"  # the user's value stays
    err = capsys.readouterr().err
    assert "does not answer; waiting up to 3 s" in err
    assert err.count("still waiting") >= 2, err
    monkeypatch.setenv("MEMREPRO_TRACKING_WAIT_S", "soon")
    with pytest.raises(tracking.TrackingError, match="MEMREPRO_TRACKING_WAIT_S"):
        tracking.Tracker(dead)


def test_server_that_never_comes_up_fails_clearly_before_training(tmp_path, server):
    cfg, cfg_path = _cell(tmp_path, seed=0, epochs=3)
    out = tmp_path / "cell" / "result.json"
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    cell = Cell(cfg_path, out, dead, wait_s=5)
    rc = cell.finish(timeout=60)
    elapsed = time.time() - cell.started
    assert rc != 0, cell.output
    assert elapsed < 30, elapsed
    assert re.search(rf"the MLflow tracking server at {dead} is unreachable after [5-9] s",
                     cell.output), cell.output
    assert "MEMREPRO_TRACKING=off" in cell.output and "Cluster run" in cell.output
    assert "Traceback" not in cell.output
    assert not out.exists()
    assert not (out.parent / "checkpoint.pt").exists()  # nothing trained
    assert not _epoch_lines(cell.output)


def test_server_down_at_start_then_up_the_cell_waits_and_runs(tmp_path, server):
    server.stop()
    cfg, cfg_path = _cell(tmp_path, seed=1, epochs=3)
    out = tmp_path / "cell" / "result.json"
    cell = Cell(cfg_path, out, server.uri, wait_s=120)
    cell.wait_for("does not answer; waiting up to")
    time.sleep(5)
    server.start()  # takes a while by itself: the cell keeps waiting
    rc = cell.finish()
    assert rc == 0, cell.output
    assert "answers again" in cell.output
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and len(result["history"]) == 3
    assert result["mlflow"]["synced"] is True
    assert not (out.parent / "checkpoint.pt").exists()
    server.ensure_up()
    _check_store(server.uri, cfg, result)


def test_server_lost_mid_run_and_back_before_the_end_wait_expires(tmp_path, server):
    server.ensure_up()
    cfg, cfg_path = _cell(tmp_path, seed=2, epochs=6, slow=True)
    out = tmp_path / "cell" / "result.json"
    cell = Cell(cfg_path, out, server.uri, wait_s=120)
    cell.wait_for("epoch 1/6")
    server.stop(kill=True)
    # training goes on without the server, then waits for it before writing the result
    cell.wait_for("could not log epoch")
    cell.wait_for("does not answer; waiting up to")
    assert len(_epoch_lines(cell.output)) == 6, cell.output
    assert not out.exists()
    server.start()
    rc = cell.finish()
    assert rc == 0, cell.output
    assert "MLflow run synced" in cell.output
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and len(result["history"]) == 6
    assert result["mlflow"]["synced"] is True
    assert not (out.parent / "checkpoint.pt").exists()
    server.ensure_up()
    _check_store(server.uri, cfg, result)


def test_server_down_at_the_end_fails_clearly_and_a_rerun_only_syncs(tmp_path, server):
    import torch

    server.ensure_up()
    cfg, cfg_path = _cell(tmp_path, seed=3, epochs=6, slow=True)
    out = tmp_path / "cell" / "result.json"
    ckpt = out.parent / "checkpoint.pt"
    cell = Cell(cfg_path, out, server.uri, wait_s=5)
    cell.wait_for("epoch 1/6")
    server.stop(kill=True)
    rc = cell.finish(timeout=120)
    assert rc != 0, cell.output
    assert len(_epoch_lines(cell.output)) == 6, cell.output
    assert f"the MLflow tracking server at {server.uri} is unreachable after" in cell.output
    assert "is finished" in cell.output and "checkpoint.pt" in cell.output
    assert "Traceback" not in cell.output
    assert not out.exists(), "a result.json without its MLflow run"
    assert not list(out.parent.glob(".*staged*"))
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 6

    server.start()
    rerun = Cell(cfg_path, out, server.uri, wait_s=120)
    rc = rerun.finish()
    assert rc == 0, rerun.output
    assert "resuming from the checkpoint after epoch 6 of 6" in rerun.output
    assert not _epoch_lines(rerun.output), "an epoch was trained again"
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and len(result["history"]) == 6
    assert result["provenance"]["resumed_from_epoch"] == 6
    assert result["mlflow"]["synced"] is True
    assert not ckpt.exists()
    server.ensure_up()
    _check_store(server.uri, cfg, result)
