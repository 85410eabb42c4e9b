"""What the two Rest-Wake methods share (METHODS.md in this folder).

Each epoch is WAKE (ordinary SGD; the gradient norm of every minibatch is tracked) or REST (no
gradient step). After a WAKE epoch a compressed (fp16) snapshot of the weights is pushed into a
bounded buffer M on the host. A REST epoch sets the weights to the mean of the snapshots
("consolidation"), recomputes the BatchNorm running statistics with one no-grad pass over the
training set, and collapses M to that single consolidated snapshot ("compression"). Never two
REST epochs in a row, a REST needs at least `min_snapshots` snapshots, and the last epoch of a
run is always WAKE (the final accuracy is never a weight average that `sgd` does not get).

With `device_mean` (the improved variant) one running fp16 mean of the snapshots in M (the at
most K most recent) is kept on the training device: m <- m + (theta - m) / k while M fills
(k = its size), and m <- m + (theta - theta_dropped) / K once a push drops M's oldest snapshot
(that snapshot goes to the device one tensor at a time, at the end of the WAKE epoch). So m is
always the mean of M, as a REST of the original computes it on the host, and consolidation
reads it without a host transfer: one fp16 copy of the weights on the device.

The paper's equations and Table 1 are missing; every choice here is ours [ours] and an option.
The subclasses differ in *when* to rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.data import DeviceLoader
from bench.errors import ConfigError
from bench.methods.base import Method
from bench.studies.restwake.rule import REST, WAKE

if TYPE_CHECKING:
    from bench.train import Run

__all__ = ["REST", "WAKE", "RestWakeBase", "RunningMean", "SnapshotBuffer", "recompute_batchnorm"]


class SnapshotBuffer:
    """At most `capacity` fp16 copies of a model's parameters, oldest dropped first."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.device = device
        self.snapshots: list[list[torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.snapshots)

    def push(self, params: Iterable[torch.Tensor]) -> list[torch.Tensor] | None:
        """Add a snapshot; returns the oldest one when it was dropped (M was full), else None."""
        self.snapshots.append([p.detach().to(self.device, torch.float16, copy=True) for p in params])
        if len(self.snapshots) > self.capacity:
            return self.snapshots.pop(0)
        return None

    def mean(self) -> list[torch.Tensor]:
        """Per-parameter mean of the snapshots, accumulated in fp32."""
        total = [s.float() for s in self.snapshots[0]]
        for snap in self.snapshots[1:]:
            for acc, s in zip(total, snap, strict=True):
                acc += s.float()
        return [t / len(self.snapshots) for t in total]

    def compress(self, consolidated: list[torch.Tensor]) -> None:
        """Collapse the buffer to one snapshot (the consolidated weights)."""
        self.snapshots = [[t.to(self.device, torch.float16, copy=True) for t in consolidated]]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for snap in self.snapshots for t in snap)

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": [[t.cpu() for t in snap] for snap in self.snapshots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = [[t.to(self.device) for t in snap] for snap in state["snapshots"]]


class RunningMean:
    """One fp16 running mean of the snapshots of a bounded buffer, on `device`: `update(theta)`
    does m <- m + (theta - m) / k with k the number of snapshots averaged so far;
    `update(theta, dropped)`, when the buffer dropped its oldest snapshot `dropped` to take
    theta, does m <- m + (theta - dropped) / k (k unchanged): a sliding mean over the buffer's
    snapshots. `reset(theta)` starts again from one snapshot (k = 1). Each tensor's update goes
    through fp32."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mean: list[torch.Tensor] = []
        self.k = 0

    @torch.no_grad()
    def reset(self, params: Iterable[torch.Tensor]) -> None:
        self.mean = [p.detach().to(self.device, torch.float16, copy=True) for p in params]
        self.k = 1

    @torch.no_grad()
    def update(self, params: Iterable[torch.Tensor],
               dropped: list[torch.Tensor] | None = None) -> None:
        params = list(params)
        if dropped is not None:
            if self.k == 0:
                raise ValueError("RunningMean.update: a dropped snapshot with an empty mean "
                                 "(the mean must follow the buffer from its first push)")
            for m, p, old in zip(self.mean, params, dropped, strict=True):
                mf = m.float()
                mf += (p.detach().to(self.device, torch.float32)
                       - old.to(self.device, torch.float32)) / self.k
                m.copy_(mf)
            return
        if self.k == 0:
            self.reset(params)
            return
        self.k += 1
        for m, p in zip(self.mean, params, strict=True):
            mf = m.float()
            mf += (p.detach().to(self.device, torch.float32) - mf) / self.k
            m.copy_(mf)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.mean)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": [t.cpu() for t in self.mean], "k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = [t.to(self.device) for t in state["mean"]]
        self.k = int(state["k"])


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, loader: DeviceLoader) -> int:
    """Re-estimate every BatchNorm's running statistics from scratch with one pass over
    `loader` (cumulative average: momentum None), in train mode, without gradients.
    Returns the number of BatchNorm layers reset."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        for inputs, _ in loader:
            model(inputs)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


