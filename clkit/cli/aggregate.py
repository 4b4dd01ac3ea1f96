"""Aggregation of sweep runs: collect runs from sweep directories, group them, mean ± std over seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clkit.cli.sweep_state import read_json, run_state
from clkit.errors import DataError

__all__ = [
    "METRICS",
    "NEEDED_KEYS",
    "Group",
    "SweepRun",
    "collect",
    "column_names",
    "evaluation_mode",
    "group_runs",
    "is_sweep_dir",
    "read_run",
    "seed_keys",
]

NEEDED_KEYS = ("strategy", "scenario", "seed", "accuracy_matrix", "metrics", "strategy_state_bytes", "wall_seconds")

# column -> (how to read it from results.json, markdown format)
METRICS: dict[str, tuple[str, str]] = {
    "acc": ("metrics.acc", "{:.3f}"), "bwt": ("metrics.bwt", "{:+.3f}"), "fwt": ("metrics.fwt", "{:+.3f}"),
    "forgetting": ("metrics.forgetting", "{:.3f}"), "wall_s": ("wall_seconds", "{:.1f}"),
    "state_mb": ("strategy_state_bytes", "{:.3f}"),
}


@dataclass
class SweepRun:
    """One planned run: its grid labels, state, and (when done) its ``results.json``."""

    run_id: str
    run_dir: Path
    labels: dict[str, str]
    state: str
    results: dict[str, Any] | None = None
    error: str | None = None
    names: dict[str, str] = field(default_factory=dict)  # strategy and scenario class names from the plan

    def value(self, column: str) -> float:
        assert self.results is not None
        node: Any = self.results
        for part in METRICS[column][0].split("."):
            node = node[part]
        return float(node) / 2**20 if column == "state_mb" else float(node)


@dataclass
class Group:
    """Runs that share every group label; statistics over their finished runs."""

    labels: dict[str, str]
    runs: list[SweepRun] = field(default_factory=list)

    @property
    def done(self) -> list[SweepRun]:
        return [r for r in self.runs if r.results is not None]

    def stat(self, column: str) -> tuple[float, float | None]:
        """Mean and sample standard deviation (n - 1; ``None`` for one run; NaN mean for none)."""
        values = [r.value(column) for r in self.done]
        if not values:
            return math.nan, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

    @property
    def evaluation(self) -> str:
        """Whether the finished runs' test predictions used task ids (``results.json`` → ``evaluation.mode``):
        ``task-aware``, ``task-agnostic``, both joined by ``/`` if the runs disagree, ``-`` for none."""
        return "/".join(sorted({evaluation_mode(r.results) for r in self.done if r.results is not None})) or "-"


def evaluation_mode(results: dict[str, Any]) -> str:
    """A ``results.json``'s evaluation mode (``task-aware`` / ``task-agnostic``; ``?`` where it is not recorded)."""
    evaluation = results.get("evaluation")
    return str(evaluation.get("mode", "?")) if isinstance(evaluation, dict) else "?"


def read_run(path: Path) -> dict[str, Any]:
    """A run's ``results.json`` (or the one in a run directory), checked for the keys reports read.

    Reads the JSON directly, so a report does not pay for importing torch and Lightning.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    data = read_json(path)
    if data is None:
        raise DataError(f"no readable results.json at {path}")
    missing = [k for k in NEEDED_KEYS if k not in data]
    if missing:
        raise DataError(f"{path} lacks the keys {missing}")
    return data


def is_sweep_dir(path: Path) -> bool:
    """A directory written by ``clkit sweep``: it has ``sweep.json`` or run directories with ``status.json``."""
    path = Path(path)
    if not path.is_dir():
        return False
    return (path / "sweep.json").is_file() or any((c / "status.json").is_file() for c in path.iterdir() if c.is_dir())


def _entries(sweep_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Grid keys and planned runs: from ``sweep.json``, else from the run directories' ``status.json``."""
    index = read_json(sweep_dir / "sweep.json")
    if index is not None and isinstance(index.get("runs"), list):
        return list(index.get("grid_keys", [])), index["runs"]
    found = [s for c in sorted(sweep_dir.iterdir()) if (s := read_json(c / "status.json")) and "run_id" in s]
    found.sort(key=lambda s: s.get("index", 0))
    keys = list(dict.fromkeys(k for s in found for k in s.get("labels", {})))
    return keys, found


