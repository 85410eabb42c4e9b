"""`restwake_improved`: Rest-Wake training, improved architecture.

Adaptive phase switching on gradient variance [ours, built on the paper's words]: the rule of
`rule.py` (a trailing-median reference, factor 1.25 over the previous 5 WAKE epochs, no REST in
the first five WAKE epochs, at most 2 RESTs in any 10 epochs), asked after every WAKE epoch.

The snapshot buffer M is on the host; one running fp16 mean of M's snapshots (the at most
K = 3 most recent, `phases.RunningMean`) is on the device (`device_mean`), which consolidation
reads without a host transfer: one fp16 copy of the weights more than the original, which is what the paper's
~21 MB difference in peak memory says.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError
from bench.methods import METHODS
from bench.studies.restwake.phases import REST, WAKE, RestWakeBase
from bench.studies.restwake.rule import Decision, SwitchingRule

if TYPE_CHECKING:
    from bench.train import Run


@METHODS.register("restwake_improved")
class RestWakeImproved(RestWakeBase):
    name = "restwake_improved"
    description = ("Rest-Wake, gradient-variance switching rule (trailing median), buffer on "
                   "host, running fp16 mean on the device")
    defaults: dict[str, Any] = {**RestWakeBase.defaults, "buffer_device": "host",
                                "device_mean": True, "factor": 1.25, "window": 5,
                                "warmup_wake_epochs": 5, "cap": 2, "cap_window": 10,
                                "direction": "high"}
    needs_grad_norms = True
    test_study: dict[str, Any] = {"epochs": 4, "method_options": {
        "restwake_improved": {"warmup_wake_epochs": 2, "window": 1}}}

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.rule = SwitchingRule.from_options(self.options)
        problems = self.rule.problems()
        if problems:
            raise ConfigError(f"method '{self.name}': {'; '.join(problems)}")
        self.wake_v: list[float] = []  # v of every WAKE epoch so far
        self.last: Decision | None = None  # the decision after the latest epoch (None: REST)

    def wants_rest(self, run: Run, epoch: int) -> bool:
        return self.next_phase == REST

    def decide_next(self, run: Run, epoch: int, phase: str) -> str:
        if phase != WAKE:
            self.last = None
            return WAKE  # never two REST epochs in a row
        self.wake_v.append(float(run.grad_stats.get("grad_cv2", math.nan)))
        self.last = self.rule.decide(self.wake_v, self.phases)
        return REST if self.last.rest else WAKE

    def epoch_metrics(self) -> dict[str, Any]:
        d = self.last
        return {"rest_reference": d.reference if d else None,
                "rest_threshold": d.threshold if d else None,
                "rule": d.why if d else "after rest",
                # v reached the threshold (REST asked, or refused by the 2-in-10 cap)
                "rule_crossed": (1.0 if d.why in ("crossed", "cap") else 0.0) if d else None,
                "next_rest": 1.0 if self.next_phase == REST else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wake_v": list(self.wake_v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.wake_v = list(state.get("wake_v", []))
