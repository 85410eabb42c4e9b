"""MLflow mirroring: a store made from nothing, 8 cells writing at once, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.config import ROOT, Cell, resolve_cell
from bench.tracking import Tracker, flatten, init_store
from tests.conftest import tiny_config


def test_flatten_makes_dotted_string_params():
    assert flatten({"train": {"lr": 0.1, "steps": [1, 2]}, "x": None}) == {
        "train.lr": "0.1", "train.steps": "[1, 2]", "x": "null"}


def test_eight_concurrent_cells_lose_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "store" / "mlflow.db"
    assert not db.exists()
    uri = f"sqlite:///{db}"
    cfg = tiny_config(tmp_path, seeds=4, epochs=3, methods=["sgd", "plain"],
                      variants={"plain": {"method": "sgd", "options": {"momentum": 0.0}}})
    init_store(uri, ["t"], tmp_path / "artifacts")  # what the workflow's first rule does
    procs = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for method in ("sgd", "plain"):
        for seed in range(4):
            cell = Cell("t", method, "resnet18_cifar", "synthetic", "none", seed)
            path = tmp_path / f"{method}{seed}.json"
            path.write_text(json.dumps(resolve_cell(cfg, cell)))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench", "train", "--cell", f"@{path}",
                 "--out", str(tmp_path / "out" / f"{method}{seed}" / "result.json"),
                 "--tracking-uri", uri, "--artifact-root", str(tmp_path / "artifacts")],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 8
    assert len({r.data.tags["cell_id"] for r in runs}) == 8
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["train.lr"] == "0.05"
        for key in ("val_acc", "val_loss", "train_loss", "modelled_peak_mib"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == [0, 1, 2], (run.data.tags["cell_id"], key, steps)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"result.json", "config.json"} <= artifacts
    # results point at their runs
    for method in ("sgd", "plain"):
        for seed in range(4):
            res = json.loads((tmp_path / "out" / f"{method}{seed}" / "result.json").read_text())
            assert res["mlflow"]["run_id"] in {r.info.run_id for r in runs}


def test_get_or_create_finds_the_same_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    init_store(uri, ["s"], tmp_path / "a")
    tracker = Tracker(uri, tmp_path / "a")
    _, first = tracker.start_cell("s", "s/m/x/d/none/s0", {}, {"a": 1})
    _, again = tracker.start_cell("s", "s/m/x/d/none/s0", {}, {"a": 1})
    _, other = tracker.start_cell("s", "s/m/x/d/none/s1", {}, {"a": 1})
    assert first == again != other
    tracker.log_epochs(first, [{"epoch": 0, "val_acc": 0.5}, {"epoch": 1, "val_acc": 0.6}])
    tracker.log_epochs(first, [{"epoch": 1, "val_acc": 0.6}, {"epoch": 2, "val_acc": 0.7}],
                       skip_logged=True)
    steps = [m.step for m in tracker.client.get_metric_history(first, "val_acc")]
    assert sorted(steps) == [0, 1, 2]
