"""clkit: continual learning with PyTorch Lightning.

The names below are imported on first use, so ``import clkit`` stays light (``clkit report`` needs no torch)::

    from clkit import ContinualModule, fit_stream, trainer_factory
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "ContinualModule": "clkit.module",
    "Experience": "clkit.data",
    "StreamSpec": "clkit.data",
    "TensorData": "clkit.data",
    "ContinualDataModule": "clkit.data",
    "StreamResult": "clkit.results",
    "StreamRun": "clkit.loop",
    "fit_stream": "clkit.loop",
    "reevaluate": "clkit.reevaluation",
    "trainer_factory": "clkit.loop",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clkit' has no attribute {name!r}")
