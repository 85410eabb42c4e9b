"""The results folder's lock (bench.runlock): one workflow run per results folder."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bench import runlock
from bench.config import ROOT
from bench.runlock import RunLock, RunLockError, holder, lock_path

HOLD = """
import sys, time
from pathlib import Path
from bench.runlock import RunLock
lock = RunLock(Path(sys.argv[1]), clone="/the/other/clone", command="snakemake --cores 2")
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder_process(results, seconds=60):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(results), str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_acquire_records_the_holder_and_release_frees_it(tmp_path):
    lock = RunLock(tmp_path / "results", clone="/my/clone", command="snakemake")
    assert lock.acquire() == []
    record = json.loads(lock_path(tmp_path / "results").read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["clone"] == "/my/clone" and record["released"] is None
    assert holder(tmp_path / "results") is not None
    lock.release()
    lock.release()  # idempotent
    assert json.loads(lock_path(tmp_path / "results").read_text())["released"] > 0
    assert holder(tmp_path / "results") is None
    again = RunLock(tmp_path / "results", clone="/my/clone")
    assert again.acquire() == [], "a released lock is not stale"
    again.release()


def test_a_second_run_is_refused_naming_the_holder_and_what_to_do(tmp_path):
    proc = _holder_process(tmp_path)
    try:
        with pytest.raises(RunLockError) as err:
            RunLock(tmp_path, clone="/mine").acquire()
        text = str(err.value)
        assert f"pid {proc.pid}" in text and socket.gethostname() in text
        assert "/the/other/clone" in text and "started 20" in text
        assert "snakemake --cores 2" in text and "Wait for it to finish" in text
        assert holder(tmp_path)["pid"] == proc.pid
        assert runlock.main([str(tmp_path)]) == 1
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_holders_lock_is_taken_over_and_said_so(tmp_path):
    proc = _holder_process(tmp_path)
    proc.send_signal(signal.SIGKILL)  # no chance to release
    proc.wait()
    assert json.loads(lock_path(tmp_path).read_text())["released"] is None
    assert holder(tmp_path) is None
    lock = RunLock(tmp_path, clone="/mine")
    notes = lock.acquire()
    assert len(notes) == 1 and f"pid {proc.pid}" in notes[0] and "taking it over" in notes[0]
    lock.release()


def test_a_run_that_planned_before_another_ended_is_refused(tmp_path):
    planned = time.time()
    other = _holder_process(tmp_path, seconds=0)  # holds it, then exits (lock released)
    other.wait()
    with pytest.raises(RunLockError, match="while this one was planning"):
        RunLock(tmp_path, clone="/mine").acquire(planned_since=planned)
    lock = RunLock(tmp_path, clone="/mine")  # planned afterwards: fine
    assert lock.acquire(planned_since=time.time()) == []
    lock.release()


def test_without_flock_the_record_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        base = {"host": socket.gethostname(), "clone": "/c", "started": time.time(),
                "released": None}
        lock_path(tmp_path).write_text(json.dumps({**base, "pid": live.pid,
                                                   "pid_start": runlock._proc_start(live.pid)}))
        with pytest.raises(RunLockError, match=f"pid {live.pid}"):
            RunLock(tmp_path, clone="/mine").acquire()
        lock_path(tmp_path).write_text(json.dumps({**base, "host": "elsewhere", "pid": 1}))
        with pytest.raises(RunLockError, match="delete .*run.lock"):
            RunLock(tmp_path, clone="/mine").acquire()
    finally:
        live.kill()
        live.wait()
    # the holder died; its pid is not running: stale, taken over
    lock_path(tmp_path).write_text(json.dumps({**base, "pid": live.pid}))
    lock = RunLock(tmp_path, clone="/mine")
    assert "taking it over" in " ".join(lock.acquire())
    lock.release()


def test_a_reused_pid_is_not_taken_for_the_holder():
    assert runlock.pid_alive(os.getpid(), runlock._proc_start(os.getpid()))
    assert not runlock.pid_alive(os.getpid(), "1")  # same pid, another start time
    assert not runlock.pid_alive(0) and not runlock.pid_alive(-1) and not runlock.pid_alive(None)


def test_a_lock_held_an_instant_without_a_record_is_waited_for(tmp_path):
    """Another process holding the flock for an instant with no live record (a run starting
    up, an external probe) must not make this run fail."""
    import fcntl
    import threading

    first = RunLock(tmp_path, clone="/a")
    first.acquire()
    first.release()  # the record now says released
    fd = os.open(lock_path(tmp_path), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(0.5, lambda: os.close(fd)).start()
    lock = RunLock(tmp_path, clone="/b")
    assert lock.acquire() == []
    lock.release()
