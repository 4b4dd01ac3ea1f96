"""Launchers: what runs a sweep's (or a tune study's) runs. Every launcher runs the same task through
:func:`clkit.cli.sweep_exec.execute_run`, so run ids, run directories, claims, resumes and ``sweep.json`` are the same.

- ``local`` (default): ``--workers N`` spawned worker processes on this machine (``0``: in this process).
- ``submitit``: SLURM job arrays through submitit (partition, time, GPUs, array parallelism), or submitit's local
  executor (``cluster: local``) on this machine; ``pip install clkit[slurm]``.
- ``ray``: tasks on a Ray cluster (``address``) or a local Ray started here (``num_cpus``); ``pip install clkit[ray]``.

A launcher accepts tasks (:meth:`Launcher.submit`) and hands back records of finished runs (:meth:`Launcher.poll`).
Jobs of submitit (like SLURM's) outlive a killed sweep process: their claims keep a rerun from starting the same
runs twice, and the rerun waits for them.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any

from clkit.cli.sweep_exec import LocalPool, Record, Task, died
from clkit.errors import ConfigError

__all__ = ["LAUNCHERS", "Launcher", "LocalLauncher", "RayLauncher", "SubmititLauncher", "make_launcher"]

LAUNCHERS = ("local", "submitit", "ray")
OPTIONS: dict[str, tuple[str, ...]] = {
    "local": ("workers", "threads"),
    "submitit": ("cluster", "partition", "time", "gpus", "array_parallelism", "cpus_per_task", "mem_gb", "threads",
                 "setup"),
    "ray": ("address", "num_cpus", "gpus", "threads"),
}
"""Settings per launcher (the sweep file's ``launcher:`` mapping, or the flags of the same names)."""
EXTRAS = {"submitit": "slurm", "ray": "ray", "optuna": "tune"}


def engine(module: str) -> Any:
    """Import an optional engine; a missing one is a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise ConfigError(f"{module} is not installed; install it with pip install 'clkit[{extra}]' "
                          f"(or pip install {module})") from None


class Launcher:
    """Runs tasks; ``slots`` of them at once. Subclasses implement :meth:`submit`, :meth:`poll`, :meth:`in_flight`."""

    name = "local"

    def __init__(self, slots: int, threads: int | None = None) -> None:
        if slots < 1:
            raise ConfigError(f"a launcher needs at least one slot, got {slots}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.slots = slots
        self.threads = threads or max(1, (os.cpu_count() or 1) // slots)
        """torch threads per run (default: this machine's cores shared among the slots)."""

    def prepare(self, task: Task) -> Task:
        """The task as this launcher runs it: torch threads, working directory, launcher name."""
        return {**task, "threads": self.threads, "cwd": os.getcwd(), "launcher": self.name,
                "run_dir": str(Path(task["run_dir"]).absolute())}

    def submit(self, task: Task) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[Record]:
        """Records of runs that finished within ``timeout`` seconds (maybe none)."""
        raise NotImplementedError

    def in_flight(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what this launcher started (a killed sweep's submitit jobs still finish their runs)."""

    def describe(self) -> str:
        return f"{self.name}, {self.slots} at a time, {self.threads} torch thread(s) per run"


class LocalLauncher(Launcher):
    """Worker processes on this machine (``workers=0``: every run in this process, one after the other)."""

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        if workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {workers}")
        super().__init__(max(1, workers), threads)
        self.workers, self.asked = workers, threads
        self.pool = LocalPool(workers)

    def prepare(self, task: Task) -> Task:
        task = super().prepare(task)
        if self.workers == 0:  # in this process: its own threads, unless asked
            task["threads"] = self.asked
        return task

    def submit(self, task: Task) -> None:
        self.pool.submit(self.prepare(task))

    def poll(self, timeout: float) -> list[Record]:
        return self.pool.poll(timeout)

    def in_flight(self) -> int:
        return self.pool.in_flight()

    def close(self) -> None:
        self.pool.close()

    def describe(self) -> str:
        return "local, in this process" if self.workers == 0 else f"local, {self.workers} worker(s), " \
            f"{self.threads} torch thread(s) each"


class SubmititLauncher(Launcher):
    """submitit jobs: a SLURM job array (``cluster: slurm``, the default where SLURM is found) or processes of
    submitit's local executor (``cluster: local``). Job files go to ``SWEEP_DIR/.submitit/``."""

    name = "submitit"

    def __init__(self, folder: Path, *, cluster: str | None = None, partition: str | None = None,
                 time: float | None = None, gpus: int = 0, array_parallelism: int = 1, cpus_per_task: int | None = None,
                 mem_gb: float | None = None, threads: int | None = None, setup: list[str] | None = None) -> None:
        submitit = engine("submitit")
        if cluster not in (None, "slurm", "local", "debug"):
            raise ConfigError(f"launcher cluster={cluster!r}; valid: slurm, local, debug")
        super().__init__(int(array_parallelism), threads or cpus_per_task or 1)
        self.executor = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster=cluster)
        self.cluster = self.executor.cluster
        params: dict[str, Any] = {"timeout_min": int(round(time or 24 * 60)), "name": "clkit",
                                  "cpus_per_task": int(cpus_per_task or self.threads)}
        if gpus:
            params["gpus_per_node"] = int(gpus)
        if mem_gb:
            params["mem_gb"] = float(mem_gb)
        if self.cluster == "slurm":
            params["slurm_array_parallelism"] = int(array_parallelism)
            if partition:
                params["slurm_partition"] = partition
            if setup:
                params["slurm_setup"] = list(setup)
        elif setup:
            params["local_setup"] = list(setup)
        self.executor.update_parameters(**params)
        self.queue: list[Task] = []
        self.jobs: dict[Any, Task] = {}

    def submit(self, task: Task) -> None:
        self.queue.append(self.prepare(task))

    def _launch(self) -> None:
        from clkit.cli.sweep_exec import job_main

        if self.cluster == "slurm":  # one array job; SLURM keeps array_parallelism of it running
            todo, self.queue = self.queue, []
            with self.executor.batch():
                jobs = [self.executor.submit(job_main, t) for t in todo]
        else:  # local processes: at most array_parallelism at once
            free = max(0, self.slots - len(self.jobs))
            todo, self.queue = self.queue[:free], self.queue[free:]
            jobs = [self.executor.submit(job_main, t) for t in todo]
        self.jobs.update(zip(jobs, todo))

    def poll(self, timeout: float) -> list[Record]:
        self._launch()
        deadline = time.monotonic() + timeout
        while True:
            finished = [job for job in self.jobs if job.done()]
            if finished or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        out = []
        for job in finished:
            task = self.jobs.pop(job)
            try:
                out.append(job.result())
            except Exception as err:  # noqa: BLE001  (a job that died, timed out or could not start)
                out.append(died(task, f"submitit job {job.job_id} ended without a result: "
                                      f"{str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err)}"))
        self._launch()
        return out

    def in_flight(self) -> int:
        return len(self.queue) + len(self.jobs)

    def describe(self) -> str:
        return f"submitit ({self.cluster}), {self.slots} at a time, {self.threads} torch thread(s) per run"


class RayLauncher(Launcher):
    """Ray tasks, one CPU per torch thread: on the cluster at ``address`` (e.g. ``auto``), or on a local Ray started
    here with ``num_cpus`` CPUs (default: this machine's)."""

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None, gpus: float = 0,
                 threads: int | None = None) -> None:
        self.ray = ray = engine("ray")
        self.started = not ray.is_initialized()
        if self.started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = int(num_cpus or os.cpu_count() or 1)
            ray.init(**kwargs)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = threads or 1
        super().__init__(max(1, cpus // threads), threads)
        from clkit.cli.sweep_exec import job_main

        self.remote = ray.remote(num_cpus=self.threads, num_gpus=gpus, max_retries=0)(job_main)
        self.refs: dict[Any, Task] = {}

    def submit(self, task: Task) -> None:
        task = self.prepare(task)
        self.refs[self.remote.remote(task)] = task

    def poll(self, timeout: float) -> list[Record]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            task = self.refs.pop(ref)
            try:
                out.append(self.ray.get(ref))
            except Exception as err:  # noqa: BLE001  (a worker that died: RayTaskError, WorkerCrashedError, ...)
                out.append(died(task, f"ray task ended without a result: {type(err).__name__}"))
        return out

    def in_flight(self) -> int:
        return len(self.refs)

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def make_launcher(name: str, options: dict[str, Any], sweep_dir: Path) -> Launcher:
    """The launcher ``name`` with its ``options`` (unknown options are a one-line error naming the valid ones)."""
    if name not in LAUNCHERS:
        raise ConfigError(f"launcher {name!r} is not one of {', '.join(LAUNCHERS)}")
    given = {k: v for k, v in options.items() if v is not None}
    bad = sorted(set(given) - set(OPTIONS[name]))
    if bad:
        raise ConfigError(f"launcher {name}: unknown setting(s) {', '.join(bad)}; valid: {', '.join(OPTIONS[name])}")
    if name == "local":
        return LocalLauncher(int(given.get("workers", 1)), given.get("threads"))
    if name == "submitit":
        return SubmititLauncher(Path(sweep_dir) / ".submitit", **given)
    return RayLauncher(**given)
