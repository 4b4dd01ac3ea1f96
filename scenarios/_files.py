"""Local data files: where a scenario looks for them, the error when they are missing, and the optional cache.

Every file-backed scenario takes ``dataset_root``. When it is not given, ``$CLKIT_DATA_ROOT`` is used; when neither
is set, or the expected files are not there, the scenario raises :class:`clkit.errors.DataError` naming the data
set, the files it expected and the directory it looked in. Nothing is downloaded unless ``download: true``; a failed
download is one :class:`clkit.errors.DataError` too (:func:`downloading`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from clkit._io import save_torch_atomic
from clkit.data import Experience
from clkit.errors import DataError

__all__ = [
    "ENV_ROOT",
    "cache_key",
    "downloading",
    "load_cached",
    "missing_data_error",
    "require_files",
    "resolve_root",
    "save_cached",
]

ENV_ROOT = "CLKIT_DATA_ROOT"
CACHE_VERSION = 1


def resolve_root(dataset_root: Optional[str], dataset: str, expected: Sequence[str], *,
                 downloadable: bool = False) -> Path:
    """``dataset_root`` (or ``$CLKIT_DATA_ROOT``) as an absolute path.

    Raises:
        DataError: If neither is set; the message names the data set and the files it needs (and, for a data set
            that can be fetched, how to have it downloaded).
    """
    root = dataset_root if dataset_root is not None else os.environ.get(ENV_ROOT)
    if not root:
        fetch = " (or any folder, with data.init_args.download true to fetch them there)" if downloadable else ""
        raise DataError(f"{dataset}: no dataset_root given. Set data.init_args.dataset_root (or the environment "
                        f"variable {ENV_ROOT}) to the folder that holds {_list(expected)}{fetch}.")
    return Path(root).expanduser().resolve()


def missing_data_error(dataset: str, root: Path, expected: Sequence[str], how: str) -> DataError:
    """The error for a data set whose files are not under ``root``; ``how`` says how to get them."""
    return DataError(f"{dataset} not found: expected {_list(expected)} in {root}. {how}")


def require_files(dataset: str, root: Path, expected: Sequence[str], how: str) -> None:
    """Raise :func:`missing_data_error` unless every path in ``expected`` (relative to ``root``) exists."""
    missing = [p for p in expected if not (root / p).exists()]
    if missing:
        raise missing_data_error(dataset, root, missing, how)


@contextlib.contextmanager
def downloading(dataset: str, root: Path) -> Iterator[None]:
    """Run a download (torchvision, Avalanche, scikit-learn) and turn its failure into one clear :class:`DataError`.

    Without internet a download fails deep inside urllib with a traceback; the user needs to hear which data set,
    where its files go, and that they can put them there themselves.
    """
    try:
        yield
    except DataError:
        raise
    except Exception as err:  # URLError, HTTPError, socket errors, checksum RuntimeErrors, gdown's errors, ...
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{dataset}: downloading into {root} failed ({type(err).__name__}: {detail}). Without "
                        "internet, put the files there yourself (docs/scenarios.md lists them) and set "
                        "download: false.") from None


def _list(paths: Sequence[str]) -> str:
    shown = [f"'{p}'" for p in paths[:6]]
    more = f" and {len(paths) - 6} more" if len(paths) > 6 else ""
    return ", ".join(shown) + more


# -- cache of materialised experiences ---------------------------------------------------------------------------------
_NOT_PART_OF_KEY = frozenset({"batch_size", "eval_batch_size", "task_order", "shuffle_tasks", "cache_dir", "download",
                              "prepare_data_per_node", "allow_zero_length_dataloader_with_multiple_devices"})


def cache_key(scenario: Any, **extra: Any) -> str:
    """A file name for the scenario's experiences: class name + hash of its plain-valued parameters and ``extra``.

    Parameters are the scenario's public attributes with JSON-able values; batch sizes, ``task_order`` and
    ``shuffle_tasks`` are left out because they do not change the built experiences.
    """
    params = {k: v for k, v in sorted(vars(scenario).items())
              if not k.startswith("_") and k not in _NOT_PART_OF_KEY and _plain(v)}
    params.update(extra)
    blob = json.dumps({"class": type(scenario).__qualname__, "version": CACHE_VERSION, "params": params},
                      sort_keys=True, default=str)
    return f"{type(scenario).__name__}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def load_cached(cache_dir: Optional[str], key: str) -> Optional[list[Experience]]:
    """The experiences cached under ``key`` (see :func:`cache_key`), or ``None`` (no cache dir, nothing cached)."""
    if cache_dir is None:
        return None
    path = Path(cache_dir).expanduser() / key
    if not path.is_file():
        return None
    # The cache holds our own dataclasses and transform objects, so it needs the full unpickler: only point
    # cache_dir at a folder you trust.
    return list(torch.load(path, map_location="cpu", weights_only=False))


def save_cached(cache_dir: Optional[str], key: str, experiences: list[Experience]) -> None:
    """Store ``experiences`` under ``key`` for the next run; an unwritable cache is a warning, not an error."""
    if cache_dir is None:
        return
    folder = Path(cache_dir).expanduser()
    path = folder / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_torch_atomic(path, experiences)  # a temporary file per process: DDP ranks build together
    except OSError as err:
        warnings.warn(f"could not write the scenario cache {path}: {err}", stacklevel=2)
