"""`topk_s1`: top-k activation training, Strategy 1 of the paper: loss-guarded compression with
reset (`bench.studies.sparsity_regimes.controllers.LossGuardedController`): after each epoch, on
the probe set at the current weights, if the loss at the epoch's r is within (1 + loss_tolerance)
of the dense loss and r > r_min, r <- max(r_min, beta r); else r <- 1 (a guard or a floor reset).
"""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.sparsity_regimes.base import (
    COMMON_DEFAULTS,
    COMPRESSION_DEFAULTS,
    SparsityMethod,
)
from bench.studies.sparsity_regimes.controllers import KeepRatioController, LossGuardedController


@METHODS.register("topk_s1")
class TopKS1(SparsityMethod):
    name = "topk_s1"
    description = "top-k activations, S1: loss-guarded compression with reset"
    defaults: dict[str, Any] = {**COMMON_DEFAULTS, **COMPRESSION_DEFAULTS,
                                "loss_tolerance": 0.10}  # [ours]
    test_study: dict[str, Any] = {"epochs": 3}

    @classmethod
    def make_controller(cls, options: dict[str, Any]) -> KeepRatioController:
        return LossGuardedController(options["r_min"], options["beta"], options["loss_tolerance"])
