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


# ----------------------------------------------------------------------------- MLflow = result.json


def _one_cell(tmp_path, **study):
    """(cfg, resolved cell, result path, uri, tracker) of the tiny study's one cell."""
    from bench.config import cell_dir, plan
    from bench.faults import tiny_config

    cfg = tiny_config(tmp_path, study)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    init_store(uri, list(cfg["studies"]), tmp_path / "art")
    (cell,) = plan(cfg)
    out = cell_dir(cfg["results"], cell) / "result.json"
    return cfg, resolve_cell(cfg, cell), out, uri, Tracker(uri, tmp_path / "art")


def test_a_run_that_logged_epochs_is_continued_only_by_a_resume(tmp_path):
    """Reused: the run the checkpoint names, or a run without metrics (stopped before its first
    epoch ended). A start from scratch beside a run with metrics supersedes that run."""
    from bench.tracking import SUPERSEDED_TAG

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    init_store(uri, ["s"], tmp_path / "a")
    tracker = Tracker(uri, tmp_path / "a")
    cid, tags = "s/m/x/d/none/s0", {"config_hash": "h1"}
    _, empty = tracker.start_cell("s", cid, tags, {})
    _, again = tracker.start_cell("s", cid, tags, {})
    assert again == empty  # nothing logged yet: the same attempt
    tracker.log_epochs(empty, [{"epoch": 0, "val_acc": 0.5}])
    _, resumed = tracker.start_cell("s", cid, tags, {}, resume_run=empty)
    assert resumed == empty
    _, fresh = tracker.start_cell("s", cid, tags, {})  # e.g. the checkpoint was damaged
    assert fresh != empty
    assert tracker.client.get_run(empty).data.tags[SUPERSEDED_TAG] == fresh
    assert tracker.client.get_run(empty).info.status == "KILLED"  # it was left RUNNING
    assert tracker.find_run(tracker.experiment_id("s"), cid, "h1") == fresh
    _, other_config = tracker.start_cell("s", cid, {"config_hash": "h2"}, {})
    assert other_config not in (empty, fresh)
    assert SUPERSEDED_TAG not in tracker.client.get_run(fresh).data.tags  # another config


def test_retrain_of_a_finished_cell_logs_a_new_run_equal_to_the_new_result(tmp_path):
    """`-R train` after a code change: same config hash, other values (here: 2 threads on
    CPU). The old code reused the finished run and dropped the new epochs."""
    import torch

    from bench.tracking import SUPERSEDED_TAG
    from bench.train import run_cell
    from bench.verify import verify_run

    cfg, resolved, out, uri, tracker = _one_cell(tmp_path)
    first = run_cell(resolved, out, tracker=tracker)
    out.unlink()
    try:
        second = run_cell(resolved, out, tracker=tracker, threads=2)
    finally:
        torch.set_num_threads(1)
    old, new = first["mlflow"]["run_id"], second["mlflow"]["run_id"]
    assert old != new
    assert tracker.client.get_run(old).data.tags[SUPERSEDED_TAG] == new
    logged = [m.value for m in sorted(tracker.client.get_metric_history(new, "val_loss"),
                                      key=lambda m: m.step)]
    assert logged == [e["val_loss"] for e in second["history"]]
    v = verify_run(cfg, tables=False, report=False, uri=uri)
    assert v.ok and v.runs == 1 and v.superseded_runs == 1, v.summary()


