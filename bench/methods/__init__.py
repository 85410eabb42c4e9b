"""The method registry: one file per method, one entry per file."""

from bench.registry import Registry

METHODS: Registry = Registry("method")

from bench.methods import sgd  # noqa: E402,F401  (registers; list every method module here)
