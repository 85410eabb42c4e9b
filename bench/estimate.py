"""Grid-cost estimate: what a configuration costs before it runs.

    python -m bench plan --estimate --configfile config/paper.yaml [--cores N] [--gpus N]

1. Profile. The cells are grouped by what their time depends on: model (and its options),
   input shape, number of classes, batch sizes and the method's *family*, the class attributes
   that change how it trains (`owns_loop`, `needs_ranking`, `needs_grad_norms`,
   `sizes_to_budget`, and per-step gradient-norm tracking); names are never looked at. For
   each group the first cell is run for real, once, on the current device
   (`bench.train.run_cell`, tracking off) on synthetic data of the same shape, truncated to
   `steps` batches an epoch and one evaluation batch, for two epochs; its clocks give the
   training and evaluation time per image, the per-epoch time outside them (a method's own
   passes, the checkpoint) and the fixed rest (model build, FLOP count, a method's own
   profiling). On a CPU the run's batches are capped and a large model is profiled at a
   reduced width, its times scaled by the FLOP ratio (CPU_MAX_FORWARD_FLOPS): each distinct
   shape costs seconds, so the paper config's estimate takes about two minutes on 2 cores.
   Adversarial evaluation (fgsm/pgd) is timed apart on the same shapes. Upstream stages (the
   pretrain rule's cells, registered upstream stages such as a layer ranking) are profiled
   the same way, and every job pays a measured process start-up (Python, torch and, with
   tracking on, MLflow), measured beside the profiling.
2. Project. Per cell: start-up + fixed + epochs x (n_train x train/img + n_val x eval/img)
   + adversarial passes; per study and in total as the sum of its jobs (device-hours).
3. Schedule. The jobs (data checks, upstream stages, cells, aggregations, report) are
   list-scheduled on the slots the run will have (`--cores` / threads per cell; on a GPU
   machine also GPUs x slots per GPU, an exclusive study's cell taking a whole GPU) in
   dependency order, longest remaining path first, to give the projected wall time.

Clocks: on a CPU device a cell's time is its process CPU time (user + sys) divided by its
threads: on a shared machine the wall clock also counts the time spent waiting for a core,
which the run it projects will not (on an idle machine the two agree for one thread); on a
GPU, the synchronised wall clock. Both projections are printed.
Nothing here names a study: families come from class attributes, extra passes from the
configuration (evaluation metrics, pretrain and ranking blocks).
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.config import (
    EVAL_DEFAULTS,
    CellResolver,
    canonical_json,
    plan,
    pretrain_spec,
    ranking_spec,
)
from bench.errors import ConfigError, DataError

MIB = 2**20
ADVERSARIAL = ("fgsm_acc", "pgd_acc")
FAMILY_FLAGS = ("owns_loop", "needs_ranking", "needs_grad_norms", "sizes_to_budget")
# Datasets that may be absent where the estimate runs (no download yet): their split sizes,
# channels, native image size and classes, as torchvision ships them.
NOMINAL_DATASETS: dict[str, tuple[int, int, int, int, int]] = {
    "cifar10": (50_000, 10_000, 3, 32, 10),
    "cifar100": (50_000, 10_000, 3, 32, 100),
}
REPORT_S_PER_STUDY = 10.0  # [ours] figures and tables of one study, on top of its start-up


# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class DataShape:
    """What a cell's time depends on in its data: split sizes and one image's shape."""

    n_train: int
    n_val: int
    channels: int
    size: int
    num_classes: int
    nominal: bool = False  # sizes from NOMINAL_DATASETS (the files were not loadable here)
    load_s: float = 0.0  # time loading it took (the data check job's work)

    @property
    def bytes(self) -> int:
        """uint8 pixels of both splits (what a cell keeps on the device)."""
        return (self.n_train + self.n_val) * self.channels * self.size * self.size


def data_shape(dataset: str, options: dict[str, Any], data_root: str) -> DataShape:
    """Load the dataset (its real sizes after `classes` and subsets), or, when its files are
    not here, take NOMINAL_DATASETS; anything else cannot be estimated and says so."""
    from bench.data import load_dataset

    t0 = time.perf_counter()
    try:
        d = load_dataset(dataset, options, Path(data_root))
    except (DataError, OSError, ImportError) as e:
        if dataset not in NOMINAL_DATASETS:
            raise ConfigError(f"cannot estimate: dataset '{dataset}' does not load here ({e})"
                              ) from None
        return nominal_shape(dataset, options)
    return DataShape(d.n_train, d.n_val, d.in_channels, d.image_size, d.num_classes,
                     load_s=time.perf_counter() - t0)


def nominal_shape(dataset: str, options: dict[str, Any]) -> DataShape:
    """The shape of a NOMINAL_DATASETS dataset under `options` (image_size, classes, subsets),
    without its files."""
    if dataset not in NOMINAL_DATASETS:
        raise ConfigError(f"no nominal shape for dataset '{dataset}' (known: "
                          f"{', '.join(NOMINAL_DATASETS)})")
    n_train, n_val, channels, size, classes = NOMINAL_DATASETS[dataset]
    kept = options.get("classes")
    if kept:
        n_train, n_val = n_train * len(kept) // classes, n_val * len(kept) // classes
        classes = len(kept)
    n_train = min(n_train, options.get("train_subset") or n_train)
    n_val = min(n_val, options.get("val_subset") or n_val)
    return DataShape(n_train, n_val, channels, options.get("image_size") or size, classes,
                     nominal=True)


# ----------------------------------------------------------------------------- families


def method_family(cls: type, wants_grad_norms: bool = False) -> str:
    """A method's cost family from its class attributes: 'owns_loop+sizes_to_budget', ...,
    or 'backprop' for the harness's plain loop with nothing extra."""
    flags = [f for f in FAMILY_FLAGS if getattr(cls, f, False)]
    if wants_grad_norms and "needs_grad_norms" not in flags:
        flags.append("grad_norms")
    return "+".join(flags) or "backprop"


