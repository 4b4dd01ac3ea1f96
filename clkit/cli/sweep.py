"""``clkit sweep SWEEP.yaml``: run a grid of ``clkit fit`` experiments, resumably, on a launcher of choice.

Every run writes the usual ``results.json`` under ``sweep_dir/<run-id>/``; ``sweep_dir/sweep.json`` indexes the
runs with their grid values and state. Rerunning a sweep skips finished runs, continues interrupted ones from their
experience checkpoints, retries failed ones (``--skip_failed`` keeps them) and waits for runs another process holds
(``--no_wait`` leaves them). Runs go to a launcher (:mod:`clkit.cli.launchers`: local worker processes, submitit /
SLURM job arrays, Ray); ``--shard i/n`` (``0 <= i < n``) runs every n-th run, so machines that share ``sweep_dir``
can split a sweep by hand. ``--trainer.max_epochs 1`` and other dotted keys override every run's config.
``clkit report SWEEP_DIR`` aggregates. See ``docs/sweeps.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from clkit.cli.sweep_plan import RunSpec, SweepSpec, expand, load_sweep, parse_overrides
from clkit.cli.sweep_state import claim_free, run_state, write_index
from clkit.errors import ClkitError, ConfigError

__all__ = ["LAUNCHER_FLAGS", "launcher_for", "main", "parse_shard", "plan", "point_text", "run_sweep", "task_for"]

LAUNCHER_FLAGS = ("workers", "threads", "cluster", "partition", "time", "gpus", "array_parallelism", "cpus_per_task",
                  "mem_gb", "address", "num_cpus")
POLL_SECONDS = 2.0


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


def task_for(spec: SweepSpec, run: RunSpec) -> dict[str, Any]:
    return {"run_id": run.run_id, "index": run.index, "run_dir": str(spec.sweep_dir / run.run_id),
            "config": run.config, "grid": run.grid, "labels": run.labels, "names": run.names}


def point_text(labels: dict[str, str]) -> str:
    """``model=EWC seed_everything=0 lr=0.1``: a grid point as the last part of each key and its label."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={label}" for key, label in labels.items())


def _line(k: int, total: int, status: str, run: RunSpec, record: dict[str, Any]) -> str:
    startup = record.get("startup_seconds")
    extra = f" (+{startup:.1f} s worker start-up)" if startup else ""
    text = f"[{k}/{total}] {status:<7} {record.get('seconds', 0.0):7.1f} s  {run.run_id}  {point_text(run.labels)}"
    return text + extra + (f"\n          error: {record['error']}" if record.get("error") else "")


def launcher_for(spec: SweepSpec, flags: dict[str, Any], name: str | None = None) -> Any:
    """The launcher of the sweep file's ``launcher:`` section with the command line's flags on top."""
    from clkit.cli.launchers import make_launcher

    from_file = dict(spec.launcher)
    file_name = from_file.pop("name", "local")
    chosen = name or file_name
    options = {**(from_file if chosen == file_name else {}), **{k: v for k, v in flags.items() if v is not None}}
    return make_launcher(str(chosen), options, spec.sweep_dir)


def run_sweep(spec: SweepSpec, *, workers: int = 1, shard: tuple[int, int] | None = None,
              skip_failed: bool = False, dry_run: bool = False, launcher: Any = None, wait: bool = True,
              threads: int | None = None) -> dict[str, int]:
    """Run the sweep (or one shard of it) and return the counts of done/failed/skipped/busy runs of this call.

    Args:
        spec: The parsed sweep file.
        workers: Local worker processes when no ``launcher`` is given; ``0`` runs every run in this process.
        shard: ``(i, n)``: run only the runs with ``index % n == i``.
        skip_failed: Leave runs that failed before as they are instead of retrying them.
        dry_run: Only print the plan and each run's state.
        launcher: A :class:`clkit.cli.launchers.Launcher`; default local with ``workers``.
        wait: Wait for runs that another process holds and run them if it stops without finishing them;
            ``False`` counts them ``busy`` and leaves them.
        threads: torch threads per run (default: the cores shared among the launcher's slots).
    """
    runs, mine = plan(spec, shard)
    todo, held, counts = [], [], {"done": 0, "failed": 0, "skipped": 0, "busy": 0}
    where = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of {len(runs)})" if shard else ""
    print(f"clkit sweep: {len(mine)} runs{where} -> {spec.sweep_dir}", flush=True)
    for run in mine:
        state, _ = run_state(spec.sweep_dir / run.run_id)
        if dry_run:
            print(f"  {state:<11} {run.run_id}  {point_text(run.labels)}", flush=True)
        elif state in ("done", "pruned") or (state == "failed" and skip_failed):
            counts["skipped"] += 1
            print(_line(counts["skipped"], len(mine), "skipped", run, {}) + f"  ({state})", flush=True)
        elif state == "running":
            held.append(run)
        else:
            todo.append(run)
    if dry_run:
        return counts
    if launcher is None:
        from clkit.cli.launchers import LocalLauncher

        launcher = LocalLauncher(workers, threads)
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_index(spec, runs, shard)
    print(f"clkit sweep: launcher {launcher.describe()}", flush=True)
    start = time.perf_counter()
    try:
        _drive(spec, runs, todo, held, counts, launcher, shard, len(mine), wait)
    finally:
        launcher.close()
    index = write_index(spec, runs, shard)
    c = index["counts"]
    print(f"clkit sweep: this call {counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped, "
          f"{counts['busy']} busy in {time.perf_counter() - start:.1f} s; sweep total {c['done']}/{index['n_runs']} "
          f"done, {c['failed']} failed -> clkit report {spec.sweep_dir}", flush=True)
    return counts


