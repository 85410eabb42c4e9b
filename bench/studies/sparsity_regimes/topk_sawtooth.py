"""`topk_sawtooth`: the ablation of study `sparsity_regimes`: a fixed schedule,
r_t = r_min ** ((t mod period) / (period - 1)) (`bench.studies.sparsity_regimes.controllers.SawtoothController`): 1 at the
start of each period, r_min at its last epoch, then back to 1. Loss and accuracy are ignored.
"""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.sparsity_regimes.base import COMMON_DEFAULTS, SparsityMethod
from bench.studies.sparsity_regimes.controllers import KeepRatioController, SawtoothController


@METHODS.register("topk_sawtooth")
class TopKSawtooth(SparsityMethod):
    name = "topk_sawtooth"
    description = "top-k activations, sawtooth ablation: geometric decay to r_min, reset"
    defaults: dict[str, Any] = {**COMMON_DEFAULTS, "r_min": 0.05, "period": 10}  # [ours]
    test_study: dict[str, Any] = {"epochs": 3, "method_options": {"topk_sawtooth": {"period": 2}}}

    @classmethod
    def make_controller(cls, options: dict[str, Any]) -> KeepRatioController:
        return SawtoothController(options["r_min"], options["period"])
