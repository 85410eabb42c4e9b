"""Study `tradyn`: TraDy, dynamic channel selection under a memory budget ("Study of
Training Dynamics for Memory-Constrained Fine-Tuning"). See README.md and METHODS.md in this
folder."""

from bench.studies.tradyn import (  # noqa: F401  (each import registers a method or stage)
    d_det_rgn,
    d_full_random,
    full_ft,
    last_layer,
    ranking,
    s_det_rgn,
    s_full_random,
    s_topk_random,
    tradyn,
)
