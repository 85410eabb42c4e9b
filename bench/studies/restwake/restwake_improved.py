"""`restwake_improved`: Rest-Wake training, improved architecture (seed 000).

Adaptive phase switching on gradient variance [ours, built on the paper's words]: after every
WAKE epoch, v = squared coefficient of variation of that epoch's minibatch gradient norms. The
threshold tau is the median of v over the first `tau_warmup_epochs` WAKE epochs, then frozen.
The next epoch is REST if v > tau (`direction: high`; `low` rests on v < tau), the buffer holds
enough snapshots, and this epoch was not REST. The buffer stays on the training device (the
paper's improved variant uses ~21 MB more peak memory, about one fp16 copy of ResNet-18).
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError
from bench.methods import METHODS
from bench.studies.restwake.phases import REST, WAKE, RestWakeBase

if TYPE_CHECKING:
    from bench.train import Run


@METHODS.register("restwake_improved")
class RestWakeImproved(RestWakeBase):
    name = "restwake_improved"
    description = "Rest-Wake, gradient-variance switching rule, buffer on the training device"
    defaults: dict[str, Any] = {**RestWakeBase.defaults, "buffer_device": "device",
                                "tau_warmup_epochs": 5, "direction": "high"}
    needs_grad_norms = True
    test_study: dict[str, Any] = {"epochs": 4, "method_options": {
        "restwake_improved": {"tau_warmup_epochs": 1}}}

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        if self.options["direction"] not in ("high", "low"):
            raise ConfigError(f"method '{self.name}': direction must be 'high' or 'low', "
                              f"not {self.options['direction']!r}")
        self.warmup_v: list[float] = []  # v of the first WAKE epochs
        self.tau: float | None = None
        self.last_v: float | None = None

    def choose_phase(self, run: Run, epoch: int) -> str:
        return REST if self.next_phase == REST and self.can_rest() else WAKE

    def decide_next(self, run: Run, epoch: int, phase: str) -> str:
        if phase != WAKE:
            return WAKE  # never two REST epochs in a row
        v = run.grad_stats.get("grad_cv2", float("nan"))
        self.last_v = v
        return self.switch(v)

    def switch(self, v: float) -> str:
        """The rule, given the v of the WAKE epoch that just ended."""
        if self.tau is None:
            if math.isfinite(v):
                self.warmup_v.append(v)
            if len(self.warmup_v) >= int(self.options["tau_warmup_epochs"]):
                self.tau = statistics.median(self.warmup_v)
        if self.tau is None or not math.isfinite(v):
            return WAKE
        high = v > self.tau
        wants_rest = high if self.options["direction"] == "high" else (v < self.tau)
        return REST if wants_rest else WAKE

    def epoch_metrics(self) -> dict[str, Any]:
        return {"tau": self.tau, "next_rest": 1.0 if self.next_phase == REST else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "warmup_v": list(self.warmup_v), "tau": self.tau,
                "last_v": self.last_v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.warmup_v = list(state.get("warmup_v", []))
        self.tau = state.get("tau")
        self.last_v = state.get("last_v")
