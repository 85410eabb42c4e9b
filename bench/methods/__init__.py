"""The method registry: one file per method, one entry per file."""

from bench.registry import Registry

METHODS: Registry = Registry("method")

# Each import registers one method; list every method module here.
from bench.methods import restwake_improved, restwake_original, sgd  # noqa: E402,F401
