"""`last_layer`: only the classifier (`model.fc`) is trained (study `tradyn`).

Every other parameter is frozen (requires_grad False before the optimizer is built), so the conv
weights get no gradient and backward stops at the classifier. Option `train_bn` (default False
[ours]) also trains BatchNorm affine parameters and conv biases. BatchNorm running statistics
keep updating (train mode). Runs only at budget 'none'; metrics: nothing selected (sparsities
1.0). See `bench.studies.tradyn.base`.
"""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.tradyn.base import TraDyBase


@METHODS.register("last_layer")
class LastLayer(TraDyBase):
    name = "last_layer"
    description = "classifier only (TraDy study baseline)"
    rule = "none"
    dynamic = False
    needs_budget = False
    defaults: dict[str, Any] = {"train_bn": False}
