"""`s_topk_random` (S-TopK-Random, study `tradyn`; paper Table 4): one uniformly random selection
over the input channels of the top-K ranked layers, drawn before the first epoch and kept for
every epoch (and across a resume: it is in the checkpoint). TraDy without the reselection: the
paper's direct test of "dynamic reselection matters" (TraDy - S-TopK-Random, +1.36 / +1.03 /
+0.70 points on CIFAR-10). Pool, ranking file and options as `tradyn`; see
`bench.studies.tradyn.base`."""

from __future__ import annotations

from typing import Any

from bench.methods import METHODS
from bench.studies.tradyn.tradyn import TraDyn


@METHODS.register("s_topk_random")
class STopKRandom(TraDyn):
    name = "s_topk_random"
    description = "static random channels of the top-K ranked layers (TraDy without reselection)"
    dynamic = False
    defaults: dict[str, Any] = dict(TraDyn.defaults)
    test_study: dict[str, Any] = {**TraDyn.test_study,
                                  "method_options": {"s_topk_random": {"ranking": "all"}}}
