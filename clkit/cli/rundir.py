"""A run directory's lifecycle: one owner at a time, a fresh directory or a compatible resume, interruptions.

- :class:`RunDirLock`: a run directory is locked (an OS file lock, released by the kernel when the process dies, so a
  killed run never leaves a stale lock) while a process owns it; a second process gets a one-line refusal naming the
  owner.
- :func:`prepare_run_dir`: a new run may not reuse a directory holding a run; a resume must use the run's config,
  except for what a resume may change (the optimizer, the LR scheduler, the trainer section, test passes).
- :func:`interrupts_as_errors`: Ctrl-C at any moment becomes :class:`clkit.errors.Interrupted` (exit code 130).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Optional

import yaml

from clkit._io import write_json_atomic, write_text_atomic
from clkit.errors import ConfigError, Interrupted

__all__ = ["RESUMABLE", "RunDirLock", "earlier_run", "interrupts_as_errors", "prepare_run_dir"]

RESUMABLE = ("model.init_args.optimizer", "model.init_args.lr_scheduler", "trainer", "test_passes")
"""What a resume may change (e.g. a smaller lr after a NaN loss); everything else must equal the run's config."""


class RunDirLock:
    """Exclusive ownership of a run directory for the life of the process (or of the ``with`` block).

    Raises:
        ConfigError: On entry, if another process owns the directory; the message names it.
    """

    def __init__(self, run_dir: Path) -> None:
        from filelock import FileLock

        self.run_dir = Path(run_dir)
        self.owner_file = self.run_dir / ".clkit.owner"
        self._lock = FileLock(str(self.run_dir / ".clkit.lock"), timeout=0)

    def __enter__(self) -> RunDirLock:
        from filelock import Timeout

        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise ConfigError(f"{self.run_dir} is in use by another clkit process ({self._owner()}); wait for it to "
                              "finish or choose another run directory") from None
        write_json_atomic(self.owner_file, {"pid": os.getpid(), "host": socket.gethostname(),
                                            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv[:12]})
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.owner_file.unlink(missing_ok=True)
        self._lock.release()

    def _owner(self) -> str:
        try:
            owner = json.loads(self.owner_file.read_text())
            return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
        except (OSError, ValueError, KeyError):
            return "owner unknown"


def earlier_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` belongs to a run that finished or got past an experience (config/logs alone do not)."""
    from clkit.loop import experience_checkpoints

    found = [name for name in ("results.json", "results.partial.json") if (run_dir / name).is_file()]
    names = [p.name for p in experience_checkpoints(run_dir / "checkpoints")]
    return found + ([f"checkpoints/{names[0]}" + (f"..{names[-1]}" if len(names) > 1 else "")] if names else [])


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict) or not config:
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    old, new = _flatten(saved), _flatten(now)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def prepare_run_dir(run_dir: Path, config: dict[str, Any], *, resuming: bool, write: bool = True) -> None:
    """Check ``run_dir`` for a new run or a resume, and save the config beside the run.

    Raises:
        ConfigError: A file instead of a directory; a new run into a directory holding a run; a resume of a finished
            run, of a missing directory, or with a config that changes more than :data:`RESUMABLE`.
    """
    path = run_dir / "config.yaml"
    flag = "--resume" if resuming else "--run_dir"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{flag} {run_dir} is a file, not a run directory")
    if not resuming:
        earlier = earlier_run(run_dir)
        if earlier:  # its checkpoints would be mixed with this run's, and --resume would load them
            raise ConfigError(f"--run_dir {run_dir} already holds a run ({', '.join(earlier)}); continue it with "
                              f"--resume {run_dir}, or choose a new --run_dir (or delete that directory)")
        run_dir.mkdir(parents=True, exist_ok=True)
        if write:
            write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
        return
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run directory")
    if (run_dir / "results.json").is_file():
        raise ConfigError(f"--resume {run_dir}: that run has finished (results.json); nothing to resume")
    if not path.is_file():
        return
    changes = _changes(yaml.safe_load(path.read_text()) or {}, config)
    fixed = {k: v for k, v in changes.items() if not k.startswith(RESUMABLE)}
    if fixed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(fixed.items())[:4])
        raise ConfigError(f"--resume {run_dir}: the config differs from the run's config.yaml ({shown}); a resume may "
                          f"change only {', '.join(RESUMABLE)} (e.g. --optimizer.lr)")
    if changes and write:
        log = run_dir / "resumes.json"
        history = json.loads(log.read_text()).get("resumes", []) if log.is_file() else []
        history.append({"changed": {k: {"from": a, "to": b} for k, (a, b) in changes.items()},
                        "at": time.strftime("%Y-%m-%d %H:%M:%S")})
        write_json_atomic(log, {"resumes": history})
        print(f"clkit: warning: resuming with changed {', '.join(changes)} (recorded in {log})", file=sys.stderr)


@contextmanager
def interrupts_as_errors() -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) raises :class:`Interrupted` instead of KeyboardInterrupt.

    Lightning turns a KeyboardInterrupt during ``fit`` into ``exit(1)``; an ordinary exception instead passes through
    its teardown to the caller, which keeps the finished experiences and says how to resume.
    """
    def handler(signum: int, frame: Optional[FrameType]) -> None:
        raise Interrupted("interrupted (Ctrl-C)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
