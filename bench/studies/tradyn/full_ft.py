"""`full_ft`: full fine-tuning, the reference of study `tradyn` (METHODS.md in this folder).

Every parameter is trained (conv weights and biases, BatchNorm affine, classifier) with the
study's optimizer; no masking. Runs only at budget 'none' (other budgets: skipped). The
per-epoch metrics are those of selecting every conv channel (sparsities 0.0); see
`bench.studies.tradyn.base`.
"""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.tradyn.base import TraDyBase


@METHODS.register("full_ft")
class FullFT(TraDyBase):
    name = "full_ft"
    description = "full fine-tuning: all weights trained (TraDy study reference)"
    rule = "all"
    dynamic = False
    needs_budget = False
    defaults: dict[str, Any] = {}
