"""Running the runs of a sweep: one run through ``clkit fit``'s entry point, and the local pool of worker processes.

A run goes through :func:`clkit.cli.fit.run_fit` exactly as ``clkit fit --config run.yaml --run_dir DIR`` would, so
validation and outputs are identical whatever launches it (this pool, a submitit job, a Ray task; see
:mod:`clkit.cli.launchers`). A run killed after some experiences continues from its last experience checkpoint
(``--resume``); one killed before any is started afresh. The run directory is claimed with a
:class:`~clkit.cli.sweep_state.RunClaim` for the whole attempt, so one process at most works in it.

A worker process imports what runs need before its first run (:func:`warm_up`): a run's time excludes the
worker's start-up, which is reported separately (``worker_startup_seconds``).
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

from clkit.cli.sweep_state import RunClaim, now, read_json, write_json_atomic, write_text_atomic

__all__ = ["LocalPool", "died", "execute_run", "job_main", "warm_up"]

Task = dict[str, Any]  # run_id, index, run_dir, config, grid, labels, names, threads, cwd, launcher (+ trial)
Record = dict[str, Any]  # run_id, status (done / failed / pruned / busy / skipped), seconds, error, startup_seconds
KEEP = (".lock", ".clkit.lock", ".clkit.owner", "trial.json")  # a fresh attempt keeps the lock files and its trial


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


@contextlib.contextmanager
def _settings(task: Task) -> Iterator[None]:
    """The run's torch threads (the same under every launcher, so numbers and ``results.json`` agree) and working
    directory (relative paths of the config resolve as in the sweep's own process)."""
    import torch

    threads, cwd = task.get("threads"), task.get("cwd")
    saved_threads, saved_cwd = torch.get_num_threads(), os.getcwd()
    if threads:
        torch.set_num_threads(int(threads))
    if cwd and cwd != saved_cwd:
        os.chdir(cwd)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        if cwd and cwd != saved_cwd:
            os.chdir(saved_cwd)


def _completed_experiences(run_dir: Path) -> int:
    """Experiences with a checkpoint, if the run can be resumed (its fit-written ``config.yaml`` exists), else 0."""
    from clkit.loop import experience_checkpoints

    ckpts = experience_checkpoints(run_dir / "checkpoints")
    return int(ckpts[-1].stem[3:]) + 1 if ckpts and (run_dir / "config.yaml").is_file() else 0


def _fresh(run_dir: Path) -> None:
    """Remove what an interrupted attempt left (all but the lock files), so the new attempt starts clean."""
    for entry in run_dir.iterdir():
        if entry.name.startswith(KEEP):
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _error_line(err: BaseException) -> str:
    from clkit.errors import ClkitError

    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, ClkitError) else f"{type(err).__name__}: {text}".rstrip(": ")


def _begin_attempt(task: Task, run_dir: Path, startup: float | None) -> tuple[dict[str, Any], list[str]]:
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
                              "pid": os.getpid(), "host": _host(), "launcher": task.get("launcher", "local"),
                              "threads": task.get("threads"), "started": now()}
    if startup is not None:
        status["worker_startup_seconds"] = round(startup, 3)
    if task.get("trial") is not None:
        status["trial"] = task["trial"]
    write_json_atomic(run_dir / "status.json", status)
    mode = ["--resume", str(run_dir)] if resumed_from else ["--run_dir", str(run_dir)]
    return status, ["--config", str(config_path), *mode]


def _host() -> str:
    import socket

    return socket.gethostname()


def _pruned(err: BaseException) -> bool:
    return type(err).__name__ == "TrialPruned"  # optuna's, raised by the tune callback


def execute_run(task: Task, startup: float | None = None) -> Record:
    """Run one sweep run to completion (or failure) and record its status; never raises for a failed run.

    Args:
        task: What to run (see ``Task``).
        startup: The worker's start-up seconds, given with its first run only (recorded beside the run's time).

    Raises:
        KeyboardInterrupt, SystemExit: On Ctrl-C (Lightning turns it into ``SystemExit``); the run stays ``running``
            in its ``status.json`` and the next sweep resumes it.
    """
    from clkit.cli.fit import run_fit

    run_dir = Path(task["run_dir"])
    claim = RunClaim(run_dir)
    base: Record = {"run_id": task["run_id"], "seconds": 0.0, "startup_seconds": startup}
    if not claim.acquire():
        return {**base, "status": "busy"}
    try:
        if (run_dir / "results.json").is_file():
            return {**base, "status": "skipped"}
        with _settings(task):
            start = time.perf_counter()
            status, args = _begin_attempt(task, run_dir, startup)
            try:
                with _captured(run_dir / "log.txt"):
                    run_fit(args)
                status.update(status="done")
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as err:
                with open(run_dir / "log.txt", "a") as log:
                    log.write(traceback.format_exc())
                status.update(status="pruned" if _pruned(err) else "failed", error=_error_line(err))
            status.update(seconds=round(time.perf_counter() - start, 3), finished=now())
        write_json_atomic(run_dir / "status.json", status)
        return {**base, "status": status["status"], "seconds": status["seconds"], "error": status.get("error")}
    finally:
        claim.release()


_STARTED = time.time()
_WARM: list[float] = []


def _tiny_fit() -> None:
    """Fit a 2-experience toy stream in memory: the first Trainer, data loader and optimizer steps of a process pay
    for lazy initialisation (about a second on a small CPU), which would otherwise land in the first run's time."""
    import logging
    import warnings

    from clkit.loop import fit_stream, trainer_factory
    from scenarios import ToySplit
    from strategies import Naive

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            fit_stream(Naive(), ToySplit(num_experiences=2, samples_per_class=32, val_fraction=0.25),
                       trainer_factory(max_epochs=1))
            _class_split_benchmark()
        finally:
            logging.disable(logging.NOTSET)


