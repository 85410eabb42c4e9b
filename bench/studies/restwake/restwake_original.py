"""`restwake_original`: Rest-Wake training, original architecture (seed 000).

A fixed schedule [ours]: every `rest_every`-th epoch is REST (when the buffer holds enough
snapshots and the previous epoch was not REST); no variance rule; the snapshot buffer lives in
host memory, so it adds nothing to the accelerator's peak.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.methods import METHODS
from bench.studies.restwake.phases import REST, WAKE, RestWakeBase

if TYPE_CHECKING:
    from bench.train import Run


@METHODS.register("restwake_original")
class RestWakeOriginal(RestWakeBase):
    name = "restwake_original"
    description = "Rest-Wake, fixed schedule (REST every rest_every-th epoch), buffer on host"
    defaults: dict[str, Any] = {**RestWakeBase.defaults, "buffer_device": "host", "rest_every": 5}
    test_study: dict[str, Any] = {"epochs": 3, "method_options": {
        "restwake_original": {"rest_every": 3}}}

    def choose_phase(self, run: Run, epoch: int) -> str:
        scheduled = (epoch + 1) % int(self.options["rest_every"]) == 0
        return REST if scheduled and self.can_rest() else WAKE
