"""The fault-injection suite (bench.faults): every registered fault, staged for real.

A fault this machine cannot stage (Slurm not up, not root) is skipped with the reason; the
Slurm faults run in scripts/cluster/test.sh, which brings a cluster up first.
"""

from __future__ import annotations

import json

import pytest

from bench.faults import FAULTS, missing_needs, run_faults, table

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_is_survived_without_losing_or_duplicating_results(name, tmp_path):
    why = missing_needs(FAULTS[name])
    if why:
        pytest.skip(why)
    (report,) = run_faults([name], workdir=tmp_path)
    print(table([report]))
    outcome = report.outcome
    assert outcome is not None
    assert outcome.survived, outcome.observed
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome.observed


def test_table_lists_unstaged_faults_with_their_reason():
    from bench.faults import Report

    f = FAULTS["scancel_job"]
    text = table([Report(f, None, 0.0, "needs a Slurm cluster")], markdown=True)
    assert "scancel_job" in text and "not staged: needs a Slurm cluster" in text
    assert text.splitlines()[0].startswith("| fault | injected | expected |")


def test_verify_counts_what_was_lost_and_what_was_duplicated(tmp_path):
    """The checker the faults rely on must see a missing result, a second run for a cell and
    an epoch logged twice (a checker that cannot fail would make every fault 'survived')."""
    from bench.faults import tiny_config
    from bench.tracking import Tracker, init_store
    from bench.train import run_cell
    from bench.verify import verify_run

    cfg = tiny_config(tmp_path, {"seeds": 2, "epochs": 2})
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    init_store(uri, [], tmp_path / "art")
    from bench.config import cell_dir, plan, resolve_cell

    tracker = Tracker(uri, tmp_path / "art")
    outs = []
    for cell in plan(cfg):
        out = cell_dir(cfg["results"], cell) / "result.json"
        run_cell(resolve_cell(cfg, cell), out, tracker=tracker)
        outs.append(out)
    clean = verify_run(cfg, tables=False, report=False, uri=uri)
    assert clean.ok and clean.results == 2 and clean.runs == 2, clean.summary()

    first = json.loads(outs[0].read_text())
    tracker.client.log_metric(first["mlflow"]["run_id"], "val_acc", 0.5, step=1)  # twice
    second = json.loads(outs[1].read_text())
    tracker.client.create_run(tracker.experiment_id(second["axes"]["study"]), tags={
        "cell_id": second["cell_id"], "config_hash": second["config_hash"]})
    outs[1].unlink()
    v = verify_run(cfg, tables=False, report=False, uri=uri)
    assert not v.ok
    assert v.lost == 1 and v.duplicated == 2, v.summary()
    assert "no result.json" in v.summary() and "logged twice [1]" in v.summary()


def test_a_second_copy_of_a_running_cell_waits_and_reuses_its_result(tmp_path):
    """What a rerun after `snakemake` was SIGKILLed meets: the orphaned first copy still holds
    the cell. The second copy must wait, then take the finished result instead of training
    (and logging) the cell a second time."""
    import fcntl
    import subprocess
    import sys
    import time

    from bench.config import ROOT, cell_dir, config_hash, plan, resolve_cell
    from bench.faults import tiny_config, wait_for_line

    cfg = tiny_config(tmp_path)
    (cell,) = plan(cfg)
    resolved = resolve_cell(cfg, cell)
    out = cell_dir(cfg["results"], cell) / "result.json"
    out.parent.mkdir(parents=True)
    (tmp_path / "cell.json").write_text(json.dumps(resolved))
    with open(out.parent / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the orphan's lock
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "train", "--cell", f"@{tmp_path / 'cell.json'}",
             "--out", str(out)], cwd=ROOT, env={**__import__("os").environ,
                                                "MEMREPRO_TRACKING": "off"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        waiting = wait_for_line(proc, "another process is running this cell", timeout=180)
        time.sleep(2)
        assert proc.poll() is None, "the second copy must wait for the first"
        out.write_text(json.dumps({"cell_id": cell.cell_id, "status": "ok",
                                   "config_hash": config_hash(resolved)}))  # orphan finishes
    log, _ = proc.communicate(timeout=120)
    log = "".join(waiting) + log
    assert proc.returncode == 0, log
    assert "finished by another process" in log and "epoch 1/" not in log


def test_verify_from_another_clone_finds_nothing_lost_in_mlflow(tmp_path):
    """A tracked run verified with another clone's config (here: another learning rate, so
    other config hashes, as other code would give): its results are stale for that config,
    said once each with the reason, never also counted as lost MLflow runs; judged by the
    folder's own record (`verify --results`), the run is clean."""
    from bench.config import cell_dir, config_hash, plan, resolve_cell
    from bench.faults import tiny_config
    from bench.tracking import Tracker, init_store
    from bench.train import run_cell
    from bench.verify import verify_folder, verify_run, write_run_plan

    cfg = tiny_config(tmp_path, {"seeds": 1, "epochs": 1})
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    init_store(uri, [], tmp_path / "art")
    tracker = Tracker(uri, tmp_path / "art")
    for cell in plan(cfg):
        run_cell(resolve_cell(cfg, cell), cell_dir(cfg["results"], cell) / "result.json",
                 tracker=tracker)
    write_run_plan(cfg["results"], cfg, {c.cell_id: config_hash(resolve_cell(cfg, c))
                                         for c in plan(cfg)}, uri, "/the/clone")
    (study,) = cfg["studies"]
    other = tiny_config(tmp_path, {"seeds": 1, "epochs": 1, "train": {
        **cfg["studies"][study]["train"], "lr": 0.01}})
    judged_by_config = verify_run(other, tables=False, report=False, uri=uri)
    assert judged_by_config.lost == 0 and len(judged_by_config.problems) == 1, \
        judged_by_config.summary()
    assert "current for this folder's own last run" in judged_by_config.problems[0]
    own = verify_folder(cfg["results"], other, tables=False, report=False, uri=uri)
    assert own.ok and own.runs == 1, own.summary()
    assert "1 cells it resolves to another config hash" in own.summary()
