"""Aggregation of runs: collect them from sweep directories (or plain run directories), find the hyper-parameters
that vary, group, mean ± std over seeds, and say why unfinished runs are unfinished."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clkit.cli.sweep_plan import value_label
from clkit.cli.sweep_state import read_json, run_state
from clkit.errors import DataError

__all__ = [
    "METRICS",
    "NEEDED_KEYS",
    "Group",
    "SweepRun",
    "collect",
    "column_names",
    "flat_params",
    "group_runs",
    "is_sweep_dir",
    "plain_runs",
    "read_run",
    "seed_keys",
]

NEEDED_KEYS = ("strategy", "scenario", "seed", "accuracy_matrix", "metrics", "strategy_state_bytes", "wall_seconds")

# column -> (how to read it from results.json, format)
METRICS: dict[str, tuple[str, str]] = {
    "acc": ("metrics.acc", "{:.3f}"), "bwt": ("metrics.bwt", "{:+.3f}"), "fwt": ("metrics.fwt", "{:+.3f}"),
    "forgetting": ("metrics.forgetting", "{:.3f}"), "val_acc": ("val_metrics.acc", "{:.3f}"),
    "wall_s": ("wall_seconds", "{:.1f}"), "state_mb": ("strategy_state_bytes", "{:.3f}"),
}
NOT_HYPER = ("trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.enable_checkpointing",
             "trainer.logger", "trainer.callbacks", "trainer.default_root_dir")
"""Config keys that are not hyper-parameters (never a column of a table of plain runs)."""


@dataclass
class SweepRun:
    """One planned run: its grid labels and values, state, and (when done) its ``results.json``."""

    run_id: str
    run_dir: Path
    labels: dict[str, str]
    state: str
    results: dict[str, Any] | None = None
    error: str | None = None
    names: dict[str, str] = field(default_factory=dict)  # strategy and scenario class names from the plan
    params: dict[str, Any] = field(default_factory=dict)  # flattened grid point (or config): dotted key -> value
    reason: str = ""  # why it is not done
    startup: float | None = None  # worker start-up seconds of the worker that ran it first, if any

    def value(self, column: str) -> float:
        """The run's value of a metric column (NaN when it has none, e.g. no validation splits)."""
        node: Any = self.results
        for part in METRICS[column][0].split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return math.nan
        return float(node) / 2**20 if column == "state_mb" else float(node)

    @property
    def evaluation(self) -> str | None:
        """``task-aware`` or ``task-agnostic``: whether the test predictions used task ids (``None`` until done)."""
        if self.results is None:
            return None
        ev = self.results.get("evaluation")
        return str(ev.get("mode")) if isinstance(ev, dict) and ev.get("mode") else "unknown"


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
        values = [v for r in self.done if not math.isnan(v := r.value(column))]
        if not values:
            return math.nan, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

    @property
    def evaluation(self) -> str:
        """The evaluation of the group's finished runs: both modes joined by ``/`` if they disagree (e.g.
        ``task-agnostic/task-aware``), ``-`` before any is done."""
        return "/".join(sorted({str(r.evaluation) for r in self.done})) or "-"


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
    if data.get("fast_dev_run"):
        raise DataError(f"{path} is a --trainer.fast_dev_run smoke test (a batch per step), not a result")
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


def _reason(state: str, status: dict[str, Any], run_dir: Path) -> str:
    if state in ("failed", "pruned"):
        return str(status.get("error") or state)
    if state == "running":
        owner = read_json(run_dir / ".lock.owner.json") or {}
        return f"running (pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('since', '?')})"
    if state == "interrupted":
        from clkit.loop import experience_checkpoints

        n = len(experience_checkpoints(run_dir / "checkpoints"))
        return f"interrupted after {n} experience(s); the next sweep resumes it"
    return "not started"


