"""`s_det_rgn` (S-Det-RGN, study `tradyn`): channels by descending RGN of one full gradient (the
whole training split, option `rgn_batches` [ours]) at the start, before the first epoch, kept
for every epoch (and across a resume: the selection is in the checkpoint). See
`bench.studies.tradyn.base` for the RGN pass."""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.tradyn.base import TraDyBase
from bench.studies.tradyn.d_full_random import TEST_BUDGET


@METHODS.register("s_det_rgn")
class SDetRGN(TraDyBase):
    name = "s_det_rgn"
    description = "static top channels by reweighted gradient norm, within a memory budget"
    rule = "rgn"
    dynamic = False
    defaults: dict[str, Any] = {**TraDyBase.defaults, "rgn_batches": None}
    test_study: dict[str, Any] = {"budgets": [TEST_BUDGET]}
