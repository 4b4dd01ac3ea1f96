"""Errors that the command line reports as one clear line (exit code 2) instead of a traceback."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ClkitError", "ConfigError", "DataError", "Interrupted", "NonFiniteLossError", "check_finite"]


class ClkitError(Exception):
    """Base class of every error clkit reports to the user without a traceback."""


class ConfigError(ClkitError, ValueError):
    """A configuration value is invalid; the message names the value and the valid choices."""


class DataError(ClkitError, ValueError):
    """A data set is missing or cannot be split as asked (missing ``dataset_root``, impossible split, ...)."""


class NonFiniteLossError(ClkitError, RuntimeError):
    """The training loss became NaN or infinite; completed experiences are kept.

    Attributes:
        lr: The (largest) learning rate in use when it happened, for the resume advice.
    """

    def __init__(self, message: str, lr: float | None = None) -> None:
        super().__init__(message)
        self.lr = lr


class Interrupted(ClkitError):
    """The user interrupted the run (Ctrl-C); completed experiences are kept. The command exits with 130."""

    exit_code = 130


def check_finite(owner: str, values: Mapping[str, Any]) -> None:
    """Refuse NaN or infinite numbers among constructor arguments (YAML's ``.nan``/``.inf`` parse as floats).

    Raises:
        ConfigError: Naming the first argument (or list element) that is not finite.
    """
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for k, item in enumerate(items):
            if isinstance(item, float) and not math.isfinite(item):
                where = name if len(items) == 1 and not isinstance(value, (list, tuple)) else f"{name}[{k}]"
                raise ConfigError(f"{owner}: {where}={item} is not a finite number")
