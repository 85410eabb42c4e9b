"""Study `restwake`: Rest-Wake training. See README.md and METHODS.md in this folder."""

from bench.studies.restwake import restwake_improved, restwake_original  # noqa: F401  (register)