def _class_split_benchmark() -> None:
    """Avalanche's class-split generator, scikit-learn's bundled data sets and matplotlib's Agg backend, whose first
    use in a process costs most of a second (the digits streams and every run's accuracy-matrix plot use them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import sklearn.datasets  # noqa: F401
    import torch
    from avalanche.benchmarks import nc_benchmark
    from torch.utils.data import TensorDataset

    x, y = torch.zeros(8, 1, 2, 2), torch.arange(8) % 4
    data = TensorDataset(x, y)
    data.targets = y  # type: ignore[attr-defined]
    nc_benchmark(data, data, n_experiences=2, task_labels=True, fixed_class_order=[0, 1, 2, 3],
                 class_ids_from_zero_in_each_exp=False)
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.imshow([[0.0, 1.0]])
    fig.savefig(os.devnull, format="png")
    plt.close(fig)


def warm_up(full: bool = True) -> float | None:
    """Import what every run needs (torch, Lightning, Avalanche, the strategies and scenarios) and, with ``full``,
    fit a tiny toy stream; returns this process's start-up seconds (from its start to now) the first time, ``None``
    after (a reused worker)."""
    if _WARM:
        return None
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    import clkit.cli.fit  # noqa: F401
    import clkit.loop  # noqa: F401
    import scenarios  # noqa: F401
    import strategies  # noqa: F401

    with contextlib.suppress(ImportError):
        import avalanche.benchmarks  # noqa: F401  (the scenarios import it lazily)
    if full:
        with contextlib.suppress(Exception):  # a warm-up that fails costs only the warm-up
            _tiny_fit()
    try:
        import psutil

        started = psutil.Process().create_time()
    except Exception:  # noqa: BLE001
        started = _STARTED
    _WARM.append(time.time() - started)
    return _WARM[0]


def job_main(task: Task) -> Record:
    """The body of a submitit job or a Ray task: warm up the process, then run the task."""
    return execute_run(task, warm_up())


def _watch_parent(parent: int) -> None:
    """Exit this worker when the sweep process that started it is gone (killed sweeps leave no orphans)."""
    while os.getppid() == parent:
        time.sleep(0.25)
    os._exit(3)


def _worker(conn: Connection, parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    startup = warm_up()
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(execute_run(task, startup))
        startup = None


class LocalPool:
    """Worker processes fed one task at a time over their own pipe, so a dead worker's task is known.

    ``workers=0`` runs every task in this process (no isolation, no start-up cost).
    """

    def __init__(self, workers: int) -> None:
        import multiprocessing as mp

        self.workers = workers
        self.ctx = mp.get_context("spawn")
        self.pending: deque[Task] = deque()
        self.held: dict[Connection, tuple[Any, Task | None]] = {}  # pipe -> (process, task it holds)

    def submit(self, task: Task) -> None:
        self.pending.append(task)
        if self.workers == 0:
            return
        idle = [conn for conn, (_, held) in self.held.items() if held is None]
        if idle:
            self._feed(idle[0])
        elif len(self.held) < self.workers:
            self._start()

    def in_flight(self) -> int:
        return len(self.pending) + sum(task is not None for _, task in self.held.values())

    def _start(self) -> None:
        here, there = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(there, os.getpid()), daemon=True)
        proc.start()
        there.close()
        self.held[here] = (proc, None)
        self._feed(here)

    def _feed(self, conn: Connection) -> None:
        """Send the worker its next task, if any (an idle worker waits for the next submission)."""
        if not self.pending:
            self.held[conn] = (self.held[conn][0], None)
            return
        task = self.pending.popleft()
        self.held[conn] = (self.held[conn][0], task)
        conn.send(task)

    def poll(self, timeout: float) -> list[Record]:
        """Wait up to ``timeout`` s for results or dead workers; a record per finished (or lost) run."""
        if self.workers == 0:
            return [execute_run(self.pending.popleft())] if self.pending else []
        from multiprocessing.connection import wait

        out: list[Record] = []
        sentinels = {proc.sentinel: conn for conn, (proc, _) in self.held.items()}
        for ready in wait([*self.held, *sentinels], timeout=timeout):
            conn = sentinels[ready] if isinstance(ready, int) else cast(Connection, ready)
            if conn not in self.held:
                continue
            proc, task = self.held[conn]
            try:
                record: Record | None = conn.recv() if ready is conn else None
            except (EOFError, OSError):
                record = None
            if record is not None:
                out.append(record)
                self._feed(conn)
                continue
            proc.join(timeout=5.0)
            del self.held[conn]
            if task is not None:
                out.append(died(task, f"worker process died (exit code {proc.exitcode})"))
            if self.pending and len(self.held) < self.workers:
                self._start()
        return out

    def close(self) -> None:
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc, _ in self.held.values():
            proc.join(timeout=10.0)
            if proc.is_alive():
                proc.terminate()
        self.held.clear()


def died(task: Task, error: str) -> Record:
    """Record the run of a worker or job that died (killed, out of memory, crashed in native code)."""
    run_dir = Path(task["run_dir"])
    status = read_json(run_dir / "status.json") or {}
    if status.get("run_id") == task["run_id"] and status.get("status") == "running":
        status.update(status="failed", error=error, finished=now())
        write_json_atomic(run_dir / "status.json", status)
    return {"run_id": task["run_id"], "status": "failed", "seconds": 0.0, "error": error}
