"""Study `sparsity_regimes`: joint training across activation-sparsity regimes ("Joint
Training Across Multiple Activation Sparsity Regimes"). See README.md and METHODS.md in this
folder."""

from bench.studies.sparsity_regimes import (  # noqa: F401  (each import registers a method)
    dense,
    topk_s1,
    topk_s2,
    topk_sawtooth,
)
