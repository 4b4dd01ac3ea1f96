"""Atomic file writes (light: no torch import, so ``clkit report`` starts fast)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic", "write_text_atomic"]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that no reader ever sees a partial file; the temporary name is unique per writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically; NaN and infinities are refused (they are not JSON)."""
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
