"""Study `neuroflux`: NeuroFlux, block-wise local learning under a memory budget (seed 003).
See README.md in this folder."""

from bench.studies.neuroflux import backprop, neuroflux  # noqa: F401  (each registers a method)
