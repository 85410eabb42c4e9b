"""Study `restwake`: Rest-Wake training (seed 000). See README.md in this folder."""

from bench.studies.restwake import restwake_improved, restwake_original  # noqa: F401  (register)
