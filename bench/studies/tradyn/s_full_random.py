"""`s_full_random` (S-Full-Random, study `tradyn`): one uniformly random selection over all conv
input channels, drawn before the first epoch and kept for every epoch (and across a resume: it is
in the checkpoint). See `bench.studies.tradyn.base`."""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.tradyn.base import TraDyBase
from bench.studies.tradyn.d_full_random import TEST_BUDGET


@METHODS.register("s_full_random")
class SFullRandom(TraDyBase):
    name = "s_full_random"
    description = "static random channels over all conv layers, within a memory budget"
    rule = "random"
    dynamic = False
    defaults: dict[str, Any] = {**TraDyBase.defaults}
    test_study: dict[str, Any] = {"budgets": [TEST_BUDGET]}
