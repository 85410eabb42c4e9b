"""One workflow run at a time per results folder.

Two `snakemake` runs on one results folder (two clones, or one clone run twice with other
`.snakemake/` folders) each delete the outputs of the jobs they are about to run: the second
run removes the results the first has just written, cells are trained twice and the first run
fails with missing outputs. Snakemake's own lock lives in `.snakemake/`, one per working
directory, so it does not see the other clone.

`RunLock` is the results folder's lock, `<results>/.run.lock`, taken by the main `snakemake`
process in its `onstart` hook (rules/common.smk) and held until that process ends:

- the lock is an exclusive `flock` on the file, which the kernel drops when the holder dies
  (SIGKILL too): a dead run never blocks the next one;
- the file also records who holds it (pid, host, clone, start time, command): a second run
  refuses, naming the holder and what to do; a record left by a holder that died is reported
  as stale and taken over;
- it is released when snakemake ends: `onsuccess`, `onerror` (also after Ctrl-C), and an
  `atexit` fallback for an exception in between; released means the record says so, with the
  time (a run that planned before that time may have planned from an outdated folder and is
  refused: run it again).

Where `flock` is not supported (some network file systems), the record alone decides: a holder
on this host whose process is gone (or whose pid now belongs to a younger process) is stale; a
holder on another host cannot be checked, and the message says how to clear it.

Dry runs (`snakemake -n`) never reach `onstart`, and cluster jobs run with `--no-hooks`: only
the main process takes the lock.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_NAME = ".run.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunLockError(RuntimeError):
    """Another run holds the results folder (or held it while this one was planning)."""


def lock_path(results: str | Path) -> Path:
    return Path(results) / LOCK_NAME


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Is `pid` a running process on this host (the same one, when its start time is known)?"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if start is not None:
        now = _proc_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by a younger process
    return True


def _iso(t: float | None) -> str:
    if not t:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def describe(record: dict[str, Any]) -> str:
    """'pid 123 on host h (clone /a/b, started 2026-...)'."""
    workdir = record.get("workdir")
    where = f", working directory {workdir}" if workdir and workdir != record.get("clone") else ""
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} (clone "
            f"{record.get('clone', '?')}{where}, started {_iso(record.get('started'))})")


@dataclass
class RunLock:
    """The lock of one results folder, held by this process once `acquire` returned."""

    results: Path
    clone: str
    command: str = ""
    _fd: int | None = None
    _flock: bool = False
    _record: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return lock_path(self.results)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, planned_since: float | None = None) -> list[str]:
        """Take the lock or raise RunLockError; returns what to tell the user (a stale lock
        taken over). `planned_since`: when this run started planning; a run that held the
        folder after that makes this plan outdated, and the lock is refused."""
        if self.held:
            return []
        self.results.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            notes = self._take(fd, planned_since)
        except BaseException:
            os.close(fd)
            raise
        return notes

    def _take(self, fd: int, planned_since: float | None) -> list[str]:
        notes: list[str] = []
        flocked = True
        for attempt in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                record = _read(fd)
                if (record and not record.get("released")) or attempt == 19:
                    raise RunLockError(self._held_message(record)) from None
                time.sleep(0.1)  # held an instant without a record: a starting run, a probe
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                flocked = False  # no flock here: the record decides
                break
        old = _read(fd)
        if old and not old.get("released"):
            same_host = old.get("host") == socket.gethostname()
            alive = same_host and pid_alive(old.get("pid"), old.get("pid_start"))
            if not flocked and (alive or not same_host):
                raise RunLockError(self._held_message(old, checked=same_host))
            notes.append(f"the results folder's lock {self.path} was left by {describe(old)}, "
                         "which is no longer running (killed?): taking it over. Its cells may "
                         "have been cut short; this run redoes what is missing.")
        last = max(float(old.get("released") or 0), float(old.get("started") or 0)) if old else 0
        if planned_since is not None and old and last > planned_since and (
                old.get("pid"), old.get("host")) != (os.getpid(), socket.gethostname()):
            if flocked:
                fcntl.flock(fd, fcntl.LOCK_UN)
            raise RunLockError(
                f"another run used the results folder {self.results} while this one was "
                f"planning: {describe(old)}, "
                + (f"ended {_iso(old.get('released'))}" if old.get("released") else "died")
                + ". This run's plan may be out of date (it would redo or delete that run's "
                "results): start snakemake again (no job ran).")
        self._record = {"pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
                        "host": socket.gethostname(), "clone": self.clone,
                        "workdir": os.getcwd(), "started": time.time(),
                        "command": self.command, "released": None}
        _write(fd, self._record)
        self._fd, self._flock = fd, flocked
        atexit.register(self.release)
        return notes

    def _held_message(self, holder: dict[str, Any], checked: bool = True) -> str:
        who = describe(holder) if holder else "another process (no record yet)"
        where = self.path
        if checked:
            advice = ("Wait for it to finish (or stop it), then run snakemake again; to work "
                      "beside it, give this run another results folder (`results:` in the "
                      "config).")
        else:
            advice = ("This file system has no working file locks and that host cannot be "
                      f"checked from here: if that run is over, delete {where} and run "
                      "snakemake again; otherwise wait for it, or use another results folder.")
        cmd = f"; command: {holder['command']}" if holder.get("command") else ""
        return (f"the results folder {self.results} is in use by another snakemake run: "
                f"{who}{cmd}. Two runs on one results folder delete each other's results. "
                f"{advice}")

    def release(self) -> None:
        """Mark the record released (with the time) and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._record is not None:
                _write(fd, {**self._record, "released": time.time()})
        except OSError:
            pass  # a full or read-only folder: the kernel's lock still goes with the fd
        finally:
            if self._flock:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except OSError:
                    pass
            os.close(fd)


def _read(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        doc = json.loads(b"".join(chunks) or b"{}")
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def holder(results: str | Path) -> dict[str, Any] | None:
    """The record of the run holding `results` now, or None (free, released or stale). Reads
    only (it never takes the lock, so it cannot make a starting run fail): a holder on this
    host is checked by its pid; one on another host is taken at its word."""
    try:
        record = json.loads(lock_path(results).read_text() or "{}")
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record or record.get("released"):
        return None
    if record.get("host") == socket.gethostname() and not pid_alive(
            record.get("pid"), record.get("pid_start")):
        return None
    return record


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.runlock RESULTS`: who holds the folder (exit 1 if held)."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m bench.runlock RESULTS_DIR", file=sys.stderr)
        return 2
    h = holder(args[0])
    print(f"held by {describe(h)}" if h is not None else "free")
    return 1 if h is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
