"""Errors that carry a message meant for the user: what is wrong and what to do."""


class BenchError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits non-zero."""


class ConfigError(BenchError, ValueError):
    """The configuration is invalid (unknown key or name, bad value)."""


class DataError(BenchError):
    """A dataset is missing, corrupted or cannot be loaded."""


class BudgetError(BenchError):
    """A memory budget is too small for what a method needs."""
