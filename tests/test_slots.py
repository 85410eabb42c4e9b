"""bench.slots: real concurrent subprocesses contend for simulated GPU slots (MEMREPRO_GPUS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.slots import UsageError, device_ids

ROOT = Path(__file__).resolve().parents[1]
# Child command: sleep, then record what it saw and when it ran (inside the held slot).
CHILD = ("import json, os, sys, time; t0 = time.time(); "
         "open(sys.argv[1] + '.started', 'w').close(); time.sleep(float(sys.argv[2])); "
         "rec = dict(cvd=os.environ.get('CUDA_VISIBLE_DEVICES'), "
         "slot=os.environ.get('MEMREPRO_GPU_SLOT'), start=t0, end=time.time()); "
         "open(sys.argv[1], 'w').write(json.dumps(rec))")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEMREPRO_") and k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHONPATH=str(ROOT), MEMREPRO_SLOT_DIR=str(tmp_path / "locks"), **extra)
    return env


def _start(tmp_path: Path, name: str, env: dict[str, str], *opts: str,
           sleep: float = 1.0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench.slots", *opts, "--",
           sys.executable, "-c", CHILD, str(tmp_path / f"{name}.json"), str(sleep)]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)


def _run_all(tmp_path: Path, jobs: list[tuple[str, ...]], env: dict[str, str]) -> list[dict]:
    """Start every job at once (each a tuple of options), wait, return the child records."""
    procs = [_start(tmp_path, f"job{i}", env, *opts) for i, opts in enumerate(jobs)]
    for p in procs:
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "gpu slot: device" in err
    recs = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(len(jobs))]
    for rec, opts in zip(recs, jobs, strict=True):
        rec["exclusive"] = "--exclusive" in opts or "--exclusive-if=1" in opts
    return recs


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _max_concurrent(recs: list[dict]) -> int:
    return max(sum(1 for r in recs if r["start"] <= q["start"] < r["end"]) for q in recs)


def _wait_for(path: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_one_job_per_device_with_one_slot(tmp_path: Path) -> None:
    recs = _run_all(tmp_path, [()] * 6, _env(tmp_path, MEMREPRO_GPUS="2"))
    assert {r["cvd"] for r in recs} == {"0", "1"}
    for dev in ("0", "1"):
        on_dev = [r for r in recs if r["cvd"] == dev]
        assert all(r["slot"] == f"{dev}:0" for r in on_dev)
        assert _max_concurrent(on_dev) == 1


def test_two_slots_let_shared_jobs_share_a_device(tmp_path: Path) -> None:
    recs = _run_all(tmp_path, [()] * 4,
                    _env(tmp_path, MEMREPRO_GPUS="2", MEMREPRO_SLOTS_PER_GPU="2"))
    assert {r["cvd"] for r in recs} == {"0", "1"}
    for dev in ("0", "1"):
        on_dev = [r for r in recs if r["cvd"] == dev]
        assert _max_concurrent(on_dev) <= 2
        for a in on_dev:  # two jobs at once on a device hold different slots
            assert all(a["slot"] != b["slot"] for b in on_dev if b is not a and _overlap(a, b))
    assert any(_max_concurrent([r for r in recs if r["cvd"] == d]) == 2 for d in ("0", "1"))


def test_exclusive_job_never_overlaps_its_device(tmp_path: Path) -> None:
    # `--exclusive-if 1` is how the rules pass a study's `device_exclusive` resource
    jobs = [(), ("--exclusive",), (), ("--exclusive-if=1",), (), ("--exclusive-if=0",)]
    recs = _run_all(tmp_path, jobs, _env(tmp_path, MEMREPRO_GPUS="2", MEMREPRO_SLOTS_PER_GPU="2"))
    for ex in (r for r in recs if r["exclusive"]):
        assert ex["slot"] == f"{ex['cvd']}:all"
        others = [r for r in recs if r is not ex and r["cvd"] == ex["cvd"]]
        assert not any(_overlap(ex, r) for r in others)


def test_sigkill_of_holder_frees_its_slot(tmp_path: Path) -> None:
    env = _env(tmp_path, MEMREPRO_GPUS="1")
    holder = _start(tmp_path, "holder", env, sleep=60)
    _wait_for(tmp_path / "holder.json.started")
    waiter = _start(tmp_path, "waiter", env, "--timeout", "20", sleep=0)
    time.sleep(0.8)
    assert waiter.poll() is None, "waiter should block while the holder runs"
    holder.send_signal(signal.SIGKILL)  # same pid: bench.slots exec'd into the child
    holder.communicate(timeout=10)
    _, err = waiter.communicate(timeout=15)
    assert waiter.returncode == 0, err
    assert json.loads((tmp_path / "waiter.json").read_text())["cvd"] == "0"


def test_timeout_exits_3(tmp_path: Path) -> None:
    env = _env(tmp_path, MEMREPRO_GPUS="1")
    holder = _start(tmp_path, "holder", env, "--exclusive", sleep=60)
    try:
        _wait_for(tmp_path / "holder.json.started")
        waiter = _start(tmp_path, "waiter", env, "--timeout", "0.5", sleep=0)
        _, err = waiter.communicate(timeout=15)
        assert waiter.returncode == 3
        assert "timed out" in err and not (tmp_path / "waiter.json.started").exists()
    finally:
        holder.kill()
        holder.communicate()


@pytest.mark.parametrize("preset", [None, "7"])
def test_zero_devices_leave_cuda_visible_devices_alone(tmp_path: Path, preset: str | None
                                                     ) -> None:
    env = _env(tmp_path, MEMREPRO_GPUS="0")
    if preset is not None:
        env["CUDA_VISIBLE_DEVICES"] = preset
    p = _start(tmp_path, "cpu", env, sleep=0)
    _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    rec = json.loads((tmp_path / "cpu.json").read_text())
    assert rec["cvd"] == preset and rec["slot"] is None


def test_preset_visible_devices_map_to_physical_ids(tmp_path: Path) -> None:
    recs = _run_all(tmp_path, [()] * 2, _env(tmp_path, CUDA_VISIBLE_DEVICES="3,5"))
    assert sorted(r["cvd"] for r in recs) == ["3", "5"]
    assert sorted(r["slot"] for r in recs) == ["3:0", "5:0"]


def test_device_ids_discovery(tmp_path: Path) -> None:
    assert device_ids({"MEMREPRO_GPUS": "2"}) == ["0", "1"]
    assert device_ids({"MEMREPRO_GPUS": "2", "CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert device_ids({"MEMREPRO_GPUS": "1", "CUDA_VISIBLE_DEVICES": "3,5"}) == ["3"]
    assert device_ids({"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert device_ids({"MEMREPRO_GPUS": "3"}, count=1) == ["0"]
    with pytest.raises(UsageError, match="MEMREPRO_GPUS"):
        device_ids({"MEMREPRO_GPUS": "two"})
    with pytest.raises(UsageError, match="CUDA_VISIBLE_DEVICES"):
        device_ids({"MEMREPRO_GPUS": "3", "CUDA_VISIBLE_DEVICES": "3,5"})
    # nvidia-smi: a fake binary on PATH is counted; a failing or missing one means 0 devices.
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: A (UUID: x)'\necho 'GPU 1: B (UUID: y)'\n")
    smi.chmod(0o755)
    assert device_ids({"PATH": str(tmp_path)}) == ["0", "1"]
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert device_ids({"PATH": str(tmp_path)}) == []
    assert device_ids({"PATH": str(tmp_path / "empty")}) == []


@pytest.mark.parametrize(("args", "extra", "needle"), [
    (["--"], {}, "no command after '--'"),
    (["true"], {}, "put it after '--'"),
    (["--slots-per-gpu", "0", "--", "true"], {}, "slots per GPU must be >= 1"),
    (["--", "true"], {"MEMREPRO_SLOTS_PER_GPU": "0"}, "slots per GPU must be >= 1"),
    (["--gpus", "-1", "--", "true"], {}, "must be >= 0"),
    (["--", "true"], {"MEMREPRO_GPUS": "two"}, "MEMREPRO_GPUS='two' is not an integer"),
    (["--need", "-1", "--", "true"], {}, "--need must be >= 0"),
    (["--need", "2", "--", "true"], {"MEMREPRO_GPUS": "2"}, "one job holds one device"),
    (["--exclusive-if", "2", "--", "true"], {}, "invalid choice"),
])
def test_bad_input_exits_2(tmp_path: Path, args: list[str], extra: dict[str, str],
                           needle: str) -> None:
    p = subprocess.run([sys.executable, "-m", "bench.slots", *args], cwd=tmp_path, check=False,
                       env=_env(tmp_path, **extra), capture_output=True, text=True, timeout=15)
    assert p.returncode == 2
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_missing_command_exits_127(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "bench.slots", "--", "no-such-command-xyz"],
                       cwd=tmp_path, env=_env(tmp_path, MEMREPRO_GPUS="1"), check=False,
                       capture_output=True, text=True, timeout=15)
    assert p.returncode == 127 and "command not found: no-such-command-xyz" in p.stderr


@pytest.mark.parametrize("case", ["need0", "slurm"])
def test_cpu_jobs_and_slurm_jobs_are_only_execed(tmp_path: Path, case: str) -> None:
    # the rules wrap every job: a CPU job (`--need 0`) and a job inside a Slurm allocation
    # (Slurm chose its devices) must run untouched even where GPUs exist
    extra = {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "1"} if case == "slurm" else {}
    env = _env(tmp_path, MEMREPRO_GPUS="2", **extra)
    p = _start(tmp_path, "job", env, "--need", "0" if case == "need0" else "1", sleep=0)
    _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    rec = json.loads((tmp_path / "job.json").read_text())
    assert rec["cvd"] == extra.get("CUDA_VISIBLE_DEVICES") and rec["slot"] is None
    assert not (tmp_path / "locks").exists() or not list((tmp_path / "locks").iterdir())
