"""`dense`: the reference of study `sparsity_regimes`: plain training, r = 1.

The same TopK modules as the top-k methods are attached at r = 1, where they return their input
unchanged (bit-identical to no TopK); they only count the natural ReLU sparsity of the hooked
outputs, so `keep_ratio` (always 1.0) and `effective_activation_rate` are comparable across the
study, and the final `acc_at_r{r}` evaluate the dense-trained model with TopK forced on.
"""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.sparsity_regimes.base import COMMON_DEFAULTS, SparsityMethod
from bench.studies.sparsity_regimes.controllers import ConstantController, KeepRatioController


@METHODS.register("dense")
class Dense(SparsityMethod):
    name = "dense"
    description = "dense training (keep ratio 1); TopK only for counting and the final r-sweep"
    defaults: dict[str, Any] = dict(COMMON_DEFAULTS)

    @classmethod
    def make_controller(cls, options: dict[str, Any]) -> KeepRatioController:
        return ConstantController()
