"""One cell, end to end: the plain training loop every end-to-end method uses.

    train_one_epoch(run, epoch)  ->  evaluate(run)  ->  run.end_epoch(record)

`run_cell` wraps it with what makes a cell a result: resume from the last epoch checkpoint,
OOM and divergence recorded as statuses, measurement, MLflow mirroring and an atomic
`result.json`.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import io
import json
import math
import os
import pickle
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import measure, metrics
from bench.config import ROOT, Cell, config_hash
from bench.data import DatasetSplits, DeviceLoader, load_dataset
from bench.methods import METHODS
from bench.methods.base import Method
from bench.models import build_model
from bench.tracking import TrackingError, brief_error, prepared_dataset, source_tags

SCHEMA_VERSION = 1
NAN_CHECK_EVERY = 50  # steps between divergence checks (each one syncs the device)
PROGRESS_EVERY_S = 10.0  # seconds between progress lines within an epoch
# Where a cell ran, beyond its resolved config, shapes a CPU result: torch splits reductions by
# thread count (one digits cell: val_acc 0.3167 with 1 thread, 0.3083 with 2) and another
# device runs other kernels. A job runs the config's `threads`, never fewer because Snakemake
# granted fewer cores (bench.cli._config_threads), so the count is the config's; neither is
# hashed (the plan cannot know the device `auto` resolves to on a node, and hashing threads
# would call every existing result stale): a changed `threads` reruns the cell through its
# config file, a checkpoint records both and a resume under others (a caller passing other
# `threads` to run_cell) starts the cell over (a new MLflow run; the old one is superseded).
ENVIRONMENT_KEYS = ("threads", "device", "device_name")

# Speed options (`train.precision`, `train.channels_last`), off by default: the papers' numbers
# are fp32. With `precision: bf16` the whole loop (training steps and evaluation) runs under
# torch.autocast(bfloat16) (no loss scaling: bf16 has fp32's range); parameters, gradients and
# optimizer state stay fp32. `channels_last` stores the model's 4-d weights and each training
# batch NHWC (faster convolutions on tensor cores). A cell run with either records them in
# result.json (`numerics`, and in `final` so the tables and report carry them), and memory
# claims refuse such cells (`numerics_refusal`).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
PAPER_NUMERICS: dict[str, Any] = {"precision": "fp32", "channels_last": False}


def numerics(train: dict[str, Any]) -> dict[str, Any]:
    """The cell's speed options: {"precision": "fp32" | "bf16", "channels_last": bool}."""
    return {"precision": str(train.get("precision", "fp32")),
            "channels_last": bool(train.get("channels_last", False))}


def check_numerics(train: dict[str, Any], device: torch.device) -> None:
    """A ConfigError for a precision this harness or this device cannot run."""
    from bench.errors import ConfigError

    precision = numerics(train)["precision"]
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, "
                          f"not {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision bf16 needs a GPU with bfloat16 support; "
                          f"{torch.cuda.get_device_name(device)} has none: use fp32")


def autocast(run: Run) -> Any:
    """The context the loop runs in: autocast to bf16 when `train.precision` asks for it."""
    dtype = PRECISIONS[numerics(run.cfg["train"])["precision"]]
    return torch.autocast(device_type=run.device.type, dtype=dtype or torch.float32,
                          enabled=dtype is not None)


