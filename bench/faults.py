"""Fault injection: the faults clusters produce, each done for real, each checked for lost or
duplicated results.

    python -m bench faults                     # every fault this machine can stage; a table
    python -m bench faults --only sigkill_cell disk_full --markdown docs/faults.md

Each fault runs real processes (cells, `snakemake`, `sbatch`/`scancel`, an `mlflow server`) in a
scratch folder of its own, then checks the outcome with `bench.verify`: every finished result is
still there exactly once, and every MLflow run and metric step exists exactly once. A fault
that needs what this machine lacks (root to mount a small file system, a Slurm cluster) is
reported as not staged, with the reason, never as survived.

tests/test_faults.py runs every registered fault; scripts/cluster/test.sh runs the Slurm one.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.config import ROOT, Cell, cell_dir, check_config, plan, resolve_cell
from bench.verify import verify_run

# A study small enough for 32 copies on 2 cores, big enough that an epoch takes a moment.
TINY_STUDY: dict[str, Any] = {
    "description": "tiny study (tests and fault injection)",
    "reference": "sgd",
    "methods": ["sgd"],
    "models": ["resnet18_cifar"],
    "datasets": ["synthetic"],
    "budgets": ["none"],
    "seeds": 1,
    "epochs": 2,
    "train": {"batch_size": 32, "lr": 0.05, "momentum": 0.9, "warmup_steps": 1},
    "data": {"image_size": 16, "augment": True},
    "data_options": {"synthetic": {"n_train": 128, "n_val": 64, "num_classes": 4}},
    "model": {"width": 0.125},
}


@dataclass
class Outcome:
    """What happened: did the harness survive (expected behaviour seen), and what was lost."""

    survived: bool
    observed: str
    lost: int = 0  # finished results missing afterwards
    duplicated: int = 0  # results, MLflow runs or metric steps present more than once


@dataclass
class Fault:
    name: str
    injected: str  # what is done to the harness
    expected: str  # what must happen
    run: Callable[[Path], Outcome]
    needs: tuple[str, ...] = ()  # "root", "slurm", "server"


@dataclass
class Report:
    fault: Fault
    outcome: Outcome | None  # None: not staged
    seconds: float
    skipped: str | None = None


FAULTS: dict[str, Fault] = {}


def fault(name: str, injected: str, expected: str, needs: tuple[str, ...] = ()
          ) -> Callable[[Callable[[Path], Outcome]], Callable[[Path], Outcome]]:
    def add(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        if name in FAULTS:
            raise ValueError(f"fault {name!r} registered twice")
        FAULTS[name] = Fault(name, injected, expected, fn, needs)
        return fn

    return add


def missing_needs(f: Fault) -> str | None:
    """Why this machine cannot stage `f`, or None."""
    for need in f.needs:
        if need == "root" and os.geteuid() != 0:
            return "needs root (it mounts a small file system)"
        if need == "slurm":
            if shutil.which("sbatch") is None:
                return "needs a Slurm cluster (scripts/cluster/slurm_up.sh)"
            ok = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
            if not ok:
                return "Slurm is installed but not answering (scripts/cluster/slurm_up.sh)"
        if need == "server" and not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(
                ("http://", "https://")):
            return ("needs an MLflow server in $MLFLOW_TRACKING_URI "
                    "(scripts/cluster/mlflow_up.sh; the cluster test runs it)")
    return None


def run_faults(names: list[str] | None = None, workdir: Path | None = None,
               progress: Callable[[str], None] = lambda s: None) -> list[Report]:
    reports = []
    for name in names or list(FAULTS):
        if name not in FAULTS:
            raise KeyError(f"unknown fault {name!r}; faults: {', '.join(FAULTS)}")
        f = FAULTS[name]
        why = missing_needs(f)
        if why:
            progress(f"{name}: not staged ({why})")
            reports.append(Report(f, None, 0.0, why))
            continue
        progress(f"{name}: {f.injected} ...")
        work = Path(tempfile.mkdtemp(prefix=f"fault-{name}-", dir=workdir))
        t0 = time.perf_counter()
        try:
            outcome = f.run(work)
        except Exception as e:  # noqa: BLE001 - a crash of the scenario is a failed fault
            outcome = Outcome(False, f"scenario raised {type(e).__name__}: {e}")
        seconds = time.perf_counter() - t0
        progress(f"{name}: {'survived' if outcome.survived else 'NOT survived'} in "
                 f"{seconds:.0f} s: {outcome.observed}")
        reports.append(Report(f, outcome, seconds))
        if outcome.survived:
            shutil.rmtree(work, ignore_errors=True)
    return reports


def table(reports: list[Report], markdown: bool = False) -> str:
    """The fault table: fault, expected, observed, survived, results lost / duplicated."""
    head = ["fault", "injected", "expected", "observed", "survived", "lost", "duplicated", "s"]
    rows = []
    for r in reports:
        if r.outcome is None:
            rows.append([r.fault.name, r.fault.injected, r.fault.expected,
                         f"not staged: {r.skipped}", "-", "-", "-", "-"])
        else:
            o = r.outcome
            rows.append([r.fault.name, r.fault.injected, r.fault.expected, o.observed,
                         "yes" if o.survived else "NO", str(o.lost), str(o.duplicated),
                         f"{r.seconds:.0f}"])
    if markdown:
        esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)
    short = [[row[0], row[4], row[5], row[6], row[7], row[3]] for row in rows]
    h = ["fault", "survived", "lost", "dup", "s", "observed"]
    widths = [max(len(h[i]), *(len(r[i]) for r in short)) for i in range(5)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5]  # noqa: E731
    return "\n".join([fmt(h), fmt(["-" * w for w in widths] + ["-" * 8])] + [fmt(r) for r in short])


# ----------------------------------------------------------------------------- helpers


def study_name(work: Path) -> str:
    """The scratch folder's name as a study name: each fault gets its own MLflow experiment
    even when every fault writes to one tracking server (runs are found again by cell and
    config, and the faults' tiny cells share both)."""
    return re.sub(r"[^a-z0-9_]", "_", work.name.lower())


def tiny_config(work: Path, study: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A checked config with one study (named after `work`) writing under `work/results`."""
    s = copy.deepcopy(TINY_STUDY)
    s.update(study or {})
    cfg = {"results": str(work / "results"), "data_root": str(work / "data"), "device": "cpu",
           "threads": 1, "studies": {study_name(work): s}, **top}
    return check_config(cfg)


def write_config(work: Path, cfg: dict[str, Any]) -> Path:
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    return env


def store_uri(work: Path) -> str:
    """The store faults write to: $MLFLOW_TRACKING_URI (the cluster test's server), else a
    fresh sqlite file initialised once, as the workflow does before its fan-out."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'mlflow.db'}"
    from bench.tracking import init_store

    init_store(uri, [], work / "artifacts")
    return uri


def cell_files(cfg: dict[str, Any], work: Path) -> list[tuple[Cell, Path, Path]]:
    """(cell, resolved config file, result path) for every cell of `cfg`."""
    out = []
    for i, cell in enumerate(plan(cfg)):
        path = work / f"cell{i}.json"
        path.write_text(json.dumps(resolve_cell(cfg, cell)))
        out.append((cell, path, cell_dir(cfg["results"], cell) / "result.json"))
    return out


def start_cell(cfg_path: Path, out: Path, uri: str | None, work: Path,
               **env: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "bench", "train", "--cell", f"@{cfg_path}", "--out", str(out),
            "--threads", "1"]
    extra = {"MEMREPRO_ARTIFACT_ROOT": str(work / "artifacts"), **env}
    if uri:
        args += ["--tracking-uri", uri]
    else:
        extra["MEMREPRO_TRACKING"] = "off"
    return subprocess.Popen(args, env=_env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 300) -> list[str]:
    """Read the process's output until a line contains `needle` (the process keeps running)."""
    lines, end = [], time.time() + timeout
    assert proc.stdout is not None
    while time.time() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise RuntimeError(f"no line with {needle!r} appeared; output:\n{''.join(lines)[-3000:]}")


def kill_after(proc: subprocess.Popen, line: str, delay_s: float = 0.0) -> None:
    """SIGKILL a cell `delay_s` after it printed `line` (no chance to clean up)."""
    wait_for_line(proc, line)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def check(cfg: dict[str, Any], uri: str | None, *, tables: bool = False,
          statuses: tuple[str, ...] = ("ok",)) -> tuple[int, int, list[str]]:
    """(lost, duplicated, problems) of a run of `cfg` (bench.verify)."""
    v = verify_run(cfg, statuses=statuses, tables=tables, report=tables,
                   tracking=uri is not None, uri=uri)
    return v.lost, v.duplicated, v.problems


def snakemake_cmd(work: Path, config: Path, *args: str) -> list[str]:
    return ["snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", str(config), *args]


def _verdict(ok: bool, what: str, lost: int, dup: int, problems: list[str]) -> Outcome:
    detail = f"; {problems[0]}" if problems else ""
    return Outcome(ok and not problems, what + detail, lost, dup)


# ----------------------------------------------------------------------------- the faults


@fault("sigkill_cell", "SIGKILL a cell mid-epoch, then run it again",
       "the rerun resumes from the last epoch checkpoint; one result, one MLflow run, "
       "every epoch logged once")
def _sigkill_cell(work: Path) -> Outcome:
    # 1024 images: an epoch lasts long enough for the kill to land inside epoch 3
    cfg = tiny_config(work, {"epochs": 5, "data_options": {"synthetic": {
        "n_train": 1024, "n_val": 64, "num_classes": 4}}})
    uri = store_uri(work)
    (cell, path, out), = cell_files(cfg, work)
    kill_after(start_cell(path, out, uri, work), "epoch 2/5", 0.3)
    had_checkpoint = (out.parent / "checkpoint.pt").exists()
    code, log = finish(start_cell(path, out, uri, work))
    result = json.loads(out.read_text()) if out.exists() else {}
    resumed = (result.get("provenance") or {}).get("resumed_from_epoch")
    lost, dup, problems = check(cfg, uri)
    ok = code == 0 and had_checkpoint and resumed is not None and resumed >= 2
    return _verdict(ok, f"killed 0.3 s after epoch 2 ended; rerun exit {code}, resumed "
                        f"after epoch {resumed}", lost, dup, problems)


@fault("sigkill_snakemake", "SIGKILL the snakemake process mid-run (its jobs live on as "
       "orphans), then `snakemake --unlock` and a rerun with --rerun-incomplete",
       "the rerun waits for or redoes the interrupted cells and completes; no duplicated "
       "result or MLflow run")
def _sigkill_snakemake(work: Path) -> Outcome:
    # epochs of ~1 s (1024 images), so the cells killed mid-run are still running as orphans
    # when the rerun starts
    cfg = tiny_config(work, {"epochs": 6, "seeds": 2, "methods": ["sgd", "plain"],
                             "variants": {"plain": {"method": "sgd",
                                                    "options": {"momentum": 0.0}}},
                             "data_options": {"synthetic": {"n_train": 1024, "n_val": 64,
                                                            "num_classes": 4}}})
    config = write_config(work, cfg)
    uri = f"sqlite:///{work / 'results' / 'mlflow.db'}"
    env = _env()
    env.pop("MLFLOW_TRACKING_URI", None)
    # output to a file, not a pipe: orphaned jobs keep a pipe open until they end
    log = open(work / "snakemake.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(snakemake_cmd(work, config, "--cores", "2"), cwd=work, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    cells = [cell_dir(cfg["results"], c) for c in plan(cfg)]
    end = time.time() + 600
    while time.time() < end:  # kill once a cell is done and another is mid-training
        done = sum((d / "result.json").exists() for d in cells)
        running = sum((d / "checkpoint.pt").exists() and not (d / "result.json").exists()
                      for d in cells)
        if done >= 1 and running >= 1 or proc.poll() is not None:
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        log.close()
        return Outcome(False, "snakemake finished before it could be killed")
    done_before = sum((d / "result.json").exists() for d in cells)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    pattern = rf"^\S*python\S* -m bench train .*{study_name(work)}"
    orphans = subprocess.run(["pgrep", "-f", pattern], capture_output=True,
                             text=True).stdout.split()
    subprocess.run(snakemake_cmd(work, config, "--unlock"), cwd=work, env=env,
                   capture_output=True, timeout=120)
    rerun = subprocess.run(snakemake_cmd(work, config, "--cores", "2", "--rerun-incomplete"),
                           cwd=work, env=env, capture_output=True, text=True, timeout=900)
    lost, dup, problems = check(cfg, uri, tables=True)
    if rerun.returncode != 0:
        problems.insert(0, "rerun failed: " + rerun.stderr[-500:])
    return _verdict(rerun.returncode == 0,
                    f"killed with {done_before}/{len(cells)} results written and "
                    f"{len(orphans)} orphaned cell(s) still running; rerun exit "
                    f"{rerun.returncode}", lost, dup, problems)


@fault("scancel_job", "scancel a running Slurm training job (profiles/slurm, retries: 2)",
       "Snakemake sees the job fail and resubmits it; the retry resumes and the run completes "
       "with one result and one MLflow run per cell", needs=("slurm",))
def _scancel_job(work: Path) -> Outcome:
    cfg = tiny_config(work, {"epochs": 6, "seeds": 2})
    config = write_config(work, cfg)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'results' / 'mlflow.db'}"
    proc = subprocess.Popen(
        snakemake_cmd(work, config, "--workflow-profile", str(ROOT / "profiles" / "slurm"),
                      "--jobs", "4", "--latency-wait", "5", "--retries", "2",
                      "--slurm-init-seconds-before-status-checks", "5"),
        cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cancelled, end = None, time.time() + 600
    while cancelled is None and time.time() < end and proc.poll() is None:
        q = subprocess.run(["squeue", "-h", "-o", "%i %T %k"], capture_output=True, text=True)
        for line in q.stdout.splitlines():
            job, state, comment = (line.split(maxsplit=2) + ["", ""])[:3]
            if state == "RUNNING" and "train" in comment and str(work.name) in _job_dir(job):
                time.sleep(3)  # let it start training
                subprocess.run(["scancel", job], check=False)
                cancelled = job
                break
        time.sleep(0.5)
    try:
        log, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
    if cancelled is None:
        return Outcome(False, "no running training job was seen to cancel")
    retried = "Trying to restart" in log or "attempt 2" in log.lower()
    lost, dup, problems = check(cfg, uri, tables=True)
    if proc.returncode != 0:
        problems.insert(0, "snakemake failed: " + log[-800:])
    return _verdict(proc.returncode == 0 and retried,
                    f"cancelled job {cancelled}; retried: {'yes' if retried else 'no'}; "
                    f"snakemake exit {proc.returncode}", lost, dup, problems)


def _job_dir(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    return out.stdout


@fault("truncated_checkpoint", "truncate a cell's checkpoint.pt to half its size, then run "
       "the cell again",
       "the damaged checkpoint is detected and reported; the cell starts over cleanly and "
       "finishes; no epoch is logged twice")
def _truncated_checkpoint(work: Path) -> Outcome:
    cfg = tiny_config(work, {"epochs": 4})
    uri = store_uri(work)
    (cell, path, out), = cell_files(cfg, work)
    kill_after(start_cell(path, out, uri, work), "epoch 2/4")
    ckpt = out.parent / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    code, log = finish(start_cell(path, out, uri, work))
    detected = "unreadable" in log
    result = json.loads(out.read_text()) if out.exists() else {}
    lost, dup, problems = check(cfg, uri)
    return _verdict(code == 0 and detected and result.get("status") == "ok",
                    f"checkpoint cut to {len(data) // 2} of {len(data)} bytes; detected: "
                    f"{'yes' if detected else 'no'}; rerun exit {code}", lost, dup, problems)


@fault("retrain_tracking", "retrain with tracking on: a finished cell trained again under the "
       "same config hash, as `-R train` after a code change does (result deleted; the rerun "
       "uses 2 threads, which changes CPU values as a code change would)",
       "a new MLflow run; the old one tagged superseded_by it; the current run equals the new "
       "result.json at every metric and step; one current run per cell")
def _retrain_tracking(work: Path) -> Outcome:
    cfg = tiny_config(work)
    uri = store_uri(work)
    (_, path, out), = cell_files(cfg, work)
    code_a, _ = finish(start_cell(path, out, uri, work))
    first = json.loads(out.read_text()) if out.exists() else {}
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "train", "--cell", f"@{path}", "--out", str(out),
         "--threads", "2", "--tracking-uri", uri],
        env=_env(MEMREPRO_ARTIFACT_ROOT=str(work / "artifacts")), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    code_b, _ = finish(proc)
    second = json.loads(out.read_text()) if out.exists() else {}
    old, new = ((d.get("mlflow") or {}).get("run_id") for d in (first, second))
    from mlflow.tracking import MlflowClient

    from bench.tracking import SUPERSEDED_TAG

    tag = MlflowClient(uri).get_run(old).data.tags.get(SUPERSEDED_TAG) if old else None
    changed = [e.get("val_loss") for e in first.get("history") or []] != [
        e.get("val_loss") for e in second.get("history") or []]
    lost, dup, problems = check(cfg, uri)
    ok = code_a == 0 and code_b == 0 and old and new and old != new and tag == new
    return _verdict(bool(ok), f"exit {code_a}, then {code_b}; new run: "
                              f"{'yes' if new and new != old else 'no'}; old run tagged "
                              f"{SUPERSEDED_TAG}: {'yes' if tag == new else 'no'}; values "
                              f"changed by the retrain: {'yes' if changed else 'no'}",
                    lost, dup, problems)


def _unwritable_results(work: Path, how: str) -> Outcome:
    """Finish cell A, make the results file system full or read-only, run cell B (must fail
    clearly, writing nothing half-way, leaving A intact), restore, run B again (must finish)."""
    results = work / "results"
    results.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(results)], check=True)
    try:
        cfg = tiny_config(work, {"seeds": 2, "epochs": 2})
        uri = store_uri(work)
        (a, a_path, a_out), (b, b_path, b_out) = cell_files(cfg, work)
        code_a, log_a = finish(start_cell(a_path, a_out, uri, work))
        if code_a != 0:
            return Outcome(False, f"cell A failed before the fault: {log_a[-500:]}")
        a_bytes = a_out.read_bytes()
        if how == "full":
            b_out.parent.mkdir(parents=True)  # the job's folder exists (Snakemake makes it)
            filler = results / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"],
                           capture_output=True)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(results)], check=True)
        code_b, log_b = finish(start_cell(b_path, b_out, uri, work))
        reason = "No space left on device" if how == "full" else "Read-only file system"
        clear = code_b != 0 and reason in log_b and "results" in log_b
        partial = sorted(str(p.relative_to(results)) for p in b_out.parent.glob("*")
                         if p.name != ".lock") if b_out.parent.exists() else []
        intact = a_out.read_bytes() == a_bytes
        if how == "full":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(results)], check=True)
        code_again, log_again = finish(start_cell(b_path, b_out, uri, work))
        lost, dup, problems = check(cfg, uri)
        lost += 0 if intact else 1
        if partial:
            problems.insert(0, f"left behind while failing: {', '.join(partial)}")
        if not clear:
            problems.insert(0, f"failure not clear (exit {code_b}): {log_b[-600:]}")
        return _verdict(clear and intact and code_again == 0,
                        f"cell failed with exit {code_b} ({reason}); nothing half-written; "
                        f"finished result intact: {'yes' if intact else 'NO'}; rerun after "
                        f"the fix exit {code_again}", lost, dup, problems)
    finally:
        subprocess.run(["umount", "-l", str(results)], capture_output=True)


