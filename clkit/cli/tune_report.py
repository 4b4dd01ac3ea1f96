"""The report of a ``clkit tune`` directory (filled in by the tune command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["is_tune_dir", "tune_report"]


def is_tune_dir(path: Path) -> bool:
    return (Path(path) / "tune.json").is_file()


def tune_report(path: Path, out: Path | None = None) -> dict[str, Any]:
    raise NotImplementedError