def test_a_resume_under_other_threads_starts_over(tmp_path, monkeypatch):
    """A checkpoint records threads and device; a session with others trains from scratch
    (and gets a new run), one with the same resumes."""
    import torch

    from bench import train
    from bench.tracking import SUPERSEDED_TAG
    from bench.verify import verify_run

    cfg, resolved, out, uri, tracker = _one_cell(tmp_path)
    monkeypatch.setattr(train.Checkpoint, "remove", lambda self: None)  # keep the last one
    first = train.run_cell(resolved, out, tracker=tracker)
    out.unlink()
    same = train.run_cell(resolved, out, tracker=tracker)
    assert same["provenance"]["resumed_from_epoch"] == 2  # resumed after its last epoch
    assert same["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    out.unlink()
    try:
        other = train.run_cell(resolved, out, tracker=tracker, threads=2)
    finally:
        torch.set_num_threads(1)
    assert other["provenance"]["resumed_from_epoch"] is None
    assert other["provenance"]["threads"] == 2 and len(other["history"]) == 2
    assert other["mlflow"]["run_id"] != first["mlflow"]["run_id"]
    old = tracker.client.get_run(first["mlflow"]["run_id"])
    assert old.data.tags[SUPERSEDED_TAG] == other["mlflow"]["run_id"]
    (out.parent / "checkpoint.pt").unlink()
    v = verify_run(cfg, tables=False, report=False, uri=uri)
    assert v.ok, v.summary()
    # threads are not hashed, but a result computed with other settings is stale to verify
    stale = verify_run({**cfg, "threads": 4}, tables=False, report=False, tracking=False)
    assert "result was computed with threads 1, the config now says 4" in stale.summary()


def test_final_values_are_the_latest_metrics_and_logged_after_the_epochs_where_they_differ(
        tmp_path):
    """NeuroFlux's shape: per-epoch val_acc is the last block's head, the final val_acc the
    exit model's (what the report uses). Final-only values (acc_at_r*, param_reduction, ...)
    and the memory/compute/timing sections are metrics too; strings are tags."""
    from bench.tracking import after_training_metrics
    from bench.verify import Verdict, compare_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    init_store(uri, ["s"], tmp_path / "a")
    tracker = Tracker(uri, tmp_path / "a")
    _, run_id = tracker.start_cell("s", "s/nf/x/d/8MiB/s0", {}, {})
    history = [{"epoch": 0, "phase": "block1", "val_acc": 0.1, "val_loss": 2.0, "lr": None},
               {"epoch": 1, "phase": "block2", "val_acc": 0.2, "val_loss": 1.5, "lr": None}]
    result = {"cell_id": "s/nf/x/d/8MiB/s0", "history": history,
              "final": {"val_acc": 0.5, "val_loss": 1.5, "exit_val_acc": 0.5, "epochs": 3,
                        "param_reduction": 3.25, "inference_throughput_gain": 1.7,
                        "acc_at_r0.5": 0.4, "exit_unit_name": "conv3", "profile_warning": None},
              "memory": {"param_mib": 1.5, "peak_alloc_mib": None}, "timing": {"total_s": 9.0}}
    extra = after_training_metrics(result)
    assert extra == {"val_acc": (2, 0.5), "exit_val_acc": (2, 0.5), "epochs": (2, 3.0),
                     "param_reduction": (2, 3.25), "inference_throughput_gain": (2, 1.7),
                     "acc_at_r0.5": (2, 0.4), "memory/param_mib": (2, 1.5),
                     "timing/total_s": (2, 9.0)}  # val_loss: the curve already ends on it
    tracker.log_epochs(run_id, history)
    tracker.log_result(run_id, result)
    tracker.log_result(run_id, result)  # a retried close: nothing logged twice
    run = tracker.client.get_run(run_id)
    assert run.data.metrics["val_acc"] == 0.5 and run.data.metrics["val_loss"] == 1.5
    assert run.data.metrics["param_reduction"] == 3.25
    assert run.data.tags["final.exit_unit_name"] == "conv3"
    steps = sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, "val_acc"))
    assert steps == [(0, 0.1), (1, 0.2), (2, 0.5)]
    v = Verdict()
    compare_run(tracker.client, run, result, v)
    assert v.ok, v.problems


def test_verify_flags_mlflow_values_that_are_not_the_results(tmp_path):
    """What the old retrain produced (a run holding another training's values) and any stray
    metric: every logged metric is compared with result.json, step by step."""
    from bench.train import run_cell
    from bench.verify import verify_run

    cfg, resolved, out, uri, tracker = _one_cell(tmp_path)
    result = run_cell(resolved, out, tracker=tracker)
    run_id = result["mlflow"]["run_id"]
    assert verify_run(cfg, tables=False, report=False, uri=uri).ok
    tracker.client.log_metric(run_id, "stray", 1.0, step=0)
    tracker.client.log_metric(run_id, "val_acc", 0.123, step=2)  # a final that is not the result's
    v = verify_run(cfg, tables=False, report=False, uri=uri)
    text = v.summary()
    assert not v.ok and v.differing >= 3, text
    assert "metric stray differs from result.json (step 0: 1.0 vs absent)" in text
    assert "shows val_acc = 0.123" in text
