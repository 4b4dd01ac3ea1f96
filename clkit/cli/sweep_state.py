"""A sweep's state on disk: atomic files, per-run status and locks, and the ``sweep.json`` index.

Each run directory ``sweep_dir/<run-id>/`` holds ``run.yaml`` (the config the sweep generated), ``status.json``
(``running`` / ``done`` / ``failed`` / ``pruned``, grid values, attempt, seconds, error), ``log.txt``, the claim
(``.lock``, an OS file lock, and ``.lock.owner.json`` naming its holder) and the usual ``clkit fit`` outputs. The files are the truth: a run is done when its ``results.json`` exists (written atomically by
``clkit fit`` as its last step); ``sweep.json`` is an index rebuilt from them, so sweeps and shards that write it
concurrently never disagree for long, and a report never depends on it being fresh.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from clkit._io import write_json_atomic, write_text_atomic
from clkit.cli.sweep_plan import RunSpec, SweepSpec

__all__ = [
    "STATES",
    "RunState",
    "RunClaim",
    "build_index",
    "claim_free",
    "claim_owner",
    "now",
    "read_json",
    "run_state",
    "write_index",
    "write_json_atomic",
    "write_text_atomic",
]

RunState = Literal["done", "failed", "pruned", "running", "interrupted", "pending"]
STATES: tuple[str, ...] = ("done", "failed", "pruned", "running", "interrupted", "pending")
LOCK = ".lock"
OWNER = ".lock.owner.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON mapping at ``path``, or ``None`` if it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody reaped yet is a zombie: dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _identity() -> dict[str, Any]:
    """Who claims: pid and host, plus the engine's job id where there is one (SLURM, Ray)."""
    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
    for key, var in (("slurm_job", "SLURM_JOB_ID"), ("slurm_array_task", "SLURM_ARRAY_TASK_ID"),
                     ("submitit_job", "SUBMITIT_JOB_ID")):
        if os.environ.get(var):
            info[key] = os.environ[var]
    return info


class RunClaim:
    """Exclusive claim of a sweep run directory for one process: an OS file lock (``flock`` through filelock).

    The kernel drops the lock when its holder dies, so a killed sweep or a dead node leaves no lock to take over:
    two processes racing for a run whose last holder died cannot both win, and neither deletes the other's files.
    ``.lock.owner.json`` beside the lock names the holder (pid, host, job id) for reports; it is informative only.
    """

    def __init__(self, run_dir: Path) -> None:
        from filelock import FileLock

        self.run_dir = Path(run_dir)
        self._lock = FileLock(str(self.run_dir / LOCK), timeout=0)
        self.held = False

    def acquire(self) -> bool:
        """Take the claim; ``False`` if another process holds it (never waits)."""
        from filelock import Timeout

        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        self.held = True
        write_json_atomic(self.run_dir / OWNER, _identity())
        return True

    def release(self) -> None:
        if not self.held:
            return
        info = read_json(self.run_dir / OWNER)
        if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            (self.run_dir / OWNER).unlink(missing_ok=True)
        self.held = False
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim_free(run_dir: Path) -> bool:
    """Whether nobody holds the run's claim now (probes the lock for an instant; a claimant that loses to the probe
    reports the run ``busy`` and the sweep tries again)."""
    if not (Path(run_dir) / LOCK).exists():
        return True
    claim = RunClaim(run_dir)
    if claim.acquire():
        claim.release()
        return True
    return False


def claim_owner(run_dir: Path) -> dict[str, Any] | None:
    """The holder of the run's claim as its owner file names it, if that holder looks alive, else ``None``.

    No lock is touched: a live pid on this host counts as holding; another host's claim is probed.
    """
    info = read_json(Path(run_dir) / OWNER)
    if info is None:
        return None
    if info.get("host") != socket.gethostname():
        return None if claim_free(run_dir) else info
    pid = int(info.get("pid", -1))
    return info if pid > 0 and _pid_alive(pid) else None


def run_state(run_dir: Path) -> tuple[RunState, dict[str, Any]]:
    """The state of one run and its ``status.json`` content (``{}`` when there is none)."""
    status = read_json(run_dir / "status.json") or {}
    if (run_dir / "results.json").is_file():
        return "done", status
    if claim_owner(run_dir) is not None:
        return "running", status
    if status.get("status") == "pruned":
        return "pruned", status
    if status.get("status") == "failed":
        return "failed", status
    if status.get("status") == "running" or (run_dir / "checkpoints").is_dir():
        return "interrupted", status
    return "pending", status


def build_index(sweep: SweepSpec, runs: list[RunSpec], shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """The ``sweep.json`` content: every planned run with its grid values and current state."""
    entries = []
    counts = dict.fromkeys(STATES, 0)
    for run in runs:
        state, status = run_state(sweep.sweep_dir / run.run_id)
        counts[state] += 1
        entry: dict[str, Any] = {"run_id": run.run_id, "index": run.index, "status": state, **run.names,
                                 "labels": run.labels, "grid": run.grid}
        entry.update({k: status[k] for k in ("attempt", "resumed_from", "seconds", "finished", "error")
                      if k in status and (state != "done" or k != "error")})
        entries.append(entry)
    return {"sweep_file": str(sweep.path), "base": sweep.base_name, "grid_keys": list(sweep.grid),
            "n_runs": len(runs), "counts": counts, "updated": now(),
            "last_shard": None if shard is None else f"{shard[0]}/{shard[1]}", "runs": entries}


def write_index(sweep: SweepSpec, runs: list[RunSpec], shard: tuple[int, int] | None = None) -> dict[str, Any]:
    index = build_index(sweep, runs, shard)
    write_json_atomic(sweep.sweep_dir / "sweep.json", index)
    return index