@dataclass
class Profile:
    """Measured costs of one group of jobs (seconds; images of the truncated runs)."""

    key: str
    model: str
    shape: list[int]  # (C, H, W)
    num_classes: int
    batch: int
    family: str
    kind: str  # cell | pretrain | stage:<name>
    steps: int
    fixed_s: float = 0.0  # once per job: model build, FLOP count, a method's own set-up
    epoch_s: float = 0.0  # once per epoch, whatever the data size: the checkpoint
    train_s_per_image: float = 0.0
    eval_s_per_image: float = 0.0
    adv_s_per_image: dict[str, float] = field(default_factory=dict)
    wall_fixed_s: float = 0.0
    wall_epoch_s: float = 0.0
    wall_train_s_per_image: float = 0.0
    wall_eval_s_per_image: float = 0.0
    modelled_peak_mib: float | None = None
    peak_alloc_mib: float | None = None  # minus the truncated run's dataset
    profile_s: float = 0.0  # wall time this profile took
    note: str = ""


@dataclass
class Job:
    name: str
    study: str | None
    kind: str  # prepare | pretrain | stage | cell | aggregate | report
    seconds: float  # busy time projected (CPU: CPU time / threads; GPU: wall)
    wall_seconds: float  # the same from wall clocks measured here
    deps: list[str] = field(default_factory=list)
    gpu: bool = False
    exclusive: bool = False
    threads: int = 1
    peak_mib: float | None = None
    modelled_peak_mib: float | None = None


# ----------------------------------------------------------------------------- measuring


class _Clock:
    """Wall and own-CPU time of a block of this process."""

    def __enter__(self) -> _Clock:  # noqa: PYI034
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def _run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU s, wall s) of one child process, from its own rusage (`os.wait4`): exact even
    while other children or this process's profiling run beside it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stderr=err)
    return usage.ru_utime + usage.ru_stime, wall


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                         os.environ.get("PYTHONPATH", "")])}


def startup_s(tracking: bool) -> tuple[float, float]:
    """(CPU s, wall s) of starting a cell's processes: `python -m bench.slots` (execs) and a
    Python that imports what `python -m bench train` imports (and MLflow with tracking on),
    and `torch._dynamo`, which torch's optimizers import on a process's first step (~1-2 s:
    the profiles, all in this process, pay it once)."""
    modules = ("import bench.cli, bench.train, torch._dynamo"
               + (", bench.tracking, mlflow" if tracking else ""))
    cmds = [[sys.executable, "-m", "bench.slots", "--need", "0", "--", sys.executable, "-c",
             "pass"], [sys.executable, "-c", modules]]
    cpu = wall = 0.0
    for cmd in cmds:
        c, w = _run_measured(cmd, _env())
        cpu, wall = cpu + c, wall + w
    return cpu, wall


def import_s(module: str) -> tuple[float, float]:
    """(CPU s, wall s) of a Python that imports `module` (an aggregate or report job's start)."""
    return _run_measured([sys.executable, "-c", f"import {module}"], _env())


class _Background:
    """The start-up measurements (a few Python processes, ~3 s of CPU each), run in a thread
    while the profiles run: they need no result of the profiling, and on 2 cores the estimate
    would otherwise spend ~15 s waiting for them first."""

    def __init__(self, tracking: bool) -> None:
        import threading

        self.out: dict[str, tuple[float, float]] = {}
        self.error: BaseException | None = None
        self.tasks = [("startup", lambda: startup_s(tracking)),
                      ("aggregate", lambda: import_s("bench.aggregate")),
                      ("report", lambda: import_s("bench.report"))]
        if tracking:
            self.tasks.append(("tracking", lambda: import_s("bench.tracking, mlflow")))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for name, task in self.tasks:
                self.out[name] = task()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            self.error = e

    def result(self) -> dict[str, tuple[float, float]]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.out


def _synthetic(cfg_data: dict[str, Any], shape: DataShape, n_train: int, n_val: int
               ) -> dict[str, Any]:
    """Data options of a synthetic dataset shaped like `shape` (augmentation kept)."""
    from bench.data import LOADER_OPTIONS

    return {**{k: cfg_data[k] for k in LOADER_OPTIONS if k in cfg_data},
            "n_train": n_train, "n_val": n_val, "num_classes": shape.num_classes,
            "channels": shape.channels, "image_size": shape.size}


