"""What the two Rest-Wake methods share (seed 000; ../shared/METHODS.md, study `restwake`).

Each epoch is WAKE (ordinary SGD; the gradient norm of every minibatch is tracked) or REST (no
gradient step). After a WAKE epoch a compressed (fp16) snapshot of the weights is pushed into a
bounded buffer M. A REST epoch sets the weights to the mean of the snapshots in M
("consolidation"), recomputes the BatchNorm running statistics with one no-grad pass over the
training set, and collapses M to that single consolidated snapshot ("compression"). Never two
REST epochs in a row, and a REST needs at least `min_snapshots` snapshots.

The paper's equations and Table 1 are missing; every choice here is ours [ours] and an option.
The subclasses differ in *when* to rest and in where the buffer lives.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bench.data import DeviceLoader
from bench.methods.base import Method

if TYPE_CHECKING:
    from bench.train import Run

WAKE, REST = "wake", "rest"


class SnapshotBuffer:
    """At most `capacity` fp16 copies of a model's parameters, oldest dropped first."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.device = device
        self.snapshots: list[list[torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.snapshots)

    def push(self, params: Iterable[torch.Tensor]) -> None:
        self.snapshots.append([p.detach().to(self.device, torch.float16, copy=True) for p in params])
        if len(self.snapshots) > self.capacity:
            self.snapshots.pop(0)

    def mean(self) -> list[torch.Tensor]:
        """Per-parameter mean of the snapshots, accumulated in fp32."""
        total = [s.float() for s in self.snapshots[0]]
        for snap in self.snapshots[1:]:
            for acc, s in zip(total, snap, strict=True):
                acc += s.float()
        return [t / len(self.snapshots) for t in total]

    def compress(self, consolidated: list[torch.Tensor]) -> None:
        """Collapse the buffer to one snapshot (the consolidated weights)."""
        self.snapshots = [[t.to(self.device, torch.float16) for t in consolidated]]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for snap in self.snapshots for t in snap)

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": [[t.cpu() for t in snap] for snap in self.snapshots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = [[t.to(self.device) for t in snap] for snap in state["snapshots"]]


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

    metrics = ("rest_epochs", "wake_epochs")
    defaults: dict[str, Any] = {
        "buffer_capacity": 3,  # K: snapshots kept in M [ours]
        "buffer_device": "host",  # host | device: where M lives (device memory counts in the peak)
        "min_snapshots": 2,  # a REST needs at least this many snapshots in M [ours]
        "bn_recompute": True,  # re-estimate BatchNorm statistics after consolidation [ours]
    }

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        if self.options["buffer_device"] not in ("host", "device"):
            from bench.errors import ConfigError

            raise ConfigError(f"method '{self.name}': buffer_device must be 'host' or 'device', "
                              f"not {self.options['buffer_device']!r}")
        self.buffer: SnapshotBuffer | None = None
        self.phases: list[str] = []
        self.next_phase = WAKE

    def setup(self, run: Run) -> None:
        device = run.device if self.options["buffer_device"] == "device" else torch.device("cpu")
        self.buffer = SnapshotBuffer(int(self.options["buffer_capacity"]), device)
        self._bn_loader = DeviceLoader(run.data.train_x, run.data.train_y,
                                       run.cfg["train"]["eval_batch_size"], mean=run.data.mean,
                                       std=run.data.std, shuffle=False, augment=False,
                                       generator=None)

    # -- the loop's hooks ----------------------------------------------------------------

    def can_rest(self) -> bool:
        assert self.buffer is not None
        last = self.phases[-1] if self.phases else None
        return last != REST and len(self.buffer) >= int(self.options["min_snapshots"])

    def choose_phase(self, run: Run, epoch: int) -> str:
        """The phase of `epoch` (subclasses)."""
        raise NotImplementedError

    def on_epoch_start(self, run: Run, epoch: int) -> str:
        phase = self.choose_phase(run, epoch)
        if phase == REST:
            self.rest(run)
        self.phases.append(phase)
        return phase

    def steps_in(self, phase: str) -> bool:
        return phase == WAKE

    def rest(self, run: Run) -> None:
        """Consolidate to the buffer mean, re-estimate BatchNorm, compress the buffer."""
        assert self.buffer is not None
        consolidated = self.buffer.mean()
        with torch.no_grad():
            for p, mean in zip(run.model.parameters(), consolidated, strict=True):
                p.copy_(mean.to(p.device, p.dtype))
        if self.options["bn_recompute"]:
            recompute_batchnorm(run.model, self._bn_loader)
        self.buffer.compress(consolidated)

    def on_epoch_end(self, run: Run, epoch: int) -> dict[str, Any]:
        assert self.buffer is not None
        phase = self.phases[-1]
        if phase == WAKE:
            self.buffer.push(run.model.parameters())
        self.next_phase = self.decide_next(run, epoch, phase)
        return {"buffer_snapshots": len(self.buffer), "buffer_mib": self.buffer.nbytes() / 2**20,
                "rest": 1.0 if phase == REST else 0.0, **self.epoch_metrics()}

    def decide_next(self, run: Run, epoch: int, phase: str) -> str:
        """After an epoch: what the next one should be (used by adaptive subclasses)."""
        return WAKE

    def epoch_metrics(self) -> dict[str, Any]:
        return {}

    def final_metrics(self, run: Run) -> dict[str, Any]:
        return {"rest_epochs": self.phases.count(REST), "wake_epochs": self.phases.count(WAKE)}

    def buffer_bytes(self) -> int:
        if self.buffer is None or self.options["buffer_device"] != "device":
            return 0
        return self.buffer.nbytes()

    # -- checkpointing -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict() if self.buffer else None,
                "phases": list(self.phases), "next_phase": self.next_phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("buffer") is not None and self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        self.phases = list(state.get("phases", []))
        self.next_phase = state.get("next_phase", WAKE)
