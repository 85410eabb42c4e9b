"""`sgd`: plain end-to-end backprop with SGD. The reference of most studies.

Its options override the study's `train` block for this method only (None = keep the study's
setting), so a study can pair, say, SGD with and without momentum as two method labels:

    variants: {sgd_plain: {method: sgd, options: {momentum: 0.0}}}
"""

from typing import Any

import torch

from bench.methods import METHODS
from bench.methods.base import Method


@METHODS.register("sgd")
class SGD(Method):
    name = "sgd"
    description = "end-to-end backprop with SGD"
    defaults = {"lr": None, "momentum": None, "nesterov": None, "weight_decay": None}

    def build_optimizer(self, model: torch.nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
        overrides = {k: v for k, v in self.options.items() if v is not None}
        return super().build_optimizer(model, {**train, **overrides})