def numerics_refusal(cells: Any, metric: str) -> str | None:
    """Hook for memory claims: why cells (a cells table: rows with optional `precision`
    column, as bench.aggregate writes it) cannot test a claim on `metric`, or None.

    Memory figures of a bf16 run are not the paper's (fp32) memory: a claim on a memory metric
    (`*_mib`, `*_bytes`) refuses cells computed in another precision. Accuracy claims accept
    them (the report marks them)."""
    if not metric.endswith(("_mib", "_bytes")):
        return None
    if cells is None or "precision" not in getattr(cells, "columns", ()):
        return None
    other = sorted({str(p) for p in cells["precision"] if isinstance(p, str)
                    and p != PAPER_NUMERICS["precision"]})
    if not other:
        return None
    return (f"memory claim on {metric}: some cells ran in {', '.join(other)}, not "
            f"{PAPER_NUMERICS['precision']} as the paper (drop train.precision to test it)")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything a method's hooks may touch while one cell trains."""

    cfg: dict[str, Any]
    cell: Cell
    device: torch.device
    data: DatasetSplits
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    method: Method
    generator: torch.Generator  # data order + augmentation; checkpointed
    train_loader: DeviceLoader
    out_dir: Path
    on_epoch: Callable[[Run, dict[str, Any]], None] = lambda run, record: None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # the next epoch to run
    steps_done: int = 0
    status: str = "ok"
    reason: str | None = None
    # accumulated over every session of the cell (a resumed cell keeps counting)
    timing: dict[str, float] = field(
        default_factory=lambda: {"train_s": 0.0, "eval_s": 0.0, "total_s": 0.0,
                                 "timed_images": 0.0, "timed_s": 0.0, "eval_images": 0.0}
    )
    static: dict[str, Any] = field(default_factory=dict)  # compute + static memory, measured once
    grad_tracker: metrics.GradNormTracker | None = None  # per-minibatch gradient norms
    grad_stats: dict[str, float] = field(default_factory=dict)  # the last epoch's, for methods

    def after_backward(self) -> None:
        """Called by `Method.training_step` between backward and the optimizer step."""
        if self.grad_tracker is not None:
            self.grad_tracker.update(self.model)

    @property
    def epochs(self) -> int:
        return int(self.cfg["epochs"])

    def set_lr(self, progress_epochs: float) -> float:
        """Set every param group's lr from the schedule at `progress_epochs` (epoch + fraction)."""
        train = self.cfg["train"]
        lr = train["lr"] * lr_factor(train, self.epochs, progress_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def evaluate(self) -> dict[str, float]:
        """Validation loss, accuracy and symmetric KL over the full validation split."""
        with measure.Stopwatch(self.device) as sw:
            out = metrics.validation_distribution_metrics(
                self.model, self.data, self.cfg["train"]["eval_batch_size"])
        self.timing["eval_s"] += sw.elapsed_s
        self.timing["eval_images"] += len(self.data.val_y)
        return out

    @property
    def resident_data_bytes(self) -> int:
        """Bytes of the dataset splits held on the training device (not in a paper's peak)."""
        d = self.data
        return measure.resident_bytes([d.train_x, d.train_y, d.val_x, d.val_y], self.device)

    def modelled_peak_mib(self, activation_bytes: int | None) -> float:
        """Params + grads + optimizer state + saved activations + method buffers, in MiB."""
        total = (measure.param_bytes(self.model) + measure.grad_bytes(self.model)
                 + measure.optimizer_state_bytes(self.optimizer) + self.method.buffer_bytes()
                 + (activation_bytes or 0))
        return total / measure.MIB

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Record a finished epoch: history, divergence check, checkpoint, tracking, progress."""
        record = {"epoch": self.epoch, **record}
        self.history.append(record)
        loss = record.get("train_loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            self.status, self.reason = "diverged", f"train loss became {loss} in epoch {self.epoch}"
        self.epoch += 1
        self.on_epoch(self, record)


def _max(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(a, b)


def lr_factor(train: dict[str, Any], epochs: int, progress: float) -> float:
    """Multiplier of the base lr at `progress` epochs into training."""
    warm = float(train["warmup_epochs"])
    if warm > 0 and progress < warm:
        return (progress + 1e-12) / warm
    if train["schedule"] == "cosine":
        span = max(epochs - warm, 1e-12)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warm) / span)))
    if train["schedule"] == "step":
        return float(train["step_gamma"]) ** sum(progress >= e for e in train["step_epochs"])
    return 1.0


# ----------------------------------------------------------------------------- the loop


def train_one_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass over the training split through the method's `training_step`.

    The first step of every epoch runs under the saved-tensor hooks (activation memory); the
    throughput clock starts after it and after the run's first `warmup_steps` steps.
    """
    model, device, method = run.model, run.device, run.method
    model.train()
    n_steps = len(run.train_loader)
    warmup = int(run.cfg["train"]["warmup_steps"])
    # parameters and buffers (BatchNorm running statistics) are model state, not activations
    state = [*model.parameters(), *model.buffers()]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    activation_bytes: int | None = None
    clock_start: float | None = None
    timed_images = 0
    last_print = time.perf_counter()
    # BatchNorm cannot normalise a batch of one image whose features are 1x1 (one value per
    # channel): a last batch of one is skipped, as `drop_last` would (one image of the epoch)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    channels_last = numerics(run.cfg["train"])["channels_last"]
    measure.sync(device)
    epoch_start = time.perf_counter()
    for step, (inputs, targets) in enumerate(run.train_loader):
        if has_bn and targets.shape[0] == 1 and step > 0:
            continue
        run.set_lr(epoch + step / n_steps)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)  # (B, C, H, W), NHWC
        if step == 0:
            out: dict[str, Any] = {}

            def first_step() -> None:
                out["r"] = method.training_step(run, inputs, targets)

            activation_bytes = measure.saved_activation_bytes(first_step, exclude=state)
            loss, logits = out["r"]
        else:
            loss, logits = method.training_step(run, inputs, targets)
        batch = targets.shape[0]
        loss_sum += loss.float() * batch
        correct += (logits.argmax(1) == targets).sum()
        seen += batch
        run.steps_done += 1
        if clock_start is not None:
            timed_images += batch
        elif run.steps_done >= warmup:
            measure.sync(device)
            clock_start = time.perf_counter()
        if (step + 1) % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
            break  # diverged: no point finishing the epoch
        now = time.perf_counter()
        if now - last_print > PROGRESS_EVERY_S:
            last_print = now
            log(f"  epoch {epoch + 1}/{run.epochs} step {step + 1}/{n_steps} "
                f"loss {loss_sum.item() / seen:.4f} ({seen / (now - epoch_start):.0f} img/s)")
    measure.sync(device)
    end = time.perf_counter()
    timed_s = end - clock_start if clock_start is not None else 0.0
    run.timing["train_s"] += end - epoch_start
    run.timing["timed_images"] += timed_images
    run.timing["timed_s"] += timed_s
    return {
        "train_loss": loss_sum.item() / max(seen, 1),
        "train_acc": correct.item() / max(seen, 1),
        "activation_bytes": activation_bytes,
        "epoch_train_s": end - epoch_start,
        "train_images_per_s": timed_images / timed_s if timed_s > 0 else None,
    }