def _drive(spec: SweepSpec, runs: list[RunSpec], todo: list[RunSpec], held: list[RunSpec], counts: dict[str, int],
           launcher: Any, shard: tuple[int, int] | None, total: int, wait: bool) -> None:
    """Submit the runs, print a line per finished run; runs held elsewhere are waited for (or counted busy)."""
    by_id = {r.run_id: r for r in runs}
    for run in todo:
        launcher.submit(task_for(spec, run))
    if held and wait:
        print(f"clkit sweep: waiting for {len(held)} run(s) held by other processes: "
              f"{', '.join(r.run_id for r in held[:4])}{' ...' if len(held) > 4 else ''}", flush=True)
    elif held:
        counts["busy"] += len(held)
        held = []
    while launcher.in_flight() or held:
        for record in launcher.poll(POLL_SECONDS):
            run = by_id[record["run_id"]]
            status = record["status"]
            if status == "busy" and wait:
                held.append(run)
                continue
            counts[status if status in counts else "skipped"] += 1
            print(_line(sum(counts.values()), total, status, run, record), flush=True)
            write_index(spec, runs, shard)
        for run in list(held):  # a holder that finished, or stopped (killed) without finishing
            run_dir = spec.sweep_dir / run.run_id
            if (run_dir / "results.json").is_file():
                held.remove(run)
                counts["skipped"] += 1
                print(_line(sum(counts.values()), total, "skipped", run, {}) + "  (finished by another process)",
                      flush=True)
            elif claim_free(run_dir):
                held.remove(run)
                launcher.submit(task_for(spec, run))
        if held and not launcher.in_flight():
            time.sleep(POLL_SECONDS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clkit sweep", exit_on_error=False, allow_abbrev=False,
                                description="Run a grid of clkit fit experiments (see docs/sweeps.md). Dotted keys "
                                            "(--trainer.max_epochs 1) override every run's config.")
    p.add_argument("sweep_file", help="the sweep YAML (base, overrides, grid, sweep_dir, launcher)")
    add_launcher_flags(p)
    p.add_argument("--shard", default=None, help="i/n: run only runs with index %% n == i (0 <= i < n)")
    p.add_argument("--sweep_dir", "--sweep-dir", default=None, help="output directory (overrides the file's)")
    p.add_argument("--skip_failed", "--skip-failed", action="store_true", help="do not retry failed runs")
    p.add_argument("--no_wait", "--no-wait", action="store_true",
                   help="leave runs that another process holds (default: wait for them)")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="print the runs and their state only")
    return p


def add_launcher_flags(p: argparse.ArgumentParser) -> None:
    """The launcher flags shared by ``clkit sweep`` and ``clkit tune`` (they override the file's ``launcher:``)."""
    from clkit.cli.launchers import LAUNCHERS

    g = p.add_argument_group("launcher (default: the file's launcher section, else local)")
    g.add_argument("--launcher", choices=LAUNCHERS, default=None, help="local, submitit or ray")
    g.add_argument("--workers", type=int, default=None, help="local: worker processes; 0 = in this process (1)")
    g.add_argument("--threads", type=int, default=None, help="torch threads per run (cores / parallel runs)")
    g.add_argument("--cluster", default=None, help="submitit: slurm (default where found), local or debug")
    g.add_argument("--partition", default=None, help="submitit: SLURM partition")
    g.add_argument("--time", type=float, default=None, help="submitit: time limit per run in minutes")
    g.add_argument("--gpus", type=int, default=None, help="submitit / ray: GPUs per run")
    g.add_argument("--array_parallelism", "--array-parallelism", type=int, default=None,
                   help="submitit: runs at once (SLURM array parallelism)")
    g.add_argument("--cpus_per_task", "--cpus-per-task", type=int, default=None, help="submitit: CPUs per job")
    g.add_argument("--mem_gb", "--mem-gb", type=float, default=None, help="submitit: memory per job in GB")
    g.add_argument("--address", default=None, help="ray: cluster address (e.g. auto); default a local Ray")
    g.add_argument("--num_cpus", "--num-cpus", type=int, default=None, help="ray: CPUs of the local Ray")


def main(args: list[str]) -> None:
    """``clkit sweep``; raises :class:`ClkitError` (one line, exit code 2) for a bad sweep or failed runs."""
    from clkit.cli.errors import parse_subcommand

    overrides, rest = parse_overrides(args)
    ns = parse_subcommand(_parser(), rest, "sweep")
    if ns is None:
        return
    shard = parse_shard(ns.shard)
    spec = load_sweep(Path(ns.sweep_file), ns.sweep_dir)
    spec.override(overrides)
    flags = {k: getattr(ns, k) for k in LAUNCHER_FLAGS}
    try:
        if ns.dry_run:
            run_sweep(spec, shard=shard, dry_run=True)
            return
        launcher = launcher_for(spec, flags, ns.launcher)
        counts = run_sweep(spec, shard=shard, skip_failed=ns.skip_failed, launcher=launcher, wait=not ns.no_wait)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C during a run into SystemExit
        raise ClkitError(f"interrupted; finished runs are kept in {spec.sweep_dir}: run the same command again to "
                         "continue (cut runs resume from their last experience checkpoint)") from None
    if counts["failed"]:
        raise ClkitError(f"{counts['failed']} run(s) failed; errors in {spec.sweep_dir / 'sweep.json'} and each run's "
                         "log.txt")