def _slug(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _marginal(first: float, both: float) -> float:
    """One more epoch of a clock: `both - first`, or the first epoch's time when the difference
    is lost in the noise of a busy machine (less than half of it)."""
    return both - first if both - first > 0.5 * first else first


def _busy(clock: _Clock, threads: int, gpu: bool) -> float:
    return clock.wall if gpu else clock.cpu / max(1, threads)


# On a CPU, what a profile run may cost: every job group's run is capped to batches of
# CPU_MAX_BATCH training and CPU_MAX_EVAL validation images, and a model whose forward pass
# costs more than CPU_MAX_FORWARD_FLOPS per image is profiled at the width that brings it to
# CPU_PROBE_FORWARD_FLOPS, its times scaled up by the FLOP ratio (FLOPs grow as width
# squared). The default config's groups stay whole (batches <= 64, forward passes <= 40
# MFLOP per image); the paper config's full-width VGG, CIFAR ResNet-18 and WRN-28-4 are
# profiled at 1/5 to 1/8 width, so that its 15 groups profile in about a minute on 2 cores,
# where at full size the estimate gave nothing within 15 minutes.
# CPU time per FLOP is higher at a narrow width, so a scaled projection leans high; its peak
# memory is not projected (printed as -). On a GPU the runs keep the cell's batches and width.
CPU_MAX_BATCH = 64
CPU_MAX_EVAL = 64
CPU_MAX_FORWARD_FLOPS = 50e6
CPU_PROBE_FORWARD_FLOPS = 25e6


_FLOPS: dict[str, float | None] = {}


def forward_flops(model: str, options: dict[str, Any], channels: int, size: int,
                  classes: int) -> float | None:
    """FLOPs of one image's forward pass, counted on the meta device (no memory, no compute);
    None when the model cannot run there."""
    key = canonical_json([model, options, channels, size, classes])
    if key not in _FLOPS:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from bench.models import build_model

        try:
            with torch.device("meta"), torch.random.fork_rng(devices=[]):
                net = build_model(model, classes, channels, options).eval()
                with FlopCounterMode(display=False) as counter, torch.no_grad():
                    net(torch.empty(1, channels, size, size))  # (B, C, H, W)
            _FLOPS[key] = float(counter.get_total_flops()) or None
        except Exception:  # noqa: BLE001 - a model the meta device cannot run: no scaling
            _FLOPS[key] = None
    return _FLOPS[key]


def probe_options(model: str, options: dict[str, Any], shape: DataShape, gpu: bool
                  ) -> tuple[dict[str, Any], float]:
    """(model options to profile with, factor to scale the measured times by): the cell's own
    and 1.0, or on a CPU, for a model above CPU_MAX_FORWARD_FLOPS, a narrower width and the
    FLOP ratio (see CPU_MAX_FORWARD_FLOPS)."""
    if gpu:
        return options, 1.0
    full = forward_flops(model, options, shape.channels, shape.size, shape.num_classes)
    if full is None or full <= CPU_MAX_FORWARD_FLOPS:
        return options, 1.0
    width = float(options.get("width", 1.0))
    probe = {**options, "width": width * math.sqrt(CPU_PROBE_FORWARD_FLOPS / full)}
    small = forward_flops(model, probe, shape.channels, shape.size, shape.num_classes)
    if not small:
        return options, 1.0
    return probe, full / small


def _capped(train: dict[str, Any], gpu: bool) -> dict[str, Any]:
    if gpu:
        return dict(train)
    return {**train, "batch_size": min(int(train["batch_size"]), CPU_MAX_BATCH),
            "eval_batch_size": min(int(train["eval_batch_size"]), CPU_MAX_EVAL)}


def _truncated_cell(cfg: dict[str, Any], shape: DataShape, steps: int, epochs: int,
                    ranking: str | None, gpu: bool = False,
                    model_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cell on synthetic data of its shape: `steps` batches an epoch and one evaluation
    batch (two on a GPU), batches and width capped on a CPU (CPU_MAX_*)."""
    cfg = copy.deepcopy(cfg)
    cfg["train"] = {**_capped(cfg["train"], gpu), "warmup_steps": 0}
    batch = int(cfg["train"]["batch_size"])
    n_val = max(1, min(shape.n_val, (2 if gpu else 1) * int(cfg["train"]["eval_batch_size"])))
    cfg["dataset"] = "synthetic"
    cfg["data"] = _synthetic(cfg["data"], shape, max(1, min(shape.n_train, steps * batch)), n_val)
    cfg["epochs"] = epochs
    cfg["inputs"] = {"ranking": ranking} if ranking else {}
    if model_options is not None:
        cfg["model_options"] = model_options
    ev = cfg["evaluation"]
    cfg["evaluation"] = {**ev, "metrics": [m for m in ev["metrics"] if m not in ADVERSARIAL]}
    return cfg


class _CheckpointClock:
    """Time spent saving checkpoints (`bench.train.Checkpoint.save`) while it is entered: a
    per-epoch cost of every job that the epochs' own clocks do not hold."""

    def __enter__(self) -> _CheckpointClock:  # noqa: PYI034
        from bench import train

        self.s = 0.0
        self._cls, self._save = train.Checkpoint, train.Checkpoint.save
        clock = self

        def save(ckpt: Any, *args: Any, **kw: Any) -> None:
            t0 = time.perf_counter()
            try:
                clock._save(ckpt, *args, **kw)
            finally:
                clock.s += time.perf_counter() - t0

        self._cls.save = save  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self._cls.save = self._save  # type: ignore[method-assign]


PROFILE_EPOCHS = 2


def profile_cell(cfg: dict[str, Any], shape: DataShape, steps: int, device: Any,
                 work: Path, key: str, family: str, kind: str = "cell",
                 ranking: str | None = None) -> Profile:
    """Run the cell truncated (`_truncated_cell`) for two epochs, once, and read its clocks:
    training per image (the steps after each epoch's first, which runs under the
    saved-tensor hooks; a method that owns its loop: all of its training time), evaluation
    per image, per epoch what lies outside both (a method's own per-epoch passes, the
    checkpoint), and the rest of the run as the job's fixed part (model build, FLOP count, a
    method's own profiling)."""
    from bench.train import run_cell

    threads = int(cfg.get("threads", 1))
    gpu = device.type == "cuda"
    options, scale = probe_options(cfg["model"], cfg["model_options"], shape, gpu)
    t0 = time.perf_counter()
    small = _truncated_cell(cfg, shape, steps, PROFILE_EPOCHS, ranking, gpu, options)
    out = work / _slug(key) / "result.json"
    shutil.rmtree(out.parent, ignore_errors=True)
    with _Clock() as clock, _CheckpointClock() as saves:
        result = run_cell(small, out, tracker=None, threads=threads)
    if result["status"] != "ok":
        raise ConfigError(f"cannot estimate {cfg['study']}/{cfg['method']}: its profile "
                          f"run ended {result['status']} ({result['reason']})")
    n, v = small["data"]["n_train"], small["data"]["n_val"]
    timing = result["timing"]
    epochs = PROFILE_EPOCHS
    in_epochs = sum(h.get("epoch_s") or 0.0 for h in result["history"])
    steady = timing.get("train_images_per_s")
    if "owns_loop" not in family and steady:
        train_w = 1.0 / steady
    else:
        train_w = timing["train_s"] / (epochs * n)
    eval_rate = timing.get("eval_images_per_s")
    eval_w = 1.0 / eval_rate if eval_rate else timing["eval_s"] / (epochs * v)
    epoch_w = (max(0.0, in_epochs - timing["train_s"] - timing["eval_s"]) + saves.s) / epochs
    fixed_w = max(0.0, clock.wall - in_epochs - saves.s)
    # the share of the busy time in the wall time (CPU: CPU time / threads; GPU: 1)
    ratio = _busy(clock, threads, gpu) / clock.wall
    mem = result.get("memory") or {}
    alloc = mem.get("peak_alloc_mib")
    if alloc is not None:
        alloc -= (n + v) * shape.channels * shape.size * shape.size / MIB
    whole = scale == 1.0 and small["train"]["batch_size"] == cfg["train"]["batch_size"]
    note = "" if scale == 1.0 else (f"profiled at width {options['width']:.3g}, "
                                    f"times x{scale:.1f} (FLOP ratio)")
    return Profile(
        key=key, model=cfg["model"], shape=[shape.channels, shape.size, shape.size],
        num_classes=shape.num_classes, batch=int(cfg["train"]["batch_size"]), family=family,
        kind=kind, steps=steps,
        fixed_s=fixed_w * ratio * scale, epoch_s=epoch_w * ratio * scale,
        train_s_per_image=train_w * ratio * scale, eval_s_per_image=eval_w * ratio * scale,
        wall_fixed_s=fixed_w * scale, wall_epoch_s=epoch_w * scale,
        wall_train_s_per_image=train_w * scale, wall_eval_s_per_image=eval_w * scale,
        modelled_peak_mib=mem.get("modelled_peak_mib") if whole else None,
        peak_alloc_mib=alloc if whole else None,
        profile_s=time.perf_counter() - t0, note=note)


def profile_adversarial(cfg: dict[str, Any], shape: DataShape, device: Any,
                        names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(busy, wall) seconds per validation image of each adversarial metric of the cell (on a
    CPU on at most 16 images and the probe width, scaled: see CPU_MAX_FORWARD_FLOPS)."""
    import torch

    from bench import metrics
    from bench.data import load_dataset
    from bench.models import build_model

    threads = int(cfg.get("threads", 1))
    torch.set_num_threads(threads)
    gpu = device.type == "cuda"
    options, scale = probe_options(cfg["model"], cfg["model_options"], shape, gpu)
    batch = int(cfg["train"]["eval_batch_size"])
    v = max(1, min(shape.n_val, batch if gpu else 16))
    data = load_dataset("synthetic", _synthetic(cfg["data"], shape, 8, v)).to(device)
    model = build_model(cfg["model"], data.num_classes, data.in_channels,
                        options).to(device).eval()
    opts = {k: val for k, val in cfg["evaluation"].items() if k not in ("metrics", "adv_every")}
    opts["adv_max_images"] = None
    out = {}
    for name in names:
        metrics.compute_eval_metrics([name], model, data, batch, opts)  # warm-up
        with _Clock() as clock:
            metrics.compute_eval_metrics([name], model, data, batch, opts)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        out[name] = (_busy(clock, threads, gpu) / v * scale, clock.wall / v * scale)
    return out


def profile_stage(stage: str, spec: dict[str, Any], shape: DataShape, steps: int,
                  device: Any, work: Path, key: str) -> tuple[Profile, str]:
    """Run a registered upstream stage (e.g. a layer ranking) on truncated synthetic data for
    1 and 2 epochs (on a CPU capped as the cells: CPU_MAX_*); returns its profile and the file
    it wrote (a cell of a method that reads it can then be profiled)."""
    import bench.studies  # noqa: F401  (studies register their upstream stages)
    from bench.pretrain import UPSTREAM_STAGES

    run = UPSTREAM_STAGES.get(stage)
    threads = int(spec.get("threads", 1) or 1)
    gpu = device.type == "cuda"
    options, scale = probe_options(spec["model"], spec["model_options"], shape, gpu)
    train = _capped(spec["train"], gpu)
    batch = int(train["batch_size"])
    n = max(1, min(shape.n_train, steps * batch))
    clocks = []
    out = work / _slug(key) / f"{stage}.json"
    t0 = time.perf_counter()
    for epochs in (1, 2):
        small = {**copy.deepcopy(spec), "dataset": "synthetic", "init_checkpoint": None,
                 "data": _synthetic(spec["data"], shape, n, 8), "data_root": str(work),
                 "train": train, "model_options": options}
        small["ranking"] = {**small.get("ranking", {}), "epochs": epochs}
        out.parent.mkdir(parents=True, exist_ok=True)
        with _Clock() as clock:
            run(small, out, threads=threads, device=str(device))
        clocks.append(clock)
    c1, c2 = clocks
    marginal = _marginal(c1.wall, c2.wall)
    ratio = (_busy(c1, threads, gpu) / c1.wall + _busy(c2, threads, gpu) / c2.wall) / 2
    fixed = max(0.0, c1.wall - marginal)
    prof = Profile(key=key, model=spec["model"], shape=[shape.channels, shape.size, shape.size],
                   num_classes=shape.num_classes, batch=int(spec["train"]["batch_size"]),
                   family=f"stage:{stage}", kind=f"stage:{stage}", steps=steps,
                   fixed_s=fixed * ratio * scale, train_s_per_image=marginal * ratio * scale / n,
                   wall_fixed_s=fixed * scale, wall_train_s_per_image=marginal * scale / n,
                   profile_s=time.perf_counter() - t0,
                   note="" if scale == 1.0 else f"profiled at width {options['width']:.3g}, "
                                                f"times x{scale:.1f} (FLOP ratio)")
    return prof, str(out)


# ----------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    device: str
    cores: int
    gpus: int
    slots_per_gpu: int
    cells_at_once: int
    startup_s: float
    profiles: list[Profile]
    jobs: list[Job]
    wall_s: float  # projected wall time of the whole grid (busy clock)
    wall_s_from_wall_clock: float  # the same with the wall clocks measured here
    critical_path_s: float
    profile_wall_s: float
    nominal_datasets: list[str]
    estimate_wall_s: float = 0.0  # the whole estimate, start-ups and profiling included

    def per_study(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for job in self.jobs:
            if job.study is None:
                continue
            s = out.setdefault(job.study, {"cells": 0, "jobs": 0, "busy_s": 0.0,
                                           "cell_busy_s": 0.0, "peak_mib": None,
                                           "modelled_peak_mib": None, "gpu_s": 0.0})
            s["jobs"] += 1
            s["busy_s"] += job.seconds
            if job.gpu:
                s["gpu_s"] += job.seconds
            if job.kind == "cell":
                s["cells"] += 1
                s["cell_busy_s"] += job.seconds
                for k, v in (("peak_mib", job.peak_mib), ("modelled_peak_mib",
                                                          job.modelled_peak_mib)):
                    if v is not None:
                        s[k] = max(s[k] or 0.0, v)
        return out

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k not in ("jobs",)},
                "per_study": self.per_study(),
                "jobs": [asdict(j) for j in self.jobs]}


def estimate(cfg: dict[str, Any], *, cores: int | None = None, gpus: int | None = None,
             slots_per_gpu: int | None = None, steps: int = 3,
             progress: Callable[[str], None] = lambda line: None) -> Estimate:
    """Profile, project and schedule the grid of a checked configuration (module docstring).

    `progress` gets a line when the profiling starts (how many job groups) and one per group
    (`[i/n]`, what and how long it took)."""
    import torch

    from bench.methods import METHODS
    from bench.train import resolve_device

    t_start = time.perf_counter()
    device = resolve_device(cfg["device"])
    gpu = device.type == "cuda"
    threads = int(cfg["threads"])
    cores = cores or os.cpu_count() or 1
    if gpus is None:
        gpus = torch.cuda.device_count() if gpu else 0
    slots_per_gpu = slots_per_gpu or int(os.environ.get("MEMREPRO_SLOTS_PER_GPU") or 1)
    tracking = bool(cfg["tracking"]["enabled"])
    background = _Background(tracking)  # process start-ups, measured beside the profiling
    resolver = CellResolver(cfg)
    cells = plan(cfg)
    shapes: dict[tuple[str, str], DataShape] = {}  # (dataset, its options) -> shape
    profiles: dict[str, Profile] = {}
    adversarial: dict[str, dict[str, tuple[float, float]]] = {}
    stage_files: dict[str, str] = {}

    def shape_of(dataset: str, options: dict[str, Any]) -> DataShape:
        k = (dataset, canonical_json(options))
        if k not in shapes:
            shapes[k] = data_shape(dataset, options, cfg["data_root"])
        return shapes[k]

    # 1. What runs: each job with the group (profile key) its time comes from, in the order
    # the groups must be profiled (an upstream stage before the cells that read its file).
    # Jobs are projected once every group is profiled and the start-ups are measured.
    @dataclass
    class Pending:
        job: Job
        key: str
        epochs: int
        shape: DataShape
        adv_key: str | None = None
        adv_epochs: int = 0
        adv_images: int = 0
        evaluate: bool = True

    # key -> (what, profiles it): profiled in insertion order
    groups: dict[str, tuple[str, Callable[[], None]]] = {}
    pending: list[Pending] = []
    prepared: dict[tuple[str, str], str] = {}
    prepare_jobs: list[tuple[Job, DataShape]] = []
    for cell in cells:  # data checks: one job per (study, dataset), as rules/data.smk
        k = (cell.study, cell.dataset)
        if k not in prepared:
            prepared[k] = f"prepare_data:{cell.study}/{cell.dataset}"
            prepare_jobs.append((Job(prepared[k], cell.study, "prepare", 0.0, 0.0),
                                 shape_of(cell.dataset, resolver.resolve(cell)["data"])))

    work = Path(tempfile.mkdtemp(prefix="memrepro-estimate-"))
    try:
        upstream: dict[str, list[str]] = defaultdict(list)  # a cell's input file -> job
        for cell in cells:  # upstream stages: pretrain per (study, model), ranking per dataset
            r = resolver.resolve(cell)
            ck = r["inputs"].get("init_checkpoint")
            if ck and ck not in upstream and pretrain_spec(cfg, cell.study, cell.model):
                spec = pretrain_spec(cfg, cell.study, cell.model)
                shp = shape_of(spec["dataset"], spec["data"])
                pcfg = _pretrain_cell(spec, cfg)
                key = _key(pcfg, shp, "pretrain")
                groups.setdefault(key, (f"pretrain {cell.study}/{cell.model}", partial(
                    _profile_into, profiles, key,
                    lambda pcfg=pcfg, shp=shp, key=key: profile_cell(
                        pcfg, shp, steps, device, work, key, "backprop", kind="pretrain"))))
                name = f"pretrain:{cell.study}/{cell.model}"
                pending.append(Pending(Job(name, cell.study, "pretrain", 0.0, 0.0, gpu=gpu,
                                           threads=threads), key, spec["epochs"], shp))
                upstream[ck] = [name]
            rk = r["inputs"].get("ranking")
            if rk and rk not in upstream:
                spec = ranking_spec(cfg, cell.study, cell.model, cell.dataset)
                shp = shape_of(cell.dataset, r["data"])
                key = _key({**r, "method": "rank_layers"}, shp, "stage:rank_layers")

                def stage(spec: dict = spec, shp: DataShape = shp, key: str = key) -> Profile:
                    prof, stage_files[key] = profile_stage(
                        "rank_layers", {**spec, "threads": threads}, shp, steps, device, work,
                        key)
                    return prof

                groups.setdefault(key, (f"stage rank_layers {cell.study}/{cell.model}",
                                        partial(_profile_into, profiles, key, stage)))
                name = f"rank_layers:{cell.study}/{cell.model}/{cell.dataset}"
                deps = [prepared[(cell.study, cell.dataset)]]
                if spec["init_checkpoint"] in upstream:
                    deps += upstream[spec["init_checkpoint"]]
                pending.append(Pending(Job(name, cell.study, "stage", 0.0, 0.0, deps=deps,
                                           gpu=gpu, threads=threads), key,
                                       spec["ranking"]["epochs"], shp, evaluate=False))
                upstream[rk] = [name]

        for cell in cells:
            r = resolver.resolve(cell)
            cls = METHODS.get(r["method_impl"])
            wants = cls.needs_grad_norms or "grad_variance" in r["evaluation"]["metrics"]
            family = method_family(cls, wants)
            shp = shape_of(cell.dataset, r["data"])
            key = _key(r, shp, family)
            if key not in groups:
                rank_key = _key({**r, "method": "rank_layers"}, shp, "stage:rank_layers")
                groups[key] = (
                    f"{family} {cell.model} {shp.channels}x{shp.size}x{shp.size} batch "
                    f"{r['train']['batch_size']} (as {cell.cell_id})",
                    partial(_profile_into, profiles, key,
                            lambda r=r, shp=shp, key=key, family=family, rank_key=rank_key,
                            ranked=cls.needs_ranking: profile_cell(
                                r, shp, steps, device, work, key, family,
                                ranking=stage_files.get(rank_key) if ranked else None)))
            adv = [m for m in r["evaluation"]["metrics"] if m in ADVERSARIAL]
            akey = (key + canonical_json(r["evaluation"])) if adv else None
            if akey and akey not in groups:
                groups[akey] = (f"adversarial {', '.join(adv)} {cell.model}",
                                partial(_profile_into, adversarial, akey,
                                        lambda r=r, shp=shp, adv=adv: profile_adversarial(
                                            r, shp, device, adv)))
            ev = {**EVAL_DEFAULTS, **r["evaluation"]}
            n_adv_epochs = (r["epochs"] // ev["adv_every"]
                            + (1 if r["epochs"] % ev["adv_every"] else 0)) if adv else 0
            deps = [prepared[(cell.study, cell.dataset)]]
            for path in r["inputs"].values():
                deps += upstream.get(path, [])
            exclusive = bool(cfg["studies"][cell.study].get("device_exclusive", False))
            pending.append(Pending(
                Job(f"train:{cell.cell_id}", cell.study, "cell", 0.0, 0.0, deps=deps, gpu=gpu,
                    exclusive=exclusive and gpu, threads=threads), key, r["epochs"], shp,
                akey, n_adv_epochs, min(shp.n_val, ev["adv_max_images"] or shp.n_val)))

        # 2. Profile each group once.
        t_profile = time.perf_counter()
        progress(f"{len(cells)} cells: profiling {len(groups)} job groups (model x input x "
                 f"batch x method family, {PROFILE_EPOCHS} epochs of {steps} steps each"
                 f"{'' if gpu else ', capped for a CPU'})")
        for i, (what, run) in enumerate(groups.values(), 1):
            progress(f"  [{i}/{len(groups)}] profiling {what} ...")
            t0 = time.perf_counter()
            run()
            progress(f"  [{i}/{len(groups)}] {time.perf_counter() - t0:.1f} s")
        profile_wall = time.perf_counter() - t_profile
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # 3. Project every job.
    measured = background.result()
    start_cpu, start_wall = measured["startup"]
    start = start_wall if gpu else start_cpu
    progress(f"job start-up: {start_cpu:.1f} s CPU, {start_wall:.1f} s wall")
    jobs: list[Job] = []
    for job, shp in prepare_jobs:
        job.seconds, job.wall_seconds = start + shp.load_s, start_wall + shp.load_s
        jobs.append(job)
    for item in pending:
        p = profiles[item.key]
        adv = adversarial.get(item.adv_key, {}) if item.adv_key else {}
        item.job.seconds, item.job.wall_seconds = _project(
            p, item.epochs, item.shape, start, start_wall, adv, item.adv_epochs,
            item.adv_images, evaluate=item.evaluate)
        if item.job.kind != "stage":
            item.job.peak_mib = _peak(p, item.shape)
            item.job.modelled_peak_mib = p.modelled_peak_mib
        jobs.append(item.job)
    for item in pending:  # the profiles table shows a group's adversarial costs
        if item.adv_key and item.adv_key in adversarial:
            profiles[item.key].adv_s_per_image = {m: v[0] for m, v
                                                  in adversarial[item.adv_key].items()}

    # aggregation per study and the report (their start-up measured; the work is small)
    if tracking:  # onstart: the MLflow store and the studies' experiments, before any job
        t_cpu, t_wall = measured["tracking"]
        jobs.insert(0, Job("init_tracking", None, "prepare", t_cpu, t_wall))
        for j in jobs[1:]:
            j.deps.append("init_tracking")
    agg_cpu, agg_wall = measured["aggregate"]
    rep_cpu, rep_wall = measured["report"]
    for study in cfg["studies"]:
        deps = [j.name for j in jobs if j.study == study and j.kind == "cell"]
        jobs.append(Job(f"aggregate:{study}", study, "aggregate", agg_cpu, agg_wall, deps=deps))
    n = len(cfg["studies"])
    jobs.append(Job("report", None, "report", rep_cpu + REPORT_S_PER_STUDY * n,
                    rep_wall + REPORT_S_PER_STUDY * n,
                    deps=[f"aggregate:{s}" for s in cfg["studies"]]))
    at_once = max(1, cores // max(1, min(threads, cores)))
    if gpu:
        at_once = min(at_once, max(1, gpus) * slots_per_gpu)
    wall_s, critical = schedule(jobs, cores=cores, gpus=gpus, slots_per_gpu=slots_per_gpu,
                                busy=True)
    wall_clock_s, _ = schedule(jobs, cores=cores, gpus=gpus, slots_per_gpu=slots_per_gpu,
                               busy=False)
    return Estimate(device=_device_name(device), cores=cores, gpus=gpus,
                    slots_per_gpu=slots_per_gpu, cells_at_once=at_once, startup_s=start,
                    profiles=list(profiles.values()), jobs=jobs, wall_s=wall_s,
                    wall_s_from_wall_clock=wall_clock_s, critical_path_s=critical,
                    profile_wall_s=profile_wall,
                    nominal_datasets=sorted({d for (d, _), s in shapes.items() if s.nominal}),
                    estimate_wall_s=time.perf_counter() - t_start)


def _profile_into(into: dict[str, Any], key: str, run: Callable[[], Any]) -> None:
    """Profile one group (`run()`) into `into[key]`."""
    into[key] = run()


def _pretrain_cell(spec: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """The cell `bench.pretrain.pretrain` runs for `spec` (plain SGD on the upstream task)."""
    from bench.methods import METHODS

    return {
        "study": spec["study"], "method": "pretrain", "method_impl": "sgd",
        "model": spec["model"], "dataset": spec["dataset"], "budget": "none",
        "seed_index": 0, "seed": spec["seed"], "reference": "pretrain",
        "epochs": spec["epochs"], "train": spec["train"], "data": spec["data"],
        "model_options": spec["model_options"],
        "method_options": METHODS.get("sgd").resolve_options({}),
        "metrics": ["val_acc", "val_loss"], "evaluation": dict(EVAL_DEFAULTS), "inputs": {},
        "device": cfg["device"], "threads": cfg["threads"], "data_root": spec["data_root"],
    }


def _key(r: dict[str, Any], shp: DataShape, family: str) -> str:
    """What a job's time depends on: model and options, input shape, batches, family, and its
    method for the families whose loop or batch is the method's own. Each distinct shape is
    profiled once: not per number of classes (the classifier is a sliver of the work) nor per
    budget (a method sized to its budget trains the same layers at another batch; per image
    about the same cost)."""
    parts = [r["model"], canonical_json(r["model_options"]),
             f"{shp.channels}x{shp.size}x{shp.size}",
             str(r["train"]["batch_size"]), str(r["train"]["eval_batch_size"]), family,
             canonical_json({k: r["train"].get(k) for k in ("precision", "channels_last")})]
    if "owns_loop" in family or "sizes_to_budget" in family:
        parts += [r.get("method_impl", ""), canonical_json(r.get("method_options", {}))]
    return "|".join(parts)


def _project(p: Profile, epochs: int, shp: DataShape, start: float, start_wall: float,
             adv: dict[str, tuple[float, float]], adv_epochs: int, adv_images: int,
             evaluate: bool = True) -> tuple[float, float]:
    """(busy s, wall s) of one job: start-up + fixed + epochs x per-image costs + adversarial."""
    n_val = shp.n_val if evaluate else 0
    busy = (start + p.fixed_s + epochs * (p.epoch_s + shp.n_train * p.train_s_per_image
                                          + n_val * p.eval_s_per_image)
            + adv_epochs * adv_images * sum(v[0] for v in adv.values()))
    wall = (start_wall + p.wall_fixed_s
            + epochs * (p.wall_epoch_s + shp.n_train * p.wall_train_s_per_image
                        + n_val * p.wall_eval_s_per_image)
            + adv_epochs * adv_images * sum(v[1] for v in adv.values()))
    return busy, wall


def _peak(p: Profile, shp: DataShape) -> float | None:
    """Projected accelerator peak: the profile's, with the real dataset on the device."""
    if p.peak_alloc_mib is None:
        return None
    return p.peak_alloc_mib + shp.bytes / MIB


def _device_name(device: Any) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


# ----------------------------------------------------------------------------- scheduling


def schedule(jobs: Sequence[Job], *, cores: int, gpus: int, slots_per_gpu: int,
             busy: bool = True) -> tuple[float, float]:
    """(makespan s, critical path s) of list-scheduling `jobs` in dependency order, longest
    remaining path first: a job takes `threads` of `cores` and, on a GPU machine, one of
    gpus x slots_per_gpu slots (an exclusive one all slots of a GPU); cells sharing a GPU run
    at 1/k of their profiled speed (no overlap assumed)."""
    by_name = {j.name: j for j in jobs}
    length = {j.name: (j.seconds if busy else j.wall_seconds) for j in jobs}
    children: dict[str, list[str]] = defaultdict(list)
    for j in jobs:
        for d in j.deps:
            if d in by_name:
                children[d].append(j.name)
    tail: dict[str, float] = {}

    def rest(name: str) -> float:  # longest path from the start of `name` to the end
        if name not in tail:
            tail[name] = length[name] + max((rest(c) for c in children[name]), default=0.0)
        return tail[name]

    for j in jobs:
        rest(j.name)
    critical = max(tail.values(), default=0.0)
    waiting = {j.name: sum(1 for d in j.deps if d in by_name) for j in jobs}
    ready = [(-tail[n], n) for n, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    gpu_slots = max(1, gpus) * slots_per_gpu
    free_cores, free_slots, now = cores, gpu_slots, 0.0
    running: list[tuple[float, str]] = []
    blocked: list[tuple[float, str]] = []
    while ready or running or blocked:
        for item in blocked:
            heapq.heappush(ready, item)
        blocked = []
        while ready:
            prio, name = heapq.heappop(ready)
            j = by_name[name]
            need_cores = min(j.threads, cores)
            need_slots = (slots_per_gpu if j.exclusive else 1) if j.gpu else 0
            if need_cores <= free_cores and need_slots <= free_slots:
                free_cores -= need_cores
                free_slots -= need_slots
                sharing = slots_per_gpu if j.gpu and not j.exclusive else 1
                heapq.heappush(running, (now + length[name] * sharing, name))
            else:
                blocked.append((prio, name))
        if not running:
            break
        now, name = heapq.heappop(running)
        j = by_name[name]
        free_cores += min(j.threads, cores)
        free_slots += (slots_per_gpu if j.exclusive else 1) if j.gpu else 0
        for c in children[name]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (-tail[c], c))
    return now, critical


# ----------------------------------------------------------------------------- printing


def _hms(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _num(x: float | None, fmt: str) -> str:
    return format(x, fmt) if x is not None else "-"


def render(est: Estimate, configfile: str = "") -> str:
    """The estimate as text: profiles, per study, total."""
    gpus = f", {est.gpus} GPU(s) x {est.slots_per_gpu} slot(s)" if est.gpus else ""
    of = f" of {configfile}" if configfile else ""
    lines = [
        f"grid-cost estimate{of} on {est.device}",
        (f"  slots: --cores {est.cores}{gpus}: {est.cells_at_once} cell(s) at once; "
         f"job start-up {est.startup_s:.1f} s"),
        "",
        "profiles (each job group run for real once, truncated, for 2 epochs):",
        (f"  {'kind/family':34s} {'model':18s} {'input':10s} {'batch':>5s} "
         f"{'ms/img train':>12s} {'ms/img eval':>11s} {'fixed s':>8s} {'peak MiB':>9s}"),
    ]
    for p in est.profiles:
        fam = p.family if p.kind == "cell" else p.kind
        peak = p.peak_alloc_mib if p.peak_alloc_mib is not None else p.modelled_peak_mib
        lines.append(f"  {fam[:34]:34s} {p.model[:18]:18s} {'x'.join(map(str, p.shape)):10s} "
                     f"{p.batch:5d} {1e3 * p.train_s_per_image:12.3f} "
                     f"{1e3 * p.eval_s_per_image:11.3f} {p.fixed_s:8.1f} {_num(peak, '9.1f'):>9s}"
                     + (f"  ({p.note})" if p.note else ""))
    lines += [
        "",
        ("per study (device-hours: the busy time of its jobs; peak per cell: the projected "
         "accelerator peak, on CPU the modelled one):"),
        (f"  {'study':20s} {'cells':>6s} {'jobs':>5s} {'device-hours':>12s} "
         f"{'mean cell':>10s} {'peak MiB/cell':>13s}"),
    ]
    total = 0.0
    for study, s in est.per_study().items():
        total += s["busy_s"]
        peak = s["peak_mib"] if s["peak_mib"] is not None else s["modelled_peak_mib"]
        mean = s["cell_busy_s"] / s["cells"] if s["cells"] else 0.0
        lines.append(f"  {study[:20]:20s} {s['cells']:6d} {s['jobs']:5d} "
                     f"{s['busy_s'] / 3600:12.2f} {_hms(mean):>10s} {_num(peak, '13.1f'):>13s}")
    total += sum(j.seconds for j in est.jobs if j.study is None)
    unit = "GPU-hours" if est.gpus else "device-hours (CPU)"
    lines += ["", (f"total: {total / 3600:.2f} {unit}; projected wall time {_hms(est.wall_s)} "
                   f"with {est.cells_at_once} cell(s) at once (critical path "
                   f"{_hms(est.critical_path_s)}; from this machine's wall clocks "
                   f"{_hms(est.wall_s_from_wall_clock)}); profiling took "
                   f"{_hms(est.profile_wall_s)}, the whole estimate {_hms(est.estimate_wall_s)}")]
    if est.nominal_datasets:
        lines.append(f"note: {', '.join(est.nominal_datasets)} not loadable here: their nominal "
                     f"sizes were used")
    return "\n".join(lines)


def dumps(est: Estimate) -> str:
    def default(o: Any) -> Any:
        return o if not isinstance(o, float) or math.isfinite(o) else None

    return json.dumps(est.to_json(), indent=1, default=default)


__all__ = ["Estimate", "Profile", "data_shape", "estimate", "method_family", "nominal_shape",
           "profile_adversarial", "render", "schedule"]