def fit(run: Run) -> None:
    """The plain loop: phase -> train -> evaluate -> record, epoch by epoch."""
    ev = run.cfg["evaluation"]
    wanted = set(ev["metrics"])
    while run.epoch < run.epochs and run.status == "ok":
        epoch = run.epoch
        before = metrics.snapshot_params(run.model) if "elasticity" in wanted else None
        peak = measure.AcceleratorPeak(run.device)
        peak.start()
        epoch_start = time.perf_counter()
        phase = run.method.on_epoch_start(run, epoch)
        stats: dict[str, Any] = {}
        if run.method.steps_in(phase):
            stats = train_one_epoch(run, epoch)
        train_alloc, train_reserved = peak.stop()  # the phase's own work + the training steps
        run.grad_stats = run.grad_tracker.finish() if run.grad_tracker is not None else {}
        peak.start()
        val = run.evaluate()
        eval_alloc, eval_reserved = peak.stop()  # adversarial evaluation stays outside the peaks
        peak_alloc, peak_reserved = _max(train_alloc, eval_alloc), _max(train_reserved,
                                                                         eval_reserved)
        resident = run.resident_data_bytes
        extra: dict[str, Any] = {}
        if before is not None:
            extra["elasticity"] = metrics.elasticity(before, run.model.parameters())
        if "grad_variance" in wanted or run.method.needs_grad_norms:
            extra.update(run.grad_stats)
        adversarial = [m for m in ("fgsm_acc", "pgd_acc") if m in wanted]
        if adversarial and ((epoch + 1) % ev["adv_every"] == 0 or epoch + 1 == run.epochs):
            extra.update(metrics.compute_eval_metrics(
                adversarial, run.model, run.data, run.cfg["train"]["eval_batch_size"],
                {k: v for k, v in ev.items() if k not in ("metrics", "adv_every")}))
        act = stats.get("activation_bytes")
        record = {
            "phase": phase,
            "train_loss": stats.get("train_loss"),
            "train_acc": stats.get("train_acc"),
            **val,
            "lr": run.optimizer.param_groups[0]["lr"],
            "epoch_s": time.perf_counter() - epoch_start,
            "train_images_per_s": stats.get("train_images_per_s"),
            "peak_alloc_mib": peak_alloc,
            "peak_reserved_mib": peak_reserved,
            # paper-comparable: without the device-resident dataset, evaluation measured apart
            "peak_train_mib": measure.without_resident(train_alloc, resident),
            "peak_eval_mib": measure.without_resident(eval_alloc, resident),
            "activation_mib": act / measure.MIB if act is not None else None,
            # an epoch without steps (a rest phase) keeps no activations for backward
            "modelled_peak_mib": run.modelled_peak_mib(act),
            **extra,
            **run.method.on_epoch_end(run, epoch),
        }
        run.end_epoch(record)


# ----------------------------------------------------------------------------- the cell


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from bench.errors import ConfigError

        raise ConfigError(f"device '{name}' was asked for but CUDA is not available here; "
                          f"use device: auto or cpu")
    return device