class RestWakeBase(Method):
    """WAKE/REST epochs with a snapshot buffer; subclasses decide when to rest."""

    metrics = ("rest_epochs", "wake_epochs", "rest_fraction", "last_phase")
    defaults: dict[str, Any] = {
        "buffer_capacity": 3,  # K: snapshots kept in M [ours]
        "buffer_device": "host",  # host | device: where M lives (device memory counts in the peak)
        "device_mean": False,  # keep a running fp16 mean of the snapshots on the device [ours]
        "min_snapshots": 2,  # a REST needs at least this many snapshots in M [ours]
        "bn_recompute": True,  # re-estimate BatchNorm statistics after consolidation [ours]
        "bn_batch_size": None,  # batch of that pass; None: the training batch size [ours]
        "last_epoch_wake": True,  # the final epoch is WAKE (no end-of-run weight average)
    }

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        if self.options["buffer_device"] not in ("host", "device"):
            raise ConfigError(f"method '{self.name}': buffer_device must be 'host' or 'device', "
                              f"not {self.options['buffer_device']!r}")
        self.buffer: SnapshotBuffer | None = None
        self.running: RunningMean | None = None
        self.phases: list[str] = []
        self.next_phase = WAKE

    def setup(self, run: Run) -> None:
        device = run.device if self.options["buffer_device"] == "device" else torch.device("cpu")
        self.buffer = SnapshotBuffer(int(self.options["buffer_capacity"]), device)
        self.running = RunningMean(run.device) if self.options["device_mean"] else None
        bn_batch = self.options["bn_batch_size"] or run.cfg["train"]["batch_size"]
        self._bn_loader = DeviceLoader(run.data.train_x, run.data.train_y, int(bn_batch),
                                       mean=run.data.mean, std=run.data.std, shuffle=False,
                                       augment=False, generator=None)

    # -- the loop's hooks ----------------------------------------------------------------

    def can_rest(self, run: Run, epoch: int) -> bool:
        """The constraints every variant obeys: enough snapshots, no two RESTs in a row, and
        the last epoch WAKE."""
        assert self.buffer is not None
        last = self.phases[-1] if self.phases else None
        if self.options["last_epoch_wake"] and epoch >= run.epochs - 1:
            return False
        return last != REST and len(self.buffer) >= int(self.options["min_snapshots"])

    def wants_rest(self, run: Run, epoch: int) -> bool:
        """Whether this variant's schedule asks for REST at `epoch` (subclasses)."""
        raise NotImplementedError

    def choose_phase(self, run: Run, epoch: int) -> str:
        return REST if self.wants_rest(run, epoch) and self.can_rest(run, epoch) else WAKE

    def on_epoch_start(self, run: Run, epoch: int) -> str:
        phase = self.choose_phase(run, epoch)
        if phase == REST:
            self.rest(run)
        self.phases.append(phase)
        return phase

    def steps_in(self, phase: str) -> bool:
        return phase == WAKE

    def consolidated(self) -> list[torch.Tensor]:
        """The weights a REST sets: the device running mean, or the mean of M."""
        assert self.buffer is not None
        if self.running is not None and self.running.k > 0:
            return self.running.mean
        return self.buffer.mean()

    def rest(self, run: Run) -> None:
        """Consolidate to the snapshot mean, re-estimate BatchNorm, compress the buffer."""
        assert self.buffer is not None
        consolidated = self.consolidated()
        with torch.no_grad():
            for p, mean in zip(run.model.parameters(), consolidated, strict=True):
                p.copy_(mean.to(p.device, p.dtype))
        if self.options["bn_recompute"]:
            recompute_batchnorm(run.model, self._bn_loader)
        self.buffer.compress(consolidated)
        if self.running is not None:
            self.running.k = 1  # m is the consolidated snapshot already

    def on_epoch_end(self, run: Run, epoch: int) -> dict[str, Any]:
        assert self.buffer is not None
        phase = self.phases[-1]
        if phase == WAKE:
            dropped = self.buffer.push(run.model.parameters())
            if self.running is not None:  # m follows M: the mean of its (at most K) snapshots
                self.running.update(run.model.parameters(), dropped)
        self.next_phase = self.decide_next(run, epoch, phase)
        return {"buffer_snapshots": len(self.buffer), "buffer_mib": self.buffer.nbytes() / 2**20,
                "device_mean_k": self.running.k if self.running is not None else None,
                "rest": 1.0 if phase == REST else 0.0, **self.epoch_metrics()}

    def decide_next(self, run: Run, epoch: int, phase: str) -> str:
        """After an epoch: what the next one should be (used by adaptive subclasses)."""
        return WAKE

    def epoch_metrics(self) -> dict[str, Any]:
        return {}

    def final_metrics(self, run: Run) -> dict[str, Any]:
        rests = self.phases.count(REST)
        return {"rest_epochs": rests, "wake_epochs": self.phases.count(WAKE),
                "rest_fraction": rests / len(self.phases) if self.phases else None,
                "last_phase": self.phases[-1] if self.phases else None}

    def buffer_bytes(self) -> int:
        """Device bytes beyond the model's state: M when it lives on the device, plus the
        running mean (`device_mean`)."""
        total = 0
        if self.buffer is not None and self.options["buffer_device"] == "device":
            total += self.buffer.nbytes()
        if self.running is not None:
            total += self.running.nbytes()
        return total

    # -- checkpointing -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict() if self.buffer else None,
                "running": self.running.state_dict() if self.running else None,
                "phases": list(self.phases), "next_phase": self.next_phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("buffer") is not None and self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        if state.get("running") is not None and self.running is not None:
            self.running.load_state_dict(state["running"])
        self.phases = list(state.get("phases", []))
        self.next_phase = state.get("next_phase", WAKE)
