"""The method registry: one file per method, one entry per file.

Methods any study may use live here (`sgd`); a paper's own methods live in its study package
(`bench/studies/<study>/`) and register when `bench.studies.load()` imports it, at the end of
this module, so that `METHODS` always lists every method of every study.
"""

from bench.registry import Registry

METHODS: Registry = Registry("method")

from bench import studies  # noqa: E402
from bench.methods import sgd  # noqa: E402,F401

studies.load()
