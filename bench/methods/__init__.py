"""The method registry: one file per method, one entry per file."""

from bench.registry import Registry

METHODS: Registry = Registry("method")

# Each import registers one method; list every method module here.
from bench.methods import restwake_improved, restwake_original, sgd  # noqa: E402,F401
from bench.methods import (  # noqa: E402,F401
    d_det_rgn, d_full_random, full_ft, last_layer, s_det_rgn, s_full_random, tradyn,
)
from bench.methods import dense, topk_s1, topk_s2, topk_sawtooth  # noqa: E402,F401
from bench.methods import backprop, neuroflux  # noqa: E402,F401
