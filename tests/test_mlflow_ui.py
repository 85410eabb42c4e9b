"""What MLflow's UI shows, read back through the client after logging a tiny cell.

MLflow 3's UI opens an experiment on its runs table only when the experiment is tagged as
model training (`mlflow.experimentKind`); its Dataset column comes from the run's dataset
inputs, its Source and Version columns from `mlflow.source.*` tags, the run's name from
`mlflow.runName`, an experiment's description from `mlflow.note.content`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import cell_dir, plan, resolve_cell
from bench.faults import tiny_config
from bench.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    RUN_KIND_TAG,
    Tracker,
    data_digest,
    init_store,
    publish_report,
    publish_study_reports,
)


def _logged_cell(tmp_path: Path):
    from bench.train import run_cell

    cfg = tiny_config(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri, list(cfg["studies"]), tmp_path / "art")
    (cell,) = plan(cfg)
    resolved = resolve_cell(cfg, cell)
    result = run_cell(resolved, cell_dir(cfg["results"], cell) / "result.json",
                      tracker=Tracker(uri, tmp_path / "art"))
    return cfg, cell, resolved, result, uri


def test_a_logged_cell_fills_the_columns_the_ui_shows(tmp_path):
    from mlflow.tracking import MlflowClient

    from bench.data import load_dataset

    _, cell, resolved, result, uri = _logged_cell(tmp_path)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cell.study)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"

    run = client.get_run(result["mlflow"]["run_id"])
    assert run.info.run_name == "sgd · resnet18_cifar · none · s0"
    assert run.data.tags["cell_id"] == cell.cell_id
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    if result["provenance"]["git_sha"]:
        assert tags["mlflow.source.git.commit"] == result["provenance"]["git_sha"]
    assert tags["threads"] == "1" and tags["device"] == "cpu"

    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "synthetic"
    data = load_dataset("synthetic", resolved["data"], Path(resolved["data_root"]))
    assert dataset.digest == data_digest(data)  # of the prepared tensors the cell used
    assert dataset.source_type == "local"
    assert json.loads(dataset.source)["uri"] == str(Path(resolved["data_root"]).resolve())
    assert json.loads(dataset.profile)["train_images"] == len(data.train_y)
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    # the runs table's numbers are the result's
    for key in ("val_acc", "val_loss", "epochs"):
        assert run.data.metrics[key] == result["final"][key]
    assert run.data.metrics["memory/param_mib"] == result["memory"]["param_mib"]


def test_an_experiment_made_by_an_older_harness_gets_the_kind_tag(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("old")  # no tags: the UI would open on GenAI
    init_store(uri, ["old"], tmp_path / "art")
    exp = MlflowClient(uri).get_experiment_by_name("old")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_the_study_summary_run_holds_the_report_figures(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from bench.verify import verify_run

    cfg, cell, _, _, uri = _logged_cell(tmp_path)
    study = cell.study
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    (report / "report.html").write_text("<html>report</html>")
    (report / "figures" / f"{study}_val_acc.png").write_bytes(b"png")
    (report / "figures" / f"{study}_x_val_acc.png").write_bytes(b"png")  # study `<study>_x`
    tables = Path(cfg["results"]) / study / "tables"
    tables.mkdir(parents=True)
    (tables / "summary.csv").write_text("method,val_acc\nsgd,0.5\n")
    studies = {study: cfg["studies"][study], f"{study}_x": {"description": "another"}}

    first = publish_report(uri, studies, report, tables_dir=lambda s: tables)
    # a report rerun, through what the report step calls
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEMREPRO_TRACKING", raising=False)
    both = {**cfg, "studies": studies, "tracking": {"enabled": True, "uri": uri}}
    assert publish_study_reports(both, report) == first  # get-or-create: one run per study
    assert publish_study_reports({**both, "tracking": {"enabled": False}}, report) == {}

    client = MlflowClient(uri)
    run = client.get_run(first[study])
    assert run.data.tags[RUN_KIND_TAG] == "study_summary" and run.info.status == "FINISHED"
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert figures == [f"figures/{study}_val_acc.png"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "report")] == [
        "report/report.html"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "tables")] == [
        "tables/summary.csv"]
    exp = client.get_experiment_by_name(study)
    note = exp.tags[NOTE_TAG]
    assert str((report / "report.html").resolve()) in note and run.info.run_id in note

    # the summary run is not a cell: verify still sees one run per cell, equal to its result
    v = verify_run(cfg, tables=False, report=False, uri=uri)
    assert v.ok and v.runs == 1, v.summary()


def test_cells_starting_together_all_name_their_shared_dataset(tmp_path):
    """MLflow inserts a dataset once per experiment (primary key: experiment, name, digest);
    cells that lose the race to insert it must still log their input."""
    import threading
    from types import SimpleNamespace

    import torch

    from bench.tracking import prepared_dataset

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_store(uri, ["s"], tmp_path / "art")
    splits = SimpleNamespace(
        train_x=torch.zeros(4, 1, 2, 2, dtype=torch.uint8), train_y=torch.zeros(4).long(),
        val_x=torch.ones(2, 1, 2, 2, dtype=torch.uint8), val_y=torch.ones(2).long(),
        num_classes=2)
    dataset = prepared_dataset("tiny", splits, tmp_path)
    trackers = [Tracker(uri, tmp_path / "art") for _ in range(6)]
    runs = [t.start_cell("s", f"s/m/x/tiny/none/s{i}", {}, {})[1] for i, t in enumerate(trackers)]
    errors: list[BaseException] = []

    def log(tracker: Tracker, run_id: str) -> None:
        try:
            tracker.log_dataset(run_id, dataset)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=log, args=pair) for pair in zip(trackers, runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for run_id in runs:
        (given,) = trackers[0].client.get_run(run_id).inputs.dataset_inputs
        assert (given.dataset.name, given.dataset.digest) == ("tiny", data_digest(splits))


# --------------------------------------------------------------------------------------------
# The README's steps in a real browser: `mlflow ui`, then the runs table the report links to
# --------------------------------------------------------------------------------------------


def _readme_mlflow_section() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = text.index("### Browsing the runs in MLflow")
    return text[start:text.index("\n## ", start)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a cell, `mlflow ui` and five page loads: about a minute on 2 cores
def test_readme_mlflow_steps_land_on_the_runs_table_in_a_browser(tmp_path):
    """`mlflow ui` on a store with a logged cell, then the address the README gives (the one
    the report links to) in headless Chromium: MLflow 3's runs table with the cell's run, not
    the GenAI overview of a bare experiment address; the report's per-method link filters it."""
    import os
    import re
    import signal
    import subprocess
    import time
    import urllib.request

    from mlflow.tracking import MlflowClient

    from bench import report
    from tests.test_report_browser import _run_chromium, chromium

    chromium()  # skips without a browser (fails under CI=true)
    section = _readme_mlflow_section()
    step = "http://127.0.0.1:5000/#/experiments/<N>/runs"
    assert "mlflow ui --backend-store-uri sqlite:///results/mlflow.db" in section
    assert step in section
    for column in ("val_acc", "val_loss", "**Columns**"):  # which metric columns to add
        assert column in section

    _, cell, _, result, uri = _logged_cell(tmp_path)
    port = _free_port()
    log = (tmp_path / "mlflow-ui.log").open("w")
    server = subprocess.Popen(
        ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "mlflow-ui.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow ui did not answer in 120 s"
            time.sleep(1)
        exp_id = MlflowClient(uri).get_experiment_by_name(cell.study).experiment_id
        links = report.mlflow_links(cell.study, uri, ui=base)
        # the report's link is the README's address, on this port
        assert links.runs == step.replace("http://127.0.0.1:5000", base).replace(
            "<N>", exp_id)
        run_name = MlflowClient(uri).get_run(result["mlflow"]["run_id"]).info.run_name

        def page(url: str) -> str:
            """The page's text as Chromium lays it out (tags dropped)."""
            return " ".join(re.sub(r"<[^>]+>", " ", _run_chromium("--dump-dom", url)).split())

        runs = page(links.runs)
        assert run_name in runs, "the runs table does not list the cell's run"
        assert re.search(r"\b1 matching run\b", runs) and "Training runs" in runs
        bare = page(f"{base}/#/experiments/{exp_id}")  # why the README insists on /runs
        assert run_name not in bare
        assert run_name in page(links.method_runs("sgd"))
        assert re.search(r"\b0 matching runs\b", page(links.method_runs("no_such_method")))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
