"""A run's outputs (DESIGN.md §2.4): ``results.json``, ``accuracy_matrix.png``; atomic writes throughout."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import clkit
from clkit._io import write_json_atomic as write_json
from clkit._io import write_text_atomic
from clkit.errors import DataError
from clkit.loop import StreamRun
from clkit.metrics import stream_metrics

__all__ = ["RESULT_KEYS", "build_results", "plot_matrix", "read_results", "write_json", "write_run_outputs", "write_text_atomic"]

RESULT_KEYS = ("clkit_version", "strategy", "scenario", "setting", "seed", "n_experiences", "accuracy_matrix",
               "random_init_accuracy", "metrics", "per_experience", "strategy_state_bytes", "wall_seconds", "config")


def _floats(t: Tensor) -> Any:
    return [[round(float(v), 6) for v in row] for row in t] if t.ndim == 2 else [round(float(v), 6) for v in t]


def build_results(run: StreamRun, *, seed: int | None, config: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` content of a finished run; metrics are recomputed from the stored matrix."""
    acc, init = run.accuracy_matrix, run.random_init_accuracy
    out: dict[str, Any] = {
        "clkit_version": clkit.__version__,
        "strategy": run.strategy.label,
        "scenario": run.stream.name,
        "setting": run.stream.setting,
        "seed": seed,
        "n_experiences": int(acc.shape[0]),
        "accuracy_matrix": _floats(acc),
        "random_init_accuracy": _floats(init),
        "metrics": {k: round(v, 6) for k, v in stream_metrics(acc, init).items()},
        "per_experience": run.per_experience,
        "strategy_state_bytes": int(run.strategy.strategy_state_bytes()),
        "wall_seconds": round(run.wall_seconds, 3),
        "config": config,
    }
    for key, value in run.strategy.extra_results().items():
        if key in out:
            raise ValueError(f"strategy result key {key!r} clashes with a fixed results.json key")
        out[key] = value
    return out


def partial_results(run: StreamRun, *, seed: int | None, config: dict[str, Any], error: str) -> dict[str, Any]:
    """What a run that stopped early has: the completed rows of the matrix and the error."""
    done = run.completed
    rows = _floats(run.accuracy_matrix[:done]) if run.strategy.accuracy is not None else []
    return {"clkit_version": clkit.__version__, "strategy": run.strategy.label, "scenario": run.stream.name,
            "seed": seed, "completed_experiences": done, "accuracy_matrix_rows": rows,
            "per_experience": run.per_experience, "error": error, "config": config}


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


def plot_matrix(path: Path, matrix: Tensor, title: str = "") -> None:
    """Heat map of the accuracy matrix with the values written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = matrix.shape[0]
    size = 2.5 + 0.55 * t
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(matrix.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    if t <= 20:
        for i in range(t):
            for j in range(t):
                v = float(matrix[i, j])
                if not math.isnan(v):
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8,
                            color="black" if v > 0.6 else "white")
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training experience i")
    ax.set_xticks(range(t))
    ax.set_yticks(range(t))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_run_outputs(run_dir: Path, results: dict[str, Any]) -> None:
    """``results.json`` and ``accuracy_matrix.png`` in ``run_dir``."""
    write_json(run_dir / "results.json", results)
    m = results["metrics"]
    title = (f"{results['strategy']} on {results['scenario']} (seed {results['seed']})\n"
             f"acc {m['acc']:.3f}  bwt {m['bwt']:+.3f}  fwt {m['fwt']:+.3f}  forgetting {m['forgetting']:.3f}")
    plot_matrix(run_dir / "accuracy_matrix.png", torch.tensor(results["accuracy_matrix"]), title)
