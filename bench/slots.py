"""Per-GPU slot allocator for local Snakemake runs.

Snakemake's `resources: gpu=1` only *counts* GPUs: it runs N such jobs at once but never says
which job gets which device, so all of them would land on GPU 0. Each local job therefore runs as

    python -m bench.slots [--exclusive] [--slots-per-gpu K] -- python -m bench train ...

It takes a free (device, slot) flock, sets CUDA_VISIBLE_DEVICES and *replaces itself* with the
command (os.execvpe). The lock fd survives exec, so the slot is held exactly as long as the
command runs and the kernel frees it when the process exits, even on SIGKILL: no stale locks.
A shared job takes one of K slots of a device; an --exclusive job (timing or memory cells)
takes all K slots of one device. Jobs sharing a lock dir should use the same K. With
`--need 0` (a CPU job) or inside a Slurm job (Slurm assigns devices itself) it only execs.

Environment: MEMREPRO_GPUS (device count; overrides discovery, used to simulate devices in
tests), MEMREPRO_SLOTS_PER_GPU (default K), MEMREPRO_SLOT_DIR (default lock dir). The command
sees CUDA_VISIBLE_DEVICES=<physical id> and MEMREPRO_GPU_SLOT=<device>:<slot> or <device>:all.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

POLL_S = 0.2  # seconds between attempts while every slot is taken
NOTICE_S = 30.0  # seconds between "still waiting" lines on stderr
LOCK_DIR = ".memrepro-gpu-slots"
USAGE = ("python -m bench.slots [--lock-dir DIR] [--slots-per-gpu K] [--exclusive] "
         "[--need N] [--gpus N] [--timeout S] -- COMMAND [ARGS...]")


class UsageError(Exception):
    """Bad command line or environment; main() reports it and exits 2."""


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not an integer; set a number or unset it") from None


def _nvidia_smi_count(env: Mapping[str, str]) -> int:
    """Number of GPUs `nvidia-smi -L` lists; 0 when it is missing or fails."""
    exe = shutil.which("nvidia-smi", path=env.get("PATH"))
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def device_ids(env: Mapping[str, str], count: int | None = None) -> list[str]:
    """Physical device ids to allocate among.

    The count comes from `count` (--gpus), else MEMREPRO_GPUS, else a non-empty
    CUDA_VISIBLE_DEVICES (a scheduler already chose those ids), else `nvidia-smi -L`.
    A pre-set CUDA_VISIBLE_DEVICES maps device i to its i-th entry.
    """
    visible: list[str] = []
    for part in env.get("CUDA_VISIBLE_DEVICES", "").split(","):
        part = part.strip()
        if not part or part.startswith("-"):  # CUDA stops at the first invalid id ("-1")
            break
        visible.append(part)
    if count is None:
        count = _int_env(env, "MEMREPRO_GPUS")
    if count is None:
        return visible if visible else [str(i) for i in range(_nvidia_smi_count(env))]
    if count < 0:
        raise UsageError(f"device count must be >= 0, got {count}; fix --gpus or MEMREPRO_GPUS")
    if not visible:
        return [str(i) for i in range(count)]
    if count > len(visible):
        raise UsageError(f"{count} devices asked for but CUDA_VISIBLE_DEVICES="
                         f"{env['CUDA_VISIBLE_DEVICES']} has only {len(visible)}; lower --gpus"
                         f"/MEMREPRO_GPUS or unset CUDA_VISIBLE_DEVICES")
    return visible[:count]


def _lock_path(lock_dir: Path, dev: str, slot: int) -> Path:
    return lock_dir / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', dev)}.slot{slot}.lock"


def _lock(lock_dir: Path, dev: str, slots: list[int]) -> list[int] | None:
    """Inheritable fds flock-ing all `slots` of `dev` (no O_CLOEXEC: they survive exec), or
    None: all or nothing, what was taken is given back."""
    fds: list[int] = []
    for slot in slots:
        fd = os.open(_lock_path(lock_dir, dev, slot), os.O_RDWR | os.O_CREAT, 0o666)
        os.set_inheritable(fd, True)
        fds.append(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            for held in fds:
                os.close(held)
            return None
    return fds


def _probe(lock_dir: Path, dev: str, slot: int) -> bool:
    """Whether a slot is free right now (lock it and let go at once)."""
    fds = _lock(lock_dir, dev, [slot])
    for fd in fds or []:
        os.close(fd)
    return fds is not None


def acquire(lock_dir: Path, ids: list[str], k: int, exclusive: bool
            ) -> tuple[str, int | None, list[int]] | None:
    """One attempt: (device, slot or None for all, held fds), or None if nothing is free.
    Free slots are probed first (lock and release) to prefer the device with the most."""
    free = {dev: [s for s in range(k) if _probe(lock_dir, dev, s)] for dev in ids}
    for dev in sorted(ids, key=lambda d: -len(free[d])):  # most free first, ties in pool order
        if exclusive:
            if len(free[dev]) == k and (fds := _lock(lock_dir, dev, free[dev])) is not None:
                return dev, None, fds
            continue
        for slot in free[dev]:
            if (fds := _lock(lock_dir, dev, [slot])) is not None:
                return dev, slot, fds
    return None


def _parser() -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(message)

    p = Parser(prog="python -m bench.slots", usage=USAGE,
               description="Take a free GPU slot, then exec COMMAND on that device.")
    add = p.add_argument
    add("--lock-dir", type=Path, metavar="DIR", help=f"$MEMREPRO_SLOT_DIR or ./{LOCK_DIR}")
    add("--slots-per-gpu", type=int, metavar="K", help="$MEMREPRO_SLOTS_PER_GPU or 1")
    add("--exclusive", action="store_true", help="take every slot of one device")
    add("--exclusive-if", type=int, choices=(0, 1), default=0, metavar="0|1",
        help="--exclusive when 1 (rules pass a resource value)")
    add("--need", type=int, default=1, metavar="N",
        help="GPUs the job asked for (the rule's `gpu` resource); 0 runs COMMAND as is")
    add("--gpus", type=int, metavar="N", help="device count; overrides all discovery")
    add("--timeout", type=float, metavar="S", help="give up (exit 3) after S seconds")
    return p


def _run(argv: list[str]) -> int:
    if "--" not in argv and not {"-h", "--help"} & set(argv):
        raise UsageError("no command given; put it after '--'")
    cut = argv.index("--") if "--" in argv else len(argv)
    args, command = _parser().parse_args(argv[:cut]), argv[cut + 1:]  # --help exits here
    if not command:
        raise UsageError("no command after '--'; put the command to run after it")
    env = dict(os.environ)
    args.exclusive = args.exclusive or bool(args.exclusive_if)
    if args.need < 0:
        raise UsageError(f"--need must be >= 0, got {args.need}")
    if args.need == 0 or env.get("SLURM_JOB_ID"):
        # a CPU job, or Slurm already gave this job its devices (CUDA_VISIBLE_DEVICES)
        return _exec(command, env)
    if args.need > 1:
        raise UsageError(f"--need {args.need}: one job holds one device here; multi-GPU jobs "
                         f"need a scheduler that places them (profiles/slurm)")
    k = args.slots_per_gpu if args.slots_per_gpu is not None else \
        _int_env(env, "MEMREPRO_SLOTS_PER_GPU")
    k = 1 if k is None else k
    if k < 1:
        raise UsageError(f"slots per GPU must be >= 1, got {k}; fix --slots-per-gpu or "
                         f"MEMREPRO_SLOTS_PER_GPU")
    if args.timeout is not None and args.timeout < 0:
        raise UsageError(f"--timeout must be >= 0 seconds, got {args.timeout}")
    ids = device_ids(env, args.gpus)
    if shutil.which(command[0], path=env.get("PATH")) is None:
        print(f"gpu slot: command not found: {command[0]}", file=sys.stderr)
        return 127
    if ids:
        lock_dir = args.lock_dir or Path(env.get("MEMREPRO_SLOT_DIR") or LOCK_DIR)
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create lock dir {lock_dir}: {exc}; pass --lock-dir") from exc
        what = f"{'all' if args.exclusive else 'one'} of {k} slot(s) on a device in {lock_dir}"
        start = last_notice = time.monotonic()
        while (got := acquire(lock_dir, ids, k, args.exclusive)) is None:
            now = time.monotonic()
            if args.timeout is not None and now - start >= args.timeout:
                print(f"gpu slot: timed out after {args.timeout:g} s waiting for {what}; "
                      f"raise --timeout or free a device", file=sys.stderr)
                return 3
            if now - last_notice >= NOTICE_S:
                print(f"gpu slot: waiting {now - start:.0f} s for {what}", file=sys.stderr)
                last_notice = now
            time.sleep(POLL_S)
        dev, slot, fds = got
        for fd in fds:  # record the holder for whoever inspects the lock dir
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {' '.join(command)}\n".encode(), 0)
        held = f"all {k} slots, exclusive" if slot is None else f"slot {slot} of {k}"
        print(f"gpu slot: device {dev} ({held}) -> CUDA_VISIBLE_DEVICES={dev}", file=sys.stderr)
        env["CUDA_VISIBLE_DEVICES"] = dev
        env["MEMREPRO_GPU_SLOT"] = f"{dev}:{'all' if slot is None else slot}"
    else:
        print("gpu slot: no GPU found; running on CPU", file=sys.stderr)
    return _exec(command, env)


def _exec(command: list[str], env: dict[str, str]) -> int:
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)  # does not return; the locks pass to the command
    except OSError as exc:
        print(f"gpu slot: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see the module docstring. Returns an exit code on failure."""
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"bench.slots: error: {exc} (usage: {USAGE})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
