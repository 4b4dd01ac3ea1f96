"""``clkit sweep SWEEP.yaml``: run a grid of ``clkit fit`` experiments, resumably, in parallel or in shards.

Every run writes the usual ``results.json`` under ``sweep_dir/<run-id>/``; ``sweep_dir/sweep.json`` indexes the
runs with their grid values and state. Rerunning a sweep skips finished runs, continues interrupted ones from their
experience checkpoints and retries failed ones (``--skip_failed`` keeps them). ``--shard i/n`` (``0 <= i < n``)
runs every n-th run, so an array job can split a sweep across machines that share ``sweep_dir``; ``clkit report
SWEEP_DIR`` then aggregates all of them. See ``docs/sweeps.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from clkit.cli.sweep_plan import RunSpec, SweepSpec, expand, load_sweep
from clkit.cli.sweep_state import run_state, write_index
from clkit.errors import ClkitError, ConfigError

__all__ = ["main", "parse_shard", "plan", "run_sweep"]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r} is not of the form i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n, got i={i}, n={n}")
    return i, n


def plan(spec: SweepSpec, shard: tuple[int, int] | None = None) -> tuple[list[RunSpec], list[RunSpec]]:
    """All runs of the sweep, and those of this shard (run ``k`` belongs to shard ``k % n``)."""
    runs = expand(spec)
    mine = runs if shard is None else [r for r in runs if r.index % shard[1] == shard[0]]
    return runs, mine


def _task(spec: SweepSpec, run: RunSpec) -> dict[str, Any]:
    return {"run_id": run.run_id, "index": run.index, "run_dir": str(spec.sweep_dir / run.run_id),
            "config": run.config, "grid": run.grid, "labels": run.labels, "names": run.names}


def _line(k: int, total: int, status: str, run: RunSpec, seconds: float, error: str | None = None) -> str:
    point = " ".join(f"{key.rsplit('.', 1)[-1]}={label}" for key, label in run.labels.items())
    text = f"[{k}/{total}] {status:<7} {seconds:7.1f} s  {run.run_id}  {point}"
    return text + (f"\n          error: {error}" if error else "")


def run_sweep(spec: SweepSpec, *, workers: int = 1, shard: tuple[int, int] | None = None,
              skip_failed: bool = False, dry_run: bool = False) -> dict[str, int]:
    """Run the sweep (or one shard of it) and return the counts of done/failed/skipped/busy runs of this call.

    Args:
        spec: The parsed sweep file.
        workers: Worker processes; ``0`` runs every run in this process (no isolation, no start-up cost).
        shard: ``(i, n)``: run only the runs with ``index % n == i``.
        skip_failed: Leave runs that failed before as they are instead of retrying them.
        dry_run: Only print the plan and each run's state.
    """
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    runs, mine = plan(spec, shard)
    todo, counts = [], {"done": 0, "failed": 0, "skipped": 0, "busy": 0}
    where = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of {len(runs)})" if shard else ""
    print(f"clkit sweep: {len(mine)} runs{where} -> {spec.sweep_dir}", flush=True)
    for run in mine:
        state, _ = run_state(spec.sweep_dir / run.run_id)
        keep = state in ("done", "running") or (state == "failed" and skip_failed)
        if dry_run:
            print(f"  {state:<11} {run.run_id}  {run.labels}")
        elif keep:
            counts["skipped" if state != "running" else "busy"] += 1
            print(_line(counts["skipped"] + counts["busy"], len(mine), "skipped" if state != "running" else "busy",
                        run, 0.0) + f"  ({state})", flush=True)
        else:
            todo.append(run)
    if dry_run:
        return counts
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_index(spec, runs, shard)
    _execute(spec, runs, todo, counts, workers, shard, len(mine))
    return counts


def _execute(spec: SweepSpec, runs: list[RunSpec], todo: list[RunSpec], counts: dict[str, int], workers: int,
             shard: tuple[int, int] | None, total: int) -> None:
    from clkit.cli.sweep_exec import run_parallel, run_serial

    by_id = {r.run_id: r for r in todo}
    tasks = [_task(spec, r) for r in todo]
    records = run_serial(tasks) if workers == 0 else run_parallel(tasks, workers)
    start = time.perf_counter()
    for record in records:
        status = record["status"]
        counts[status if status in counts else "skipped"] += 1
        k = sum(counts.values())
        print(_line(k, total, status, by_id[record["run_id"]], record["seconds"], record.get("error")), flush=True)
        write_index(spec, runs, shard)
    index = write_index(spec, runs, shard)
    c = index["counts"]
    print(f"clkit sweep: this call {counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped, "
          f"{counts['busy']} busy in {time.perf_counter() - start:.1f} s; sweep total {c['done']}/{index['n_runs']} "
          f"done, {c['failed']} failed -> clkit report {spec.sweep_dir}", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clkit sweep", exit_on_error=False, allow_abbrev=False,
                                description="Run a grid of clkit fit experiments (see docs/sweeps.md).")
    p.add_argument("sweep_file", help="the sweep YAML (base, overrides, grid, sweep_dir)")
    p.add_argument("--workers", type=int, default=1, help="worker processes; 0 = run in this process (default 1)")
    p.add_argument("--shard", default=None, help="i/n: run only runs with index %% n == i (0 <= i < n)")
    p.add_argument("--sweep_dir", "--sweep-dir", default=None, help="output directory (overrides the file's)")
    p.add_argument("--skip_failed", "--skip-failed", action="store_true", help="do not retry failed runs")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the runs and their state only")
    return p


def main(args: list[str]) -> None:
    """``clkit sweep``; raises :class:`ClkitError` (one line, exit code 2) for a bad sweep or failed runs."""
    from clkit.cli.errors import parse_subcommand

    ns = parse_subcommand(_parser(), args, "sweep")
    if ns is None:
        return
    shard = parse_shard(ns.shard)
    spec = load_sweep(Path(ns.sweep_file), ns.sweep_dir)
    try:
        counts = run_sweep(spec, workers=ns.workers, shard=shard, skip_failed=ns.skip_failed, dry_run=ns.dry_run)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C during a run into SystemExit
        raise ClkitError(f"interrupted; finished runs are kept in {spec.sweep_dir}: run the same command again to "
                         "continue (cut runs resume from their last experience checkpoint)") from None
    if counts["failed"]:
        raise ClkitError(f"{counts['failed']} run(s) failed; errors in {spec.sweep_dir / 'sweep.json'} and each run's "
                         "log.txt")