def flat_params(value: Any, prefix: str) -> dict[str, Any]:
    """A grid value or config node as dotted key -> leaf value (``model: strategies.GPM`` -> ``model.class_path``)."""
    if prefix in ("model", "data") and isinstance(value, str):
        return {f"{prefix}.class_path": value}
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat_params(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


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
            results, error = None, status.get("error") if state in ("failed", "pruned") else None
            if state == "done":
                try:
                    results = read_run(run_dir)
                except DataError as err:  # a damaged results.json: listed with the failed runs, the rest still shown
                    state, error = "failed", f"unreadable results.json ({err})"
                    status = {**status, "error": error}
            grid = entry.get("grid") or {}
            run = SweepRun(entry["run_id"], run_dir, dict(entry.get("labels", {})), state, results, error,
                           {k: entry[k] for k in ("strategy", "scenario") if k in entry},
                           {k: v for key in grid for k, v in flat_params(grid[key], key).items()},
                           "" if state == "done" else _reason(state, status, run_dir),
                           status.get("worker_startup_seconds"))
            if run.run_id not in runs or (run.results is not None and runs[run.run_id].results is None):
                runs[run.run_id] = run
    if not runs:
        raise DataError(f"no sweep runs under {', '.join(map(str, paths))}")
    return keys, list(runs.values())


def plain_runs(files: list[Path]) -> tuple[list[SweepRun], list[str]]:
    """Runs from ``results.json`` files (not a sweep): their configs' hyper-parameters as params; unreadable files
    are returned as messages."""
    runs, skipped = [], []
    for f in files:
        try:
            r = read_run(f)
        except DataError as err:
            skipped.append(f"{f}: {err}")
            continue
        params = {k: v for k, v in flat_params(r.get("config") or {}, "").items()
                  if not k.startswith(NOT_HYPER) and k not in ("model.class_path", "data.class_path")}
        params["seed_everything"] = r.get("seed")
        runs.append(SweepRun(str(f.parent), f.parent, {}, "done", r, params=params))
    return runs, skipped


def seed_keys(keys: list[str]) -> list[str]:
    """The keys that are seeds (averaged over by default): ``seed_everything`` and any ``*.seed``."""
    return [k for k in keys if k == "seed_everything" or k.rsplit(".", 1)[-1] == "seed"]


def _parts(key: str) -> list[str]:
    parts = [p for p in key.split(".") if p != "init_args"]
    return parts[:-1] if len(parts) > 1 and parts[-1] == "class_path" else parts


def column_names(keys: list[str]) -> dict[str, str]:
    """Short column names for dotted keys (``model.init_args.ewc_lambda`` -> ``ewc_lambda``; more of the key where
    two would clash or where one would read as a fixed column)."""
    fixed = {"strategy", "scenario", "evaluation", "runs"}
    for depth in (1, 2):
        short = {k: ".".join(_parts(k)[-depth:]) for k in keys}
        values = list(short.values())
        if all(values.count(s) == 1 and s not in fixed for s in values):
            return short
    return {k: k for k in keys}


def _class_name(run: SweepRun, key: str) -> str:
    """The strategy or scenario class of a run: from its grid point, its results, else the sweep's plan."""
    path = run.params.get("model.class_path" if key == "strategy" else "data.class_path")
    if path:
        return str(path).rsplit(".", 1)[-1]
    if run.results is not None and key == "scenario":
        return str(run.results[key])
    label = run.labels.get("model" if key == "strategy" else "data")
    return label.split("(", 1)[0] if label else run.names.get(key) or (str(run.results[key]) if run.results else "?")


def _strategy_label(run: SweepRun) -> str:
    """The strategy's own label (``CUBER`` -> ``CUBER (clkit reconstruction)``, which every table must show)."""
    name = _class_name(run, "strategy")
    own = str(run.results["strategy"]) if run.results is not None else _registered_label(name)
    return own if own.startswith(name) else name


def _registered_label(name: str) -> str:
    """The ``LABEL`` of a clkit strategy class called ``name`` (for runs without results yet), else ``name``."""
    try:
        import strategies
    except ImportError:
        return name
    return next((str(cls.LABEL) for cls in strategies.STRATEGIES if cls.__name__ == name and cls.LABEL), name)


def _label(value: Any) -> str:
    return "-" if value is None else value_label(value)


def group_runs(keys: list[str], runs: list[SweepRun], over: list[str]) -> tuple[list[str], list[Group]]:
    """Group runs by strategy, scenario and every hyper-parameter that varies (except those in ``over``, e.g. the
    seeds, which the statistics run over); groups in plan order. A hyper-parameter is a column only where it varies
    within one strategy on one scenario.

    Returns the columns (``strategy``, ``scenario``, ``evaluation``, then the varying hyper-parameters as dotted
    keys) and the groups, whose labels hold every column.

    Raises:
        DataError: If a key in ``over`` is neither a grid key nor a hyper-parameter of the runs.
    """
    known = set(keys) | {k for r in runs for k in r.params}
    bad = [k for k in over if k not in known]
    if bad:
        raise DataError(f"--over {bad}: not a grid key of the sweep; grid keys: {', '.join(keys) or 'none'}")

    def averaged(k: str) -> bool:
        return any(k == o or k.startswith(o + ".") for o in over)

    candidates = list(dict.fromkeys(k for r in runs for k in r.params
                                    if not averaged(k) and k not in ("model.class_path", "data.class_path")))
    varying = [k for k in candidates if len({_label(r.params.get(k)) for r in runs}) > 1]
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        labels = {"strategy": _strategy_label(run), "scenario": _class_name(run, "scenario"),
                  **{k: _label(run.params.get(k)) for k in varying}}
        groups.setdefault(tuple(labels.values()), Group(labels)).runs.append(run)
    # a column only for a setting that varies within one strategy on one scenario: the settings that tell one
    # strategy's configurations apart from another strategy's are the strategy itself (e.g. GPM's threshold)
    pairs: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for g in groups.values():
        pairs.setdefault((g.labels["strategy"], g.labels["scenario"]), set()).update(
            (k, g.labels[k]) for k in varying)
    hyper = [k for k in varying if any(len({v for key, v in seen if key == k}) > 1 for seen in pairs.values())]
    for group in groups.values():
        group.labels = {"strategy": group.labels["strategy"], "scenario": group.labels["scenario"],
                        "evaluation": group.evaluation, **{k: group.labels[k] for k in hyper}}
    return ["strategy", "scenario", "evaluation", *hyper], list(groups.values())
