"""Study `neuroflux`: NeuroFlux, block-wise local learning under a memory budget ("NeuroFlux:
Memory-Efficient CNN Training Using Adaptive Local Learning"). See README.md and METHODS.md in
this folder."""

from bench.studies.neuroflux import backprop, neuroflux  # noqa: F401  (each registers a method)
