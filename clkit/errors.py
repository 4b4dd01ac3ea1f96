"""Errors that the command line reports as one clear line (exit code 2) instead of a traceback."""

from __future__ import annotations

__all__ = ["ClkitError", "ConfigError", "DataError", "NonFiniteLossError"]


class ClkitError(Exception):
    """Base class of every error clkit reports to the user without a traceback."""


class ConfigError(ClkitError, ValueError):
    """A configuration value is invalid; the message names the value and the valid choices."""


class DataError(ClkitError, ValueError):
    """A data set is missing or cannot be split as asked (missing ``dataset_root``, impossible split, ...)."""


class NonFiniteLossError(ClkitError, RuntimeError):
    """The training loss became NaN or infinite; completed experiences are kept."""
