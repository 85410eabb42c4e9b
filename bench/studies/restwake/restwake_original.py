"""`restwake_original`: Rest-Wake training, original architecture.

A fixed schedule [ours]: every `rest_every`-th epoch is REST (when the buffer holds enough
snapshots, the previous epoch was not REST, and it is not the last epoch); no variance rule;
the snapshot buffer lives in host memory and consolidation averages it there, so nothing but
the model's own state is on the accelerator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.methods import METHODS
from bench.studies.restwake.phases import RestWakeBase

if TYPE_CHECKING:
    from bench.train import Run


@METHODS.register("restwake_original")
class RestWakeOriginal(RestWakeBase):
    name = "restwake_original"
    description = "Rest-Wake, fixed schedule (REST every rest_every-th epoch), buffer on host"
    defaults: dict[str, Any] = {**RestWakeBase.defaults, "buffer_device": "host", "rest_every": 5}
    test_study: dict[str, Any] = {"epochs": 4, "method_options": {
        "restwake_original": {"rest_every": 3}}}

    def wants_rest(self, run: Run, epoch: int) -> bool:
        return (epoch + 1) % int(self.options["rest_every"]) == 0
