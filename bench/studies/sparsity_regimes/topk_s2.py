"""`topk_s2`: top-k activation training, Strategy 2 of the paper: accuracy-targeted compression
with patience (`bench.studies.sparsity_regimes.controllers.AccuracyTargetedController`): after
each epoch, on the probe set at the current weights, compress while the accuracy at the epoch's r
is within `acc_margin` (2 points) of the dense accuracy; on a violation hold r for `patience`
epochs, then reset to 1 if still violated (a guard reset); reset also at r_min (a floor reset).
"""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.sparsity_regimes.base import (
    COMMON_DEFAULTS,
    COMPRESSION_DEFAULTS,
    SparsityMethod,
)
from bench.studies.sparsity_regimes.controllers import (
    AccuracyTargetedController,
    KeepRatioController,
)


@METHODS.register("topk_s2")
class TopKS2(SparsityMethod):
    name = "topk_s2"
    description = "top-k activations, S2: accuracy-targeted compression with patience"
    defaults: dict[str, Any] = {**COMMON_DEFAULTS, **COMPRESSION_DEFAULTS,
                                "acc_margin": 0.02,  # accuracy fraction (2 points) [ours]
                                "patience": 3}  # [ours]
    test_study: dict[str, Any] = {"epochs": 3}

    @classmethod
    def make_controller(cls, options: dict[str, Any]) -> KeepRatioController:
        return AccuracyTargetedController(options["r_min"], options["beta"],
                                          options["acc_margin"], options["patience"])