def provenance(device: torch.device, threads: int) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    # The installed version, read without importing torchvision (3 s: it imports torch._dynamo);
    # no model needs it, and a bare GPU box (benchmarks/gpu_check.py) may lack it.
    try:
        vision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        vision = None
    cuda = device.type == "cuda"
    return {
        "git_sha": sha,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "torch": torch.__version__,
        "torchvision": vision,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor()
        or platform.machine(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads,
        **measure.cudnn_flags(),
    }


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write `path` all or nothing: a temp file beside it, fsync, rename. On a full or
    read-only file system the OSError propagates and no temp file is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=_json_default).encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save through `atomic_write_bytes` (serialised in memory first: torch's own zip
    writer reports a full disk as a RuntimeError and leaves its file behind)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (torch.Tensor,)):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def _clean(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null (the status says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


class Checkpoint:
    """`checkpoint.pt` beside the result: written atomically at every epoch boundary."""

    def __init__(self, out_dir: Path, environment: dict[str, Any] | None = None) -> None:
        self.path = out_dir / "checkpoint.pt"
        self.environment = environment  # ENVIRONMENT_KEYS of the session that saves

    def save(self, run: Run, tracking: dict[str, Any]) -> None:
        state = {
            "config_hash": config_hash(run.cfg),
            "epoch": run.epoch,
            "steps_done": run.steps_done,
            "history": run.history,
            "status": run.status,
            "reason": run.reason,
            "timing": run.timing,
            "static": run.static,
            "tracking": tracking,
            "environment": self.environment,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "method": run.method.state_dict(),
            "generator": run.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        atomic_torch_save(self.path, state)

    def load(self, expected_hash: str) -> dict[str, Any] | None:
        """The saved state, or None (no checkpoint, another config, or an unreadable file).

        `weights_only=True`: only tensors and plain data (dicts, lists, numbers, strings) are
        unpickled. A results folder may sit on a shared file system, and a planted
        checkpoint.pt must not run code: one holding anything else is refused, unread."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.set_aside(f"is refused: it holds objects other than tensors and plain data, "
                           f"and loading it could run code ({first[:300]})")
            return None
        except Exception as e:  # noqa: BLE001 - a truncated/corrupted file: start again
            self.set_aside(f"is unreadable ({type(e).__name__}: {str(e)[:300]})")
            return None
        if not isinstance(state, dict):
            self.set_aside("is unreadable (not a checkpoint)")
            return None
        if state.get("config_hash") != expected_hash:
            log(f"checkpoint {self.path} belongs to another config "
                f"({state.get('config_hash')} != {expected_hash}); starting from scratch")
            return None
        return state

    def set_aside(self, why: str) -> Path | None:
        """A damaged checkpoint: keep it for a post-mortem under another name
        (`checkpoint.damaged-<UTC time>.pt`, never read again) and say so; the cell then
        trains from scratch. Renamed rather than deleted, and never left as `checkpoint.pt`,
        where every rerun would stumble on it again."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"checkpoint.damaged-{stamp}.pt")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"checkpoint.damaged-{stamp}-{n}.pt")
        try:
            os.replace(self.path, aside)
        except OSError as e:
            log(f"checkpoint {self.path} {why}; it could not be set aside ({e.strerror}): "
                f"starting the cell from scratch (the next epoch's checkpoint replaces it)")
            return None
        log(f"checkpoint {self.path} {why}; set aside as {aside.name} (kept, never read "
            f"again): starting the cell from scratch")
        return aside

    @staticmethod
    def check_state(run: Run, state: dict[str, Any]) -> None:
        """A ValueError when a checkpoint of the right config cannot be this run's state:
        keys missing, or bookkeeping that contradicts itself (the weights are checked by
        loading them, see `restore`)."""
        missing = [k for k in ("epoch", "steps_done", "history", "status", "reason", "timing",
                               "static", "tracking", "model", "optimizer", "method",
                               "generator", "torch_rng", "cuda_rng") if k not in state]
        if missing:
            raise ValueError(f"keys missing: {', '.join(missing)}")
        epoch, history = state["epoch"], state["history"]
        # no bound by run.epochs: a method that owns its loop (block-wise training) counts
        # the epochs of every block, so its epoch runs past the configured per-block count
        if (not isinstance(epoch, int) or epoch < 0
                or not isinstance(history, list) or len(history) != epoch):
            raise ValueError(f"epoch {epoch!r} of {run.epochs} with "
                             f"{len(history) if isinstance(history, list) else '?'} epochs of "
                             f"history")
        if not isinstance(state["tracking"], dict) or not isinstance(state["model"], dict):
            raise ValueError("its tracking or model entry is not a mapping")

    def restore(self, run: Run, state: dict[str, Any]) -> None:
        """Load `state` into `run`; any error means the checkpoint does not fit this cell (the
        caller sets it aside and rebuilds the run: a failed load may have changed part of it)."""
        self.check_state(run, state)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.method.load_state_dict(state["method"])
        run.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        run.epoch, run.steps_done = state["epoch"], state["steps_done"]
        run.history, run.timing, run.static = state["history"], state["timing"], state["static"]
        run.status, run.reason = state["status"], state["reason"]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def measure_static(run: Run) -> dict[str, Any]:
    """Parameter memory and FLOPs per image, measured once on a copy of the model (so that
    BatchNorm statistics and RNG streams of the real run are untouched)."""
    import copy

    batch = min(8, len(run.data.train_y))
    inputs, targets = next(iter(DeviceLoader(
        run.data.train_x[:batch], run.data.train_y[:batch], batch, mean=run.data.mean,
        std=run.data.std, shuffle=False, augment=False, generator=None)))
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        flops = measure.count_flops(copy.deepcopy(run.model), inputs, targets)
    return {
        "params": sum(p.numel() for p in run.model.parameters()),
        **measure.per_image(flops, batch),
        "image_shape": list(run.data.train_x.shape[1:]),
        "param_bytes": measure.param_bytes(run.model),
        "grad_bytes": measure.grad_bytes(run.model),
    }


def build_run(cfg: dict[str, Any], out_dir: Path, device: torch.device) -> Run:
    cell = Cell(cfg["study"], cfg["method"], cfg["model"], cfg["dataset"], cfg["budget"],
                cfg["seed_index"])
    method = METHODS.get(cfg["method_impl"])(cfg["method_options"])
    data = load_dataset(cfg["dataset"], cfg["data"], Path(cfg["data_root"])).to(device)
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], data.num_classes, data.in_channels,
                        cfg["model_options"])
    if (cfg.get("inputs") or {}).get("init_checkpoint"):
        from bench.pretrain import load_backbone

        load_backbone(model, cfg["inputs"]["init_checkpoint"])  # the classifier stays new
    model = model.to(device)
    if numerics(cfg["train"])["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = method.build_optimizer(model, cfg["train"])
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg["seed"])
    d = cfg["data"]
    loader = DeviceLoader(data.train_x, data.train_y, cfg["train"]["batch_size"], mean=data.mean,
                          std=data.std, shuffle=True, augment=d["augment"],
                          crop_padding=d["crop_padding"], flip=d["flip"], generator=generator)
    wants_norms = method.needs_grad_norms or "grad_variance" in cfg["evaluation"]["metrics"]
    return Run(cfg=cfg, cell=cell, device=device, data=data, model=model, optimizer=optimizer,
               method=method, generator=generator, train_loader=loader, out_dir=out_dir,
               grad_tracker=metrics.GradNormTracker() if wants_norms else None)


def run_cell(cfg: dict[str, Any], out_path: Path, tracker: Any | None = None,
             threads: int | None = None, save_model: Path | None = None) -> dict[str, Any]:
    """Train one cell from its resolved config and write `out_path` (result.json) atomically.

    `threads` (default: the config's) overrides the torch thread count; the workflow's jobs
    always run the config's (see ENVIRONMENT_KEYS), and the result records what ran.

    `tracker` is a `bench.tracking.Tracker` or None (tracking off); `save_model`, if given,
    receives the final weights (state_dict) of a cell that ended ok. Returns the result dict.
    Unexpected errors propagate (the job fails, the checkpoint stays for a later resume);
    OOM and divergence are results.
    """
    session_start = time.perf_counter()
    threads = threads or int(cfg.get("threads", 1))
    torch.set_num_threads(threads)
    device = resolve_device(cfg.get("device", "auto"))
    torch.backends.cudnn.benchmark = bool(cfg["train"]["cudnn_benchmark"])
    check_numerics(cfg["train"], device)
    out_path = Path(out_path)
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    cell = Cell(cfg["study"], cfg["method"], cfg["model"], cfg["dataset"], cfg["budget"],
                cfg["seed_index"])
    chash = config_hash(cfg)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    prov = provenance(device, threads)
    tracking: dict[str, Any] = {"tracking_uri": None, "experiment_id": None, "run_id": None}
    log(f"cell {cell.cell_id} (config {chash}) on {device}, {threads} thread(s)")

    def start_tracking(resumed_run: str | None) -> None:
        if tracker is None:
            return
        tags = {**{f"axis.{k}": str(v) for k, v in cell.axes().items()},
                "config_hash": chash, "memrepro.version": "1", **source_tags(prov)}
        exp_id, run_id = tracker.call("start the cell's MLflow run", tracker.start_cell,
                                      cfg["study"], cell.cell_id, tags, cfg, resumed_run)
        if resumed_run and resumed_run != run_id:
            log(f"note: checkpoint named MLflow run {resumed_run}, the store has {run_id}")
        tracking.update(tracking_uri=tracker.uri, experiment_id=exp_id, run_id=run_id)

    method_cls = METHODS.get(cfg["method_impl"])
    ok, why = method_cls(cfg["method_options"]).supports(cfg)
    if not ok:
        start_tracking(None)
        if tracker is not None:
            tracking["synced"] = True
        result = _result(cfg, cell, chash, "skipped", why, [], {}, {}, {}, {}, prov, started,
                         None, tracking)
        _publish(result, out_path, tracker, tracking, cfg, "skipped", on_failure=None)
        log(f"skipped: {why}")
        return result

    environment = {k: prov[k] for k in ENVIRONMENT_KEYS}
    checkpoint = Checkpoint(out_dir, environment)
    mirror: _EpochMirror | None = None
    run: Run | None = None
    resumed_from: int | None = None
    status, reason = "ok", None
    try:
        run = build_run(cfg, out_dir, device)
        run.method.setup(run)
        state = checkpoint.load(chash)
        if state is not None and state.get("environment") != environment:
            log(f"checkpoint {checkpoint.path} was written with {state.get('environment')}, "
                f"this session runs with {environment}: starting the cell from scratch "
                f"(threads and device change a CPU result)")
            state = None
        if state is not None:
            try:
                checkpoint.restore(run, state)
            except Exception as e:  # noqa: BLE001 - right hash, wrong content: damaged
                if is_oom(e):
                    raise
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                checkpoint.set_aside(f"has this config's hash but does not fit the cell "
                                     f"({type(e).__name__}: {first})")
                state = None
                run = build_run(cfg, out_dir, device)  # the failed load changed part of it
                run.method.setup(run)
        if state is not None:
            resumed_from = run.epoch
            log(f"resuming from the checkpoint after epoch {run.epoch} of {run.epochs}")
        start_tracking(state["tracking"].get("run_id") if state else None)
        if tracker is not None:
            tracker.call("name the run's dataset", tracker.log_dataset, tracking["run_id"],
                         prepared_dataset(cfg["dataset"], run.data, cfg["data_root"]))
            mirror = _EpochMirror(tracker, tracking["run_id"])
            if run.history:  # epochs a previous session may not have logged
                mirror.catch_up(run.history)
        if not run.static:
            run.static = measure_static(run)

        def on_epoch(r: Run, record: dict[str, Any]) -> None:
            checkpoint.save(r, tracking)
            log(_epoch_line(r, record))
            if mirror is not None:
                mirror.epoch(r.history, record)

        run.on_epoch = on_epoch
        with autocast(run):
            if run.method.owns_loop:
                run.method.fit(run)
            else:
                fit(run)
        status, reason = run.status, run.reason
    except Exception as err:
        if not is_oom(err):
            if tracker is not None and tracking["run_id"] and not isinstance(err, TrackingError):
                try:
                    tracker.set_tags(tracking["run_id"],
                                     {"error": f"{type(err).__name__}: {err}"[:5000]})
                    tracker.finish(tracking["run_id"], "failed", [])
                except Exception as e:  # noqa: BLE001 - the cell's own error is the one to show
                    log(f"warning: could not mark the MLflow run failed ({brief_error(e)})")
            raise
        status, reason = "oom", f"out of memory: {str(err).splitlines()[0][:500]}"
        log(f"out of memory: {err}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if tracker is not None and not tracking["run_id"]:
            start_tracking(None)  # refused while building: the result still gets its run

    history = run.history if run else []
    if mirror is not None:
        # every epoch exactly once in the run before the result exists (waits for the server)
        try:
            mirror.sync(history)
        except TrackingError as e:
            raise TrackingError(
                f"{e}\n{_unsynced_message(cell, checkpoint, out_path, status)}") from None
        tracking["synced"] = True
    timing = dict(run.timing) if run else {}
    timing["total_s"] = timing.get("total_s", 0.0) + (time.perf_counter() - session_start)
    final, memory, compute = {}, {}, {}
    if run is not None:
        final = _final(run)
        memory = _memory(run)
        compute = {k: v for k, v in run.static.items() if k not in ("param_bytes", "grad_bytes")}
    result = _result(cfg, cell, chash, status, reason, history, final, memory, compute, timing,
                     prov, started, resumed_from, tracking)
    if save_model is not None and run is not None and status == "ok":
        atomic_torch_save(Path(save_model), run.model.state_dict())
    _publish(result, out_path, tracker, tracking, cfg, status,
             on_failure=_unsynced_message(cell, checkpoint, out_path, status))
    checkpoint.remove()
    log(f"done: status {status}" + (f" ({reason})" if reason else "")
        + (f", val_acc {final.get('val_acc'):.4f}" if final.get("val_acc") is not None else ""))
    return result


class _EpochMirror:
    """Mirrors each finished epoch to MLflow without ever stopping the training.

    A failed log (server down, timeout) prints a warning and marks the run as pending; while
    pending, each later epoch first probes the server and, once it answers, logs every epoch
    not yet in the run (`skip_logged`: an epoch the server did store before the connection
    broke is not logged twice). `sync` at the end of the cell waits for the server.
    """

    def __init__(self, tracker: Any, run_id: str) -> None:
        self.tracker, self.run_id = tracker, run_id
        self.pending = False  # some epochs may be missing from the run

    def epoch(self, history: list[dict[str, Any]], record: dict[str, Any]) -> None:
        n = record["epoch"] + 1
        if self.pending and not self.tracker.healthy():
            log(f"warning: MLflow server {self.tracker.uri} still unreachable; epoch {n} is kept "
                f"in the checkpoint and synced later")
            return
        self._log(history if self.pending else [record], skip_logged=self.pending,
                  what=f"epoch {n}")

    def catch_up(self, history: list[dict[str, Any]]) -> None:
        self._log(history, skip_logged=True, what="the resumed epochs")

    def _log(self, entries: list[dict[str, Any]], skip_logged: bool, what: str) -> None:
        was_pending = self.pending
        try:
            self.tracker.log_epochs(self.run_id, entries, skip_logged=skip_logged)
        except Exception as e:  # noqa: BLE001 - the training goes on whatever MLflow does
            self.pending = True
            log(f"warning: could not log {what} to MLflow ({brief_error(e)}); training goes "
                f"on, the run is synced before the result is written")
            return
        self.pending = False
        if was_pending:
            log(f"tracking: MLflow server {self.tracker.uri} is back; the run is in sync again")

    def sync(self, history: list[dict[str, Any]]) -> None:
        """Log every epoch not yet in the run, waiting for the server (`Tracker.call`)."""
        if not self.pending:
            return
        log("tracking: syncing the epochs MLflow missed")
        self.tracker.call("sync the cell's epochs to MLflow", self.tracker.log_epochs,
                          self.run_id, history, skip_logged=True)
        self.pending = False
        log("tracking: MLflow run synced")


def _unsynced_message(cell: Cell, checkpoint: Checkpoint, out_path: Path, status: str) -> str:
    """What a cell whose MLflow run could not be completed leaves behind, and what to do."""
    rerun = "Rerunning the cell (Snakemake's retries, or running it again)"
    if status in ("ok", "diverged") and checkpoint.path.exists():
        return (f"The training of cell {cell.cell_id} is finished (status {status}) and kept in "
                f"{checkpoint.path}; no {out_path.name} was written. {rerun} resumes from that "
                f"checkpoint without training again: it only syncs the MLflow run and writes "
                f"{out_path}.")
    return (f"Cell {cell.cell_id} ended with status {status}; no {out_path.name} was written. "
            f"{rerun} resumes from its last checkpoint (if any), syncs the MLflow run and "
            f"writes {out_path}.")


def _publish(result: dict[str, Any], out_path: Path, tracker: Any | None,
             tracking: dict[str, Any], cfg: dict[str, Any], status: str,
             on_failure: str | None) -> None:
    """Write `result.json` atomically; with tracking, only once its MLflow run is complete.

    The result is staged beside `out_path`, attached to the run (with config.json) and the run
    closed, then moved into place: a result file always has a finished run, and a failure
    (the server gone for longer than the tracker waits) leaves no result and raises
    `TrackingError` (`on_failure` appended to its message).
    """
    if tracker is None or not tracking.get("run_id"):
        atomic_write_json(out_path, result)
        return
    stage_dir = out_path.parent / f".{out_path.name}.staged"
    staged = stage_dir / out_path.name
    stage_dir.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_json(staged, result)

        def close_run() -> None:
            tracker.log_result(tracking["run_id"], result)  # final values, as latest metrics
            tracker.client.log_dict(tracking["run_id"], cfg, "config.json")
            tracker.finish(tracking["run_id"], status, [staged])

        try:
            tracker.call("close the cell's MLflow run", close_run)
        except TrackingError as e:
            raise TrackingError(f"{e}\n{on_failure}" if on_failure else str(e)) from None
        os.replace(staged, out_path)
    finally:
        staged.unlink(missing_ok=True)
        try:
            stage_dir.rmdir()
        except OSError:
            pass


def _epoch_line(run: Run, r: dict[str, Any]) -> str:
    def f(key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    return (f"epoch {r['epoch'] + 1}/{run.epochs} [{r['phase']}] train_loss {f('train_loss', '.4f')} "
            f"val_loss {f('val_loss', '.4f')} val_acc {f('val_acc', '.4f')} "
            f"{f('train_images_per_s', '.0f')} img/s {f('epoch_s', '.1f')} s")


def _final(run: Run) -> dict[str, Any]:
    last = run.history[-1] if run.history else {}
    trained = [h for h in run.history if h.get("train_loss") is not None]
    final = {
        "val_acc": last.get("val_acc"),
        "val_loss": last.get("val_loss"),
        "train_loss": trained[-1]["train_loss"] if trained else None,
        "train_acc": trained[-1]["train_acc"] if trained else None,
        "epochs": len(run.history),
    }
    # the last value of each evaluation metric (adversarial ones are always run in the last epoch)
    for key in ("sym_kl", "fgsm_acc", "pgd_acc"):
        values = [h[key] for h in run.history if h.get(key) is not None]
        if values:
            final[key] = values[-1]
    final.update(run.method.final_metrics(run))
    used = numerics(run.cfg["train"])
    if used != PAPER_NUMERICS:  # columns of the cells table only where speed options ran
        final.update(used)
    return final


def _memory(run: Run) -> dict[str, Any]:
    def peak(key: str) -> float | None:
        values = [h[key] for h in run.history if isinstance(h.get(key), (int, float))]
        return max(values) if values else None

    return {
        "param_mib": run.static["param_bytes"] / measure.MIB,
        "grad_mib": run.static["grad_bytes"] / measure.MIB,
        "optimizer_state_mib": measure.optimizer_state_bytes(run.optimizer) / measure.MIB,
        "activation_mib": peak("activation_mib"),
        "method_buffer_mib": run.method.buffer_bytes() / measure.MIB,
        "modelled_peak_mib": peak("modelled_peak_mib"),
        "peak_alloc_mib": peak("peak_alloc_mib"),
        "peak_reserved_mib": peak("peak_reserved_mib"),
        "peak_train_mib": peak("peak_train_mib"),
        "peak_eval_mib": peak("peak_eval_mib"),
        "resident_data_mib": run.resident_data_bytes / measure.MIB,
        "batch_size": run.cfg["train"]["batch_size"],
    }


def _result(cfg: dict[str, Any], cell: Cell, chash: str, status: str, reason: str | None,
            history: list[dict[str, Any]], final: dict[str, Any], memory: dict[str, Any],
            compute: dict[str, Any], timing: dict[str, Any], prov: dict[str, Any], started: str,
            resumed_from: int | None, tracking: dict[str, Any]) -> dict[str, Any]:
    timed_s = timing.pop("timed_s", 0.0)
    timed_images = timing.pop("timed_images", 0.0)
    eval_images = timing.pop("eval_images", 0.0)
    if timing:
        timing["train_images_per_s"] = timed_images / timed_s if timed_s > 0 else None
        timing["eval_images_per_s"] = (eval_images / timing["eval_s"]
                                       if timing.get("eval_s") else None)
        timing["timed_images"] = int(timed_images)
        timing["warmup_steps"] = cfg["train"]["warmup_steps"]
    finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return _clean({
        "schema_version": SCHEMA_VERSION,
        "cell_id": cell.cell_id,
        "axes": cell.axes(),
        "status": status,
        "reason": reason,
        "config": cfg,
        "config_hash": chash,
        "numerics": numerics(cfg["train"]),
        "history": history,
        "final": final,
        "memory": memory,
        "compute": compute,
        "timing": timing,
        "provenance": {**prov, "started": started, "finished": finished,
                       "resumed_from_epoch": resumed_from},
        "mlflow": tracking,
    })
