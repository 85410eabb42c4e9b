"""`d_det_rgn` (D-Det-RGN, study `tradyn`): every epoch, channel RGN from the full gradient (one
extra no-update pass over the whole non-augmented training split; BatchNorm statistics and RNG
untouched; option `rgn_batches` limits it to the first batches [ours]), then channels by
descending RGN while they fit the budget (`fill`). See `bench.studies.tradyn.base`."""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.tradyn.base import TraDyBase
from bench.studies.tradyn.d_full_random import TEST_BUDGET


@METHODS.register("d_det_rgn")
class DDetRGN(TraDyBase):
    name = "d_det_rgn"
    description = "dynamic top channels by reweighted gradient norm, within a memory budget"
    rule = "rgn"
    dynamic = True
    defaults: dict[str, Any] = {**TraDyBase.defaults, "rgn_batches": None}
    test_study: dict[str, Any] = {"budgets": [TEST_BUDGET]}