@fault("disk_full", "fill the results file system (a small tmpfs) before a cell runs",
       "the cell fails with a clear 'no space left' error; no partial result.json or temporary "
       "file appears; finished results are untouched; after space is freed the cell completes",
       needs=("root",))
def _disk_full(work: Path) -> Outcome:
    return _unwritable_results(work, "full")


@fault("read_only_results", "remount the results file system read-only before a cell runs",
       "the cell fails with a clear 'read-only' error; nothing half-written; finished results "
       "are untouched; after remounting read-write the cell completes", needs=("root",))
def _read_only(work: Path) -> Outcome:
    return _unwritable_results(work, "ro")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(work: Path, port: int) -> subprocess.Popen:
    (work / "server").mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{work / 'server' / 'mlflow.db'}", "--artifacts-destination",
         str(work / "server" / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


@fault("tracking_down_at_start", "start a cell while its MLflow server is down; start the "
       "server 8 s later",
       "the cell waits for the server (saying so), then trains and mirrors normally: one "
       "FINISHED run with every epoch")
def _tracking_down(work: Path) -> Outcome:
    cfg = tiny_config(work, {"epochs": 3})
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    (cell, path, out), = cell_files(cfg, work)
    proc = start_cell(path, out, uri, work, MEMREPRO_TRACKING_WAIT_S="120")
    time.sleep(8)
    server = start_mlflow_server(work, port)
    try:
        code, log = finish(proc)
        waited = "waiting" in log.lower() or "unreachable" in log.lower()
        lost, dup, problems = check(cfg, uri)
    finally:
        stop_server(server)
    return _verdict(code == 0 and waited, f"cell exit {code}; said it was waiting: "
                    f"{'yes' if waited else 'no'}", lost, dup, problems)


@fault("tracking_never_back", "start a cell while its MLflow server is down and never "
       "start it (wait limit 5 s)",
       "the cell fails clearly, naming the server and what to do; it trains nothing and "
       "writes no result")
def _tracking_never(work: Path) -> Outcome:
    cfg = tiny_config(work, {"epochs": 3})
    uri = f"http://127.0.0.1:{_free_port()}"
    (cell, path, out), = cell_files(cfg, work)
    t0 = time.perf_counter()
    code, log = finish(start_cell(path, out, uri, work, MEMREPRO_TRACKING_WAIT_S="5"))
    seconds = time.perf_counter() - t0
    clear = code != 0 and uri in log and "MEMREPRO_TRACKING=off" in log
    trained = "epoch 1/" in log
    written = out.exists()
    return Outcome(clear and not trained and not written,
                   f"exit {code} after {seconds:.0f} s; message names the server and the "
                   f"way out: {'yes' if clear else 'no'}; trained: {trained}; result: {written}")


def _concurrent(work: Path, n: int) -> Outcome:
    cfg = tiny_config(work, {"seeds": n, "epochs": 2})
    uri = store_uri(work)
    procs = [start_cell(path, out, uri, work) for _, path, out in cell_files(cfg, work)]
    codes = [finish(p, timeout=1800)[0] for p in procs]
    lost, dup, problems = check(cfg, uri)
    failed = sum(c != 0 for c in codes)
    return _verdict(failed == 0, f"{n} cells at once against {uri.split(':')[0]}: "
                    f"{n - failed} finished", lost, dup, problems)


@fault("concurrent_8", "8 cells start at once against one MLflow store",
       "every cell finishes; 8 runs, every epoch of every metric exactly once")
def _concurrent_8(work: Path) -> Outcome:
    return _concurrent(work, 8)


# 32 writers are a server's load (a cluster's worth of cells); a sqlite store's locking is
# what concurrent_8 checks, so the suite does not spend 4 minutes on it twice.
@fault("concurrent_32", "32 cells start at once against one MLflow server",
       "every cell finishes; 32 runs, every epoch of every metric exactly once",
       needs=("server",))
def _concurrent_32(work: Path) -> Outcome:
    return _concurrent(work, 32)


@fault("nan_loss", "a learning rate of 1e12 makes the loss NaN",
       "the cell ends with status 'diverged' and the epoch it happened; valid JSON result "
       "(NaN stored as null); the run is FINISHED")
def _nan(work: Path) -> Outcome:
    cfg = tiny_config(work, {"epochs": 3, "train": {"batch_size": 32, "lr": 1e12,
                                                    "momentum": 0.9, "warmup_steps": 1}})
    uri = store_uri(work)
    (cell, path, out), = cell_files(cfg, work)
    code, log = finish(start_cell(path, out, uri, work))
    result = json.loads(out.read_text()) if out.exists() else {}
    lost, dup, problems = check(cfg, uri, statuses=("diverged",))
    return _verdict(code == 0 and result.get("status") == "diverged",
                    f"status {result.get('status')}: {result.get('reason')}", lost, dup,
                    problems)


@fault("out_of_memory", "a model too big for memory (width 1000: ~147 GB for one conv)",
       "the allocator refuses; the cell ends with status 'oom' and the reason; the job "
       "succeeds so the study's other cells go on")
def _oom(work: Path) -> Outcome:
    cfg = tiny_config(work, {"model": {"width": 1000.0}})
    uri = store_uri(work)
    (cell, path, out), = cell_files(cfg, work)
    code, log = finish(start_cell(path, out, uri, work))
    result = json.loads(out.read_text()) if out.exists() else {}
    lost, dup, problems = check(cfg, uri, statuses=("oom",))
    return _verdict(code == 0 and result.get("status") == "oom",
                    f"status {result.get('status')}: {(result.get('reason') or '')[:80]}",
                    lost, dup, problems)


@fault("budget_too_small", "a cell of a method that sizes its batch to the budget, under "
       "1 MiB: below what its first unit needs at the smallest batch",
       "the cell fails with a message naming the budget, what does not fit in it (a unit, or "
       "the whole model) and what it needs; no result.json")
def _budget(work: Path) -> Outcome:
    from bench.methods import METHODS

    name = next(m for m in METHODS if METHODS.get(m).sizes_to_budget)
    options = (METHODS.get(name).test_study.get("method_options") or {}).get(name, {})
    study = {"methods": [name], "reference": name, "budgets": ["1MiB"],
             "method_options": {name: {"profile_batches": options.get("profile_batches",
                                                                      [8, 16, 32])}}}
    cfg = tiny_config(work, study)
    (cell, path, out), = cell_files(cfg, work)
    code, log = finish(start_cell(path, out, None, work))
    clear = (code == 2 and "too small" in log and "1.0 MiB" in log and "needs" in log
             and "Traceback" not in log)
    line = next((ln for ln in log.splitlines() if ln.startswith("error:")), log[-200:])
    return Outcome(clear and not out.exists(), f"exit {code}: {line[:160]}")


@fault("unknown_name", "a config naming method 'sgdd' (a typo)",
       "snakemake stops before any job, naming the typo and the valid methods; no results "
       "folder appears")
def _unknown(work: Path) -> Outcome:
    cfg = tiny_config(work)
    cfg["studies"][study_name(work)]["methods"] = ["sgdd"]
    cfg["studies"][study_name(work)]["reference"] = "sgdd"
    config = write_config(work, cfg)
    proc = subprocess.run(snakemake_cmd(work, config, "--cores", "1"), cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    clear = proc.returncode != 0 and "sgdd" in text and "Did you mean 'sgd'" in text
    return Outcome(clear and not (work / "results").exists(),
                   f"snakemake exit {proc.returncode}; names the typo and the valid methods: "
                   f"{'yes' if clear else 'no'}; results folder: {(work / 'results').exists()}")


@fault("corrupted_archive", "a truncated CIFAR-10 download (garbage bytes as "
       "cifar-10-python.tar.gz in data_root)",
       "prepare-data fails with a checksum error naming the file, its expected md5 and what "
       "to do; nothing is extracted")
def _corrupt(work: Path) -> Outcome:
    root = work / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(os.urandom(4096))
    spec = {"data_root": str(root), "options": {"f": {}}}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "prepare-data", "--dataset", "cifar10", "--spec",
         json.dumps(spec), "--out", str(work / "manifest.json")],
        env=_env(), capture_output=True, text=True, timeout=300)
    text = proc.stderr
    clear = proc.returncode == 2 and "checksum" in text and "cifar-10-python.tar.gz" in text
    extracted = (root / "cifar-10-batches-py").exists()
    line = next((ln for ln in text.splitlines() if ln.startswith("error:")), text[-200:])
    return Outcome(clear and not extracted and not (work / "manifest.json").exists(),
                   f"exit {proc.returncode}: {line[:160]}; extracted: {extracted}")


