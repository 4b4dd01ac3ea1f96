"""Running the runs of a sweep: one run through ``clkit fit``'s entry point, and a pool of worker processes.

A run goes through :func:`clkit.cli.fit.run_fit` exactly as ``clkit fit --config run.yaml --run_dir DIR`` would, so
validation and outputs are identical. A run killed after some experiences continues from its last experience
checkpoint (``--resume``); one killed before any is started afresh. Workers are spawned processes (one per
``--workers``) fed over pipes, so the sweep knows which run a worker held if the worker dies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import yaml

from clkit.cli.sweep_state import acquire_lock, now, read_json, release_lock, write_json_atomic, write_text_atomic

__all__ = ["execute_run", "run_parallel", "run_serial"]

Task = dict[str, Any]  # run_id, index, run_dir, config, grid, labels, names
Record = dict[str, Any]  # run_id, status (done / failed / busy), seconds, error


@contextlib.contextmanager
def _captured(path: Path) -> Iterator[None]:
    """Send everything written to stdout/stderr (Python objects and file descriptors 1 and 2) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "a", buffering=1) as log:
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _completed_experiences(run_dir: Path) -> int:
    """Experiences with a checkpoint, if the run can be resumed (its fit-written ``config.yaml`` exists), else 0."""
    from clkit.loop import experience_checkpoints

    ckpts = experience_checkpoints(run_dir / "checkpoints")
    return int(ckpts[-1].stem[3:]) + 1 if ckpts and (run_dir / "config.yaml").is_file() else 0


def _fresh(run_dir: Path) -> None:
    """Remove what an interrupted attempt left (all but the lock), so the new attempt starts clean."""
    for entry in run_dir.iterdir():
        if entry.name.startswith(".lock"):
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _error_line(err: BaseException) -> str:
    from clkit.errors import ClkitError

    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, ClkitError) else f"{type(err).__name__}: {text}".rstrip(": ")


def _begin_attempt(task: Task, run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Prepare the run directory for a new attempt; returns its ``status.json`` content and the fit arguments.

    With experience checkpoints from an earlier attempt the run is resumed (``--resume``); without, it starts clean.
    """
    previous = read_json(run_dir / "status.json") or {}
    resumed_from = _completed_experiences(run_dir)
    if resumed_from == 0:
        _fresh(run_dir)
    config_path = run_dir / "run.yaml"
    write_text_atomic(config_path, yaml.safe_dump(task["config"], sort_keys=False))
    status: dict[str, Any] = {"run_id": task["run_id"], "index": task["index"], **task["names"], "grid": task["grid"],
                              "labels": task["labels"], "status": "running",
                              "attempt": int(previous.get("attempt", 0)) + 1, "resumed_from": resumed_from,
                              "pid": os.getpid(), "started": now()}
    write_json_atomic(run_dir / "status.json", status)
    mode = ["--resume", str(run_dir)] if resumed_from else ["--run_dir", str(run_dir)]
    return status, ["--config", str(config_path), *mode]


def execute_run(task: Task) -> Record:
    """Run one sweep run to completion (or failure) and record its status; never raises for a failed run.

    Raises:
        KeyboardInterrupt, SystemExit: On Ctrl-C (Lightning turns it into ``SystemExit``); the run stays ``running``
            in its ``status.json`` and the next sweep resumes it.
    """
    from clkit.cli.fit import run_fit

    run_dir = Path(task["run_dir"])
    if not acquire_lock(run_dir):
        return {"run_id": task["run_id"], "status": "busy", "seconds": 0.0}
    start = time.perf_counter()
    try:
        if (run_dir / "results.json").is_file():
            return {"run_id": task["run_id"], "status": "skipped", "seconds": 0.0}
        status, args = _begin_attempt(task, run_dir)
        try:
            with _captured(run_dir / "log.txt"):
                run_fit(args)
            status.update(status="done")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:
            with open(run_dir / "log.txt", "a") as log:
                log.write(traceback.format_exc())
            status.update(status="failed", error=_error_line(err))
        status.update(seconds=round(time.perf_counter() - start, 3), finished=now())
        write_json_atomic(run_dir / "status.json", status)
        return {"run_id": task["run_id"], "status": status["status"], "seconds": status["seconds"],
                "error": status.get("error")}
    finally:
        release_lock(run_dir)


def run_serial(tasks: list[Task]) -> Iterator[Record]:
    """Run the tasks one after the other in this process."""
    for task in tasks:
        yield execute_run(task)


def _watch_parent(parent: int) -> None:
    """Exit this worker when the sweep process that started it is gone (killed sweeps leave no orphans)."""
    while os.getppid() == parent:
        time.sleep(0.25)
    os._exit(3)


def _worker(conn: Connection, parent: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(execute_run(task))


class _Pool:
    """Worker processes fed one task at a time over their own pipe, so a dead worker's task is known."""

    def __init__(self, tasks: list[Task], workers: int) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.pending = deque(tasks)
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.held: dict[Connection, tuple[Any, Task | None]] = {}  # pipe -> (process, task it holds)

    def start(self) -> None:
        here, there = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(there, os.getpid(), self.threads), daemon=True)
        proc.start()
        there.close()
        self.held[here] = (proc, None)
        self.feed(here)

    def feed(self, conn: Connection) -> None:
        """Send the worker its next task (``None`` = stop)."""
        task = self.pending.popleft() if self.pending else None
        self.held[conn] = (self.held[conn][0], task)
        conn.send(task)

    def busy(self) -> bool:
        return any(task is not None for _, task in self.held.values())

    def step(self) -> Iterator[Record]:
        """Wait for results or dead workers; yield a record per finished (or lost) run."""
        from multiprocessing.connection import wait

        sentinels = {proc.sentinel: conn for conn, (proc, _) in self.held.items()}
        for ready in wait([*self.held, *sentinels], timeout=5.0):
            conn = sentinels[ready] if isinstance(ready, int) else cast(Connection, ready)
            if conn not in self.held:
                continue
            proc, task = self.held[conn]
            try:
                record: Record | None = conn.recv() if ready is conn else None
            except (EOFError, OSError):
                record = None
            if record is not None:
                yield record
                self.feed(conn)
                continue
            proc.join(timeout=5.0)
            del self.held[conn]
            if task is not None:
                yield _died(task, proc.exitcode)
                if self.pending:
                    self.start()

    def close(self) -> None:
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc, _ in self.held.values():
            proc.join(timeout=10.0)
            if proc.is_alive():
                proc.terminate()


def run_parallel(tasks: list[Task], workers: int) -> Iterator[Record]:
    """Run the tasks on ``workers`` spawned processes; a worker that dies fails its run and is replaced."""
    pool = _Pool(tasks, workers)
    try:
        for _ in range(min(workers, len(tasks))):
            pool.start()
        while pool.busy():
            yield from pool.step()
    finally:
        pool.close()


def _died(task: Task, exitcode: Any) -> Record:
    """Record the run of a worker that died (killed, out of memory, crashed in native code)."""
    run_dir = Path(task["run_dir"])
    status = read_json(run_dir / "status.json") or {}
    error = f"worker process died (exit code {exitcode})"
    if status.get("run_id") == task["run_id"]:
        status.update(status="failed", error=error, finished=now())
        write_json_atomic(run_dir / "status.json", status)
    return {"run_id": task["run_id"], "status": "failed", "seconds": 0.0, "error": error}
