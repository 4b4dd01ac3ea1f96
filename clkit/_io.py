"""Atomic file writes, the one helper every writer uses (light: torch is imported only to save tensors)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["replace_atomic", "save_torch_atomic", "temporary_path", "write_json_atomic", "write_text_atomic"]


def temporary_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique per writer (``.name.<pid>.<random>.tmp``, same suffix kept last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def replace_atomic(write: Callable[[Path], None], path: Path) -> None:
    """Call ``write(tmp)`` on a temporary path, then move it over ``path``: no reader ever sees a partial file."""
    tmp = temporary_path(Path(path))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` atomically."""
    def write(tmp: Path) -> None:
        tmp.write_text(text)

    replace_atomic(write, path)


def save_torch_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` atomically: a killed run never leaves a half-written checkpoint."""
    import torch

    replace_atomic(lambda tmp: torch.save(obj, tmp), path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically; NaN and infinities are refused (they are not JSON)."""
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