def _snakemake(work: Path, config: Path, *args: str, timeout: float = 900
               ) -> subprocess.CompletedProcess:
    env = _env()
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(snakemake_cmd(work, config, "--cores", "2", *args), cwd=work,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _planned(proc: subprocess.CompletedProcess, rule: str) -> int:
    m = re.search(rf"^{rule}\s+(\d+)$", proc.stdout + proc.stderr, re.MULTILINE)
    return int(m.group(1)) if m else 0


def _report_hashes(cfg: dict[str, Any]) -> set[str]:
    """The config hashes the study's cells table (what the report shows) holds."""
    import csv

    path = Path(cfg["results"]) / study_name_of(cfg) / "tables" / "cells.csv"
    with open(path, newline="") as f:
        return {row["config_hash"] for row in csv.DictReader(f)}


def study_name_of(cfg: dict[str, Any]) -> str:
    (name,) = cfg["studies"]
    return name


def _expected_hashes(cfg: dict[str, Any]) -> set[str]:
    from bench.config import config_hash

    return {config_hash(resolve_cell(cfg, c)) for c in plan(cfg)}


# Tracking off in the workflow faults below: they are about files (results, tables, report);
# what a retrain does to a finished MLflow run is the tracking faults' business.
_FILES_ONLY = {"enabled": False, "uri": None}


@fault("deleted_result", "finish a workflow, delete one cell's result.json and one table, "
       "then run plain `snakemake`",
       "the missing result and table are remade (the cell retrains, the study is aggregated "
       "and reported again); the report holds every cell")
def _deleted_result(work: Path) -> Outcome:
    cfg = tiny_config(work, {"seeds": 2, "epochs": 1}, tracking=_FILES_ONLY)
    config = write_config(work, cfg)
    first = _snakemake(work, config)
    if first.returncode != 0:
        return Outcome(False, "the first run failed: " + first.stderr[-500:])
    victim = cell_dir(cfg["results"], plan(cfg)[1]) / "result.json"
    victim.unlink()
    table = Path(cfg["results"]) / study_name_of(cfg) / "tables" / "summary.csv"
    table.unlink()
    dry = _snakemake(work, config, "-n")
    rerun = _snakemake(work, config)
    lost, dup, problems = check(cfg, None, tables=True)
    if rerun.returncode != 0:
        problems.insert(0, "rerun failed: " + rerun.stderr[-500:])
    ok = rerun.returncode == 0 and victim.is_file() and table.is_file()
    return _verdict(ok, f"a plain rerun planned {_planned(dry, 'train')} cell and "
                        f"{_planned(dry, 'aggregate')} aggregate; result and table back: "
                        f"{'yes' if ok else 'no'}", lost, dup, problems)


@fault("stale_result", "finish a workflow, delete `.snakemake/` (a fresh clone on the same "
       "results folder), change the learning rate and add a seed, run `snakemake`",
       "exactly the changed cells rerun (every old cell, and the new seed); the tables and the "
       "report hold only results of the current config; a result of another config is never "
       "aggregated")
def _stale_result(work: Path) -> Outcome:
    cfg = tiny_config(work, {"seeds": 2, "epochs": 1}, tracking=_FILES_ONLY)
    config = write_config(work, cfg)
    first = _snakemake(work, config)
    if first.returncode != 0:
        return Outcome(False, "the first run failed: " + first.stderr[-500:])
    shutil.rmtree(work / ".snakemake")
    unchanged = _snakemake(work, config, "-n")
    quiet = "Nothing to be done" in unchanged.stdout + unchanged.stderr
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
    study = cfg["studies"][study_name_of(cfg)]
    changed = tiny_config(work, {"seeds": 3, "epochs": 1,
                                 "train": {**study["train"], "lr": study["train"]["lr"] / 2}},
                          tracking=_FILES_ONLY)
    config = write_config(work, changed)
    dry = _snakemake(work, config, "-n")
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
    rerun = _snakemake(work, config)
    lost, dup, problems = check(changed, None, tables=True)
    if rerun.returncode != 0:
        problems.insert(0, "rerun failed: " + rerun.stderr[-500:])
    reported = _report_hashes(changed) if rerun.returncode == 0 else set()
    current = reported == _expected_hashes(changed)
    if not current:
        problems.append("the report holds results of another config")
    return _verdict(rerun.returncode == 0 and quiet and _planned(dry, "train") == 3,
                    f"unchanged config without metadata: "
                    f"{'nothing to do' if quiet else 'REPLANNED'}; lr halved + a third seed: "
                    f"{_planned(dry, 'train')} of 3 cells rerun; report current: "
                    f"{'yes' if current else 'NO'}", lost, dup, problems)


@fault("two_clones_one_results", "two `snakemake` runs from two clones (each its own "
       "working directory and `.snakemake/`) on one results folder, tracking on; the second "
       "starts while the first trains",
       "the second refuses before any job, naming the run that holds the folder (pid, host, "
       "clone, start time) and what to do, and deletes nothing; the first completes; run "
       "again afterwards, the second clone has nothing to do; no cell trained twice")
def _two_clones(work: Path) -> Outcome:
    from bench.runlock import holder

    # epochs of ~1 s (1024 images): the first run still holds the folder when the second,
    # ~10 s of snakemake start-up later, reaches the lock
    cfg = tiny_config(work, {"seeds": 2, "epochs": 4, "data_options": {"synthetic": {
        "n_train": 1024, "n_val": 64, "num_classes": 4}}},
        tracking={"enabled": True, "uri": None})
    uri = f"sqlite:///{work / 'results' / 'mlflow.db'}"
    clones = [work / "clone_a", work / "clone_b"]
    configs = []
    for clone in clones:
        clone.mkdir()
        configs.append(write_config(clone, cfg))
    env = _env()
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(work / "clone_a.log", "w")  # noqa: SIM115 - closed below
    first = subprocess.Popen(snakemake_cmd(clones[0], configs[0], "--cores", "2"),
                             cwd=clones[0], env=env, stdout=log, stderr=subprocess.STDOUT)
    cells = [cell_dir(cfg["results"], c) for c in plan(cfg)]
    end = time.time() + 600
    while time.time() < end and first.poll() is None:  # the first run trains
        if holder(cfg["results"]) is not None and any(
                (d / "checkpoint.pt").exists() or (d / "result.json").exists() for d in cells):
            break
        time.sleep(0.2)
    if first.poll() is not None:
        log.close()
        return Outcome(False, f"the first run ended (exit {first.returncode}) before the "
                              "second could start")
    second = subprocess.run(snakemake_cmd(clones[1], configs[1], "--cores", "2"),
                            cwd=clones[1], env=env, capture_output=True, text=True, timeout=600)
    still_running = first.poll() is None
    try:
        code_a = first.wait(timeout=900)
    finally:
        log.close()
    text = second.stdout + second.stderr
    named = f"pid {first.pid}" in text and str(clones[0]) in text and "started" in text
    refused = second.returncode != 0 and (
        ("in use by another snakemake run" in text and named)
        or "while this one was planning" in text)
    again = subprocess.run(snakemake_cmd(clones[1], configs[1], "--cores", "2"),
                           cwd=clones[1], env=env, capture_output=True, text=True, timeout=900)
    nothing = "Nothing to be done" in again.stdout + again.stderr
    v = verify_run(cfg, tables=True, report=True, tracking=True, uri=uri)
    problems = list(v.problems)
    if v.superseded_runs:
        problems.insert(0, f"{v.superseded_runs} cell(s) trained twice (superseded MLflow runs)")
    if not refused:
        problems.insert(0, f"the second run was not refused (exit {second.returncode}): "
                           + text[-600:])
    if code_a != 0:
        problems.insert(0, f"the first run failed (exit {code_a}): see {work / 'clone_a.log'}")
    if again.returncode != 0:
        problems.insert(0, "the second clone's later run failed: " + again.stderr[-500:])
    ok = refused and code_a == 0 and again.returncode == 0 and nothing and not v.superseded_runs
    why = ("holder named" if named else "plan outdated") if refused else "NOT refused"
    return _verdict(ok, f"second run exit {second.returncode} ({why}; first run still "
                        f"training then: {'yes' if still_running else 'no'}); first run exit "
                        f"{code_a}; second clone afterwards: "
                        f"{'nothing to do' if nothing else 'REPLANNED'}",
                    v.lost, v.duplicated + v.superseded_runs, problems)


# shell syntax that would create `pwned*` in the job's working directory if ever run
_PAYLOAD = "x$(touch pwned1) `touch pwned2` ; touch pwned3 ' \" && touch pwned4"


@fault("injection_attempt", "shell syntax in a study name, then in the results folder and "
       "data_root (`$(...)`, backticks, `;`, `&&`, quotes), tracking on",
       "the study name stops snakemake before any job with one line naming it; the paths are "
       "taken literally: the run completes under that folder and nothing of them executes")
def _injection(work: Path) -> Outcome:
    cfg = tiny_config(work, {"epochs": 1})
    bad = copy.deepcopy(cfg)
    bad["studies"] = {_PAYLOAD: bad["studies"][study_name_of(cfg)]}
    config = write_config(work, bad)
    refused = _snakemake(work, config)
    text = refused.stdout + refused.stderr
    named = (refused.returncode != 0 and "is not a valid name" in text
             and "Traceback" not in text)
    no_results = not (work / "results").exists()
    results = work / f"res {_PAYLOAD} ü"
    good = tiny_config(work, {"epochs": 1})
    good.update(results=str(results), data_root=str(work / f"data {_PAYLOAD}"))
    good["tracking"] = {"enabled": True, "uri": None}
    config = write_config(work, good)
    run = _snakemake(work, config)
    executed = sorted(str(p.relative_to(work)) for p in work.rglob("pwned*"))
    lost, dup, problems = check(good, f"sqlite:///{results / 'mlflow.db'}", tables=True)
    if run.returncode != 0:
        problems.insert(0, "the run under the payload path failed: " + run.stderr[-500:])
    if executed:
        problems.insert(0, f"EXECUTED: {', '.join(executed)}")
    return _verdict(named and no_results and run.returncode == 0 and not executed,
                    f"study name refused before any job: {'yes' if named else 'NO'}; "
                    f"payload paths: run exit {run.returncode}, files created by the payload: "
                    f"{len(executed)}", lost, dup, problems)


class _Planted:
    """A pickle that creates `path` when loaded (what a planted checkpoint could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@fault("malicious_checkpoint", "plant a checkpoint.pt that runs code when unpickled (with the "
       "cell's own config hash) in a cell folder, then run the cell",
       "the checkpoint is refused unread (weights_only), the cell starts from scratch and "
       "finishes; the planted code never runs")
def _malicious_checkpoint(work: Path) -> Outcome:
    import torch

    from bench.config import config_hash

    cfg = tiny_config(work, {"epochs": 2})
    uri = store_uri(work)
    (cell, path, out), = cell_files(cfg, work)
    marker = work / "pwned"
    out.parent.mkdir(parents=True)
    torch.save({"config_hash": config_hash(resolve_cell(cfg, cell)), "epoch": 1,
                "payload": _Planted(marker)}, out.parent / "checkpoint.pt")
    code, log = finish(start_cell(path, out, uri, work))
    refused = "refused" in log
    result = json.loads(out.read_text()) if out.exists() else {}
    resumed = (result.get("provenance") or {}).get("resumed_from_epoch")
    lost, dup, problems = check(cfg, uri)
    if marker.exists():
        problems.insert(0, "the planted code RAN")
    return _verdict(code == 0 and refused and resumed is None and not marker.exists(),
                    f"refused: {'yes' if refused else 'no'}; code ran: "
                    f"{'YES' if marker.exists() else 'no'}; cell exit {code}, from scratch: "
                    f"{'yes' if resumed is None else 'no'}", lost, dup, problems)
