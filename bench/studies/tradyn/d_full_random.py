"""`d_full_random` (D-Full-Random, study `tradyn`): every epoch a new uniformly random selection
over all conv input channels, accepted while the running memory cost stays within the budget
(`fill`: skip the channels that do not fit, by default). See `bench.studies.tradyn.base` for the shared semantics."""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.tradyn.base import TraDyBase

TEST_BUDGET = 3000  # units: a few channels of the contract tests' tiny ResNet-18 (80-592 each)


@METHODS.register("d_full_random")
class DFullRandom(TraDyBase):
    name = "d_full_random"
    description = "dynamic random channels over all conv layers, within a memory budget"
    rule = "random"
    dynamic = True
    defaults: dict[str, Any] = {**TraDyBase.defaults}
    test_study: dict[str, Any] = {"budgets": [TEST_BUDGET]}
