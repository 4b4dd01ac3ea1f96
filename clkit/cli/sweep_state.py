"""A sweep's state on disk: atomic files, per-run status and locks, and the ``sweep.json`` index.

Each run directory ``sweep_dir/<run-id>/`` holds ``run.yaml`` (the config the sweep generated), ``status.json``
(``running`` / ``done`` / ``failed``, grid values, attempt, seconds, error), ``log.txt`` and the usual ``clkit fit``
outputs. The files are the truth: a run is done when its ``results.json`` exists (written atomically by
``clkit fit`` as its last step); ``sweep.json`` is an index rebuilt from them, so sweeps and shards that write it
concurrently never disagree for long, and a report never depends on it being fresh.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from clkit._io import write_json_atomic, write_text_atomic
from clkit.cli.sweep_plan import RunSpec, SweepSpec

__all__ = [
    "STATES",
    "RunState",
    "acquire_lock",
    "build_index",
    "now",
    "read_json",
    "release_lock",
    "run_state",
    "write_index",
    "write_json_atomic",
    "write_text_atomic",
]

RunState = Literal["done", "failed", "running", "interrupted", "pending"]
STATES: tuple[str, ...] = ("done", "failed", "running", "interrupted", "pending")
LOCK = ".lock"


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


def _lock_held(info: dict[str, Any] | None) -> bool:
    """Whether another live process on this host holds the lock (locks of other hosts count as stale)."""
    if info is None or info.get("host") != socket.gethostname():
        return False
    pid = int(info.get("pid", -1))
    return pid != os.getpid() and pid > 0 and _pid_alive(pid)


def acquire_lock(run_dir: Path) -> bool:
    """Claim ``run_dir`` for this process; ``False`` if a live process on this host holds it.

    The lock file is created complete and atomically (a hard link of a written temporary file), so a reader never
    sees it empty. A stale lock (dead process, or another host's: a re-queued array task) is taken over.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    tmp = run_dir / f".lock.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}))
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                if _lock_held(read_json(path)):
                    return False
                path.unlink(missing_ok=True)
        return False
    finally:
        tmp.unlink(missing_ok=True)


def release_lock(run_dir: Path) -> None:
    path = run_dir / LOCK
    info = read_json(path)
    if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def run_state(run_dir: Path) -> tuple[RunState, dict[str, Any]]:
    """The state of one run and its ``status.json`` content (``{}`` when there is none)."""
    status = read_json(run_dir / "status.json") or {}
    if (run_dir / "results.json").is_file():
        return "done", status
    if _lock_held(read_json(run_dir / LOCK)):
        return "running", status
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
