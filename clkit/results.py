"""A run's outputs: :class:`StreamResult`, ``results.json`` and ``accuracy_matrix.png`` (atomic writes throughout)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

import clkit
from clkit._io import write_json_atomic as write_json
from clkit.data import StreamSpec
from clkit.errors import DataError
from clkit.metrics import stream_metrics
from clkit.module import ContinualModule

__all__ = ["RESULT_KEYS", "StreamResult", "build_results", "partial_results", "plot_matrix", "read_results",
           "write_json", "write_run_outputs"]

RESULT_KEYS = ("clkit_version", "strategy", "scenario", "setting", "seed", "n_experiences", "accuracy_matrix",
               "val_accuracy_matrix", "evaluation", "random_init_accuracy", "metrics", "per_experience",
               "strategy_state_bytes", "wall_seconds", "config")


def _rounded(metrics: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
    return None if metrics is None else {k: round(v, 6) for k, v in metrics.items()}


def _floats(t: Tensor) -> Any:
    def one(v: Any) -> Optional[float]:
        v = float(v)
        return None if math.isnan(v) else round(v, 6)

    return [[one(v) for v in row] for row in t] if t.ndim == 2 else [one(v) for v in t]


@dataclass
class StreamResult:
    """What one pass over a stream produced; :meth:`results` is the ``results.json`` content."""

    strategy: ContinualModule
    spec: StreamSpec
    accuracy_matrix: Tensor
    """(T, T): row i after training experience i, column j the test data of experience j."""
    val_accuracy_matrix: Optional[Tensor]
    """(T, T) on each experience's validation split, or ``None`` when the stream has none (tune on this)."""
    random_init_accuracy: Tensor
    """(T,): the untrained model on each test experience."""
    per_experience: list[dict[str, Any]]
    wall_seconds: float
    test_passes: int = 1
    val_random_init_accuracy: Optional[Tensor] = None
    """(T,): the untrained model on each validation split (``None`` without validation splits)."""
    task_aware_accuracy_matrix: Optional[Tensor] = None
    """Class-IL only, (T, T): the same run's test predictions restricted to each experience's classes ("TAw")."""
    task_aware_random_init_accuracy: Optional[Tensor] = None
    environment: Optional[dict[str, Any]] = None
    """torch version and threads, device, Lightning version."""

    @property
    def metrics(self) -> dict[str, float]:
        """``acc``, ``bwt``, ``fwt``, ``forgetting``, ``learning_acc`` of the test matrix (fractions)."""
        return stream_metrics(self.accuracy_matrix, self.random_init_accuracy)

    @property
    def val_metrics(self) -> Optional[dict[str, float]]:
        """The same metrics on the validation matrix (what tuning may read); ``None`` without validation splits."""
        if self.val_accuracy_matrix is None or self.val_random_init_accuracy is None:
            return None
        return stream_metrics(self.val_accuracy_matrix, self.val_random_init_accuracy)

    @property
    def task_aware_metrics(self) -> Optional[dict[str, float]]:
        """Class-IL only: the metrics of :attr:`task_aware_accuracy_matrix`."""
        if self.task_aware_accuracy_matrix is None or self.task_aware_random_init_accuracy is None:
            return None
        return stream_metrics(self.task_aware_accuracy_matrix, self.task_aware_random_init_accuracy)

    @property
    def evaluation(self) -> dict[str, Any]:
        """How test batches were evaluated: whether the predictions used their task ids."""
        aware = bool(self.strategy.task_aware)
        return {"task_ids": aware, "mode": "task-aware" if aware else "task-agnostic",
                "scenario_gives_task_ids": self.spec.task_ids_at_test, "test_passes": self.test_passes,
                "task_aware_matrix": self.task_aware_accuracy_matrix is not None}

    def results(self, *, seed: Optional[int] = None, config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The ``results.json`` content (see README, "A run's outputs")."""
        return build_results(self, seed=seed, config=config or {})

    def save(self, run_dir: Path | str, *, seed: Optional[int] = None,
             config: Optional[dict[str, Any]] = None) -> Path:
        """Write ``results.json`` and ``accuracy_matrix.png`` to ``run_dir``; returns the results path."""
        path = Path(run_dir)
        write_run_outputs(path, self.results(seed=seed, config=config))
        return path / "results.json"


def build_results(result: StreamResult, *, seed: Optional[int], config: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` content of a finished run; metrics are recomputed from the stored matrix."""
    acc, init = result.accuracy_matrix, result.random_init_accuracy
    out: dict[str, Any] = {
        "clkit_version": clkit.__version__,
        "strategy": result.strategy.label,
        "scenario": result.spec.name,
        "setting": result.spec.setting,
        "seed": seed,
        "n_experiences": int(acc.shape[0]),
        "accuracy_matrix": _floats(acc),
        "val_accuracy_matrix": None if result.val_accuracy_matrix is None else _floats(result.val_accuracy_matrix),
        "evaluation": result.evaluation,
        "random_init_accuracy": _floats(init),
        "metrics": _rounded(result.metrics),
        "val_metrics": _rounded(result.val_metrics),
        "task_aware_accuracy_matrix": None if result.task_aware_accuracy_matrix is None
        else _floats(result.task_aware_accuracy_matrix),
        "task_aware_metrics": _rounded(result.task_aware_metrics),
        "environment": result.environment,
        "per_experience": result.per_experience,
        "strategy_state_bytes": int(result.strategy.strategy_state_bytes()),
        "wall_seconds": round(result.wall_seconds, 3),
        "config": config,
    }
    for key, value in result.strategy.extra_results(acc).items():
        if key in out:
            raise ValueError(f"strategy result key {key!r} clashes with a fixed results.json key")
        out[key] = value
    return out


def partial_results(result: StreamResult, completed: int, *, seed: Optional[int], config: dict[str, Any],
                    error: str) -> dict[str, Any]:
    """What a run that stopped early has: the completed rows of the matrices and the error."""
    val = result.val_accuracy_matrix
    return {"clkit_version": clkit.__version__, "strategy": result.strategy.label, "scenario": result.spec.name,
            "seed": seed, "completed_experiences": completed,
            "accuracy_matrix_rows": _floats(result.accuracy_matrix[:completed]) if completed else [],
            "val_accuracy_matrix_rows": _floats(val[:completed]) if completed and val is not None else [],
            "per_experience": result.per_experience, "error": error, "config": config}


def read_results(path: Path) -> dict[str, Any]:
    """Read a ``results.json`` (or the one inside a run directory) and check its fixed keys."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise DataError(f"no results.json at {path}")
    data = json.loads(path.read_text())
    missing = [k for k in RESULT_KEYS if k not in data]
    if missing:
        raise DataError(f"{path} lacks the keys {missing}")
    return data


def plot_matrix(path: Path, matrix: Tensor, title: str = "", names: Optional[list[str]] = None) -> list[Path]:
    """The accuracy matrix as ``path`` (PNG) and a PDF beside it (see :mod:`clkit.figures`)."""
    from clkit.figures import matrix_figure, save_figure

    return save_figure(matrix_figure(matrix, names, title=title), path)


def plot_stream(path: Path, matrix: Tensor, title: str = "", names: Optional[list[str]] = None) -> list[Path]:
    """Accuracy on each task after each experience (the stream plot), as a PNG and a PDF."""
    from clkit.figures import save_figure, stream_figure

    return save_figure(stream_figure([matrix], names, title=title), path)


def write_run_outputs(run_dir: Path, results: dict[str, Any]) -> None:
    """``results.json``, ``accuracy_matrix.{png,pdf}`` and ``stream.{png,pdf}`` in ``run_dir``."""
    write_json(run_dir / "results.json", results)
    m = results["metrics"]
    title = (f"{results['strategy']} on {results['scenario']} (seed {results['seed']})\n"
             f"acc {m['acc']:.3f}  bwt {m['bwt']:+.3f}  fwt {m['fwt']:+.3f}  forgetting {m['forgetting']:.3f}")
    matrix = torch.tensor([[math.nan if v is None else v for v in row] for row in results["accuracy_matrix"]])
    names = [str(p.get("name", "")) for p in results.get("per_experience", [])] or None
    plot_matrix(run_dir / "accuracy_matrix.png", matrix, title, names)
    plot_stream(run_dir / "stream.png", matrix, title.split("\n")[0], names)