def collect(paths: list[Path]) -> tuple[list[str], list[SweepRun]]:
    """Every planned run of the given sweep directories (merged; a run id seen twice counts once).

    Runs on disk that the current plan (``sweep.json``) does not list, e.g. left from an older grid, are ignored.
    """
    keys: list[str] = []
    runs: dict[str, SweepRun] = {}
    for sweep_dir in map(Path, paths):
        grid_keys, entries = _entries(sweep_dir)
        keys += [k for k in grid_keys if k not in keys]
        for entry in entries:
            run_dir = sweep_dir / entry["run_id"]
            state, status = run_state(run_dir)
            run = SweepRun(entry["run_id"], run_dir, dict(entry.get("labels", {})), state,
                           read_run(run_dir) if state == "done" else None,
                           status.get("error") if state == "failed" else None,
                           {k: entry[k] for k in ("strategy", "scenario") if k in entry})
            if run.run_id not in runs or (run.results is not None and runs[run.run_id].results is None):
                runs[run.run_id] = run
    if not runs:
        raise DataError(f"no sweep runs under {', '.join(map(str, paths))}")
    return keys, list(runs.values())


def seed_keys(keys: list[str]) -> list[str]:
    """The grid keys that are seeds (averaged over by default): ``seed_everything`` and any ``*.seed``."""
    return [k for k in keys if k == "seed_everything" or k.rsplit(".", 1)[-1] == "seed"]


def column_names(keys: list[str]) -> dict[str, str]:
    """Short column names for grid keys (the last dotted part, or the whole key where two would clash)."""
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1 or s in ("strategy", "scenario")}
    return {k: (k if s in clashes else s) for k, s in short.items()}


def _class_name(run: SweepRun, key: Literal["strategy", "scenario"]) -> str:
    """The strategy or scenario class of a run: from its results, else from the sweep's plan."""
    if run.results is not None:
        return str(run.results[key])
    return run.names.get(key, "?")


def _strategy_label(run: SweepRun) -> str:
    """The grid's label for the run's strategy, its class name replaced by the strategy's own label where that
    starts with it (``CUBER`` -> ``CUBER (clkit reconstruction)``, which every table must show)."""
    label = run.labels.get("model")
    if not label:
        return _class_name(run, "strategy")
    name = label.split("(", 1)[0]
    own = str(run.results["strategy"]) if run.results is not None else _registered_label(name)
    return own + label[len(name):] if own.startswith(name) and own != name else label


def _registered_label(name: str) -> str:
    """The ``LABEL`` of a clkit strategy class called ``name`` (for runs without results yet), else ``name``."""
    import strategies

    return next((str(cls.LABEL) for cls in strategies.STRATEGIES if cls.__name__ == name and cls.LABEL), name)


def group_runs(keys: list[str], runs: list[SweepRun], over: list[str]) -> tuple[list[str], list[Group]]:
    """Group runs by strategy, scenario and every grid key not in ``over``; groups in plan order.

    Returns the group columns (``strategy``, ``scenario``, then grid keys) and the groups.

    Raises:
        DataError: If a key in ``over`` is not a grid key.
    """
    bad = [k for k in over if k not in keys]
    if bad:
        raise DataError(f"--over {bad}: not a grid key of the sweep; grid keys: {', '.join(keys) or 'none'}")
    swept = [k for k in keys if k not in over and k not in ("model", "data")]
    columns = ["strategy", "scenario", *swept]
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        labels = {"strategy": _strategy_label(run),
                  "scenario": run.labels.get("data") or _class_name(run, "scenario"),
                  **{k: run.labels.get(k, "-") for k in swept}}
        groups.setdefault(tuple(labels.values()), Group(labels)).runs.append(run)
    return columns, list(groups.values())
