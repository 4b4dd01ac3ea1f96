"""The per-experience Trainers of ``clkit fit``: loggers that understand experiences, callbacks without side effects.

- **Loggers.** ``run_dir/metrics.csv`` (with its ``experience`` column) is always written. Every logger of
  ``--trainer.logger`` (one or a list) is wrapped in :class:`clkit.logger.ExperienceLogger` and receives
  ``train/*``, ``val/*``, ``exp{j}/acc``, ``stream/*``, the matrix figure and the resolved config, with steps that
  keep increasing across experiences. A logger whose ``save_dir`` the user did not set writes under ``run_dir``
  (:func:`default_logger_dirs` fills a placeholder before parsing, :func:`build_loggers` replaces it).
- **Callbacks.** The configured callbacks are copied fresh for each experience (EarlyStopping's patience and best
  score restart with each experience). Only clkit's own progress line is shown unless the user configured a
  progress bar, and no bar is drawn into redirected output. A ``ModelCheckpoint`` writes into
  ``checkpoints/exp{i}/`` (under its ``dirpath`` if given, else under ``run_dir``) with ``exp{i}-`` in its names.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from clkit.errors import ConfigError

__all__ = ["RUN_DIR", "build_loggers", "default_logger_dirs", "make_trainer_factory"]

RUN_DIR = "<run_dir>"  # a logger's save_dir before the run directory is known


def _logger_class(name: str) -> Optional[type]:
    """The logger class a ``--trainer.logger`` value names (``TensorBoardLogger`` or a dotted path); ``None`` if it
    names none (``true``, ``false``, a mapping)."""
    if not name or not name.replace(".", "").replace("_", "").isalnum() or name.lower() in ("true", "false", "null"):
        return None
    module, _, attr = name.rpartition(".")
    try:
        owner = importlib.import_module(module or "pytorch_lightning.loggers")
        cls = getattr(owner, attr)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def _takes_save_dir(cls: Optional[type]) -> bool:
    return cls is not None and "save_dir" in inspect.signature(cls).parameters


def default_logger_dirs(args: list[str], tmp: Callable[[], Path]) -> list[str]:
    """``args`` with ``save_dir`` set to :data:`RUN_DIR` for every configured logger that takes a ``save_dir`` and
    was given none, on the command line (``--trainer.logger X``, ``--trainer.logger+=X``) or in a ``--config``
    file (rewritten into a copy under ``tmp()``)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, value, step = arg, None, 1
        if "=" in arg and arg.startswith("--trainer.logger"):
            key, value = arg.split("=", 1)
        elif arg in ("--trainer.logger", "--trainer.logger+") and i + 1 < len(args):
            value, step = args[i + 1], 2
        if key == "--config" and value is None and i + 1 < len(args):
            out += ["--config", _config_with_logger_dirs(args[i + 1], tmp)]
            i += 2
            continue
        out += args[i:i + step]
        i += step
        if key in ("--trainer.logger", "--trainer.logger+") and value is not None and _takes_save_dir(
                _logger_class(value)):
            rest = args[i:]
            nxt = next((k for k, a in enumerate(rest) if a.split("=", 1)[0] in ("--trainer.logger",
                                                                                "--trainer.logger+")), len(rest))
            if not any(a.split("=", 1)[0] == "--trainer.logger.save_dir" for a in rest[:nxt]):
                out.append(f"--trainer.logger.save_dir={RUN_DIR}")
    return out


def _config_with_logger_dirs(path: str, tmp: Callable[[], Path]) -> str:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return path  # check_config_file reports it
    trainer: Any = data.get("trainer") if isinstance(data, dict) else None
    loggers = trainer.get("logger") if isinstance(trainer, dict) else None
    if loggers is None or isinstance(loggers, bool):
        return path
    changed = False
    items = loggers if isinstance(loggers, list) else [loggers]
    for k, item in enumerate(items):
        if isinstance(item, str):
            item = items[k] = {"class_path": item}
        if isinstance(item, dict) and _takes_save_dir(_logger_class(str(item.get("class_path", "")))):
            init = item.setdefault("init_args", {}) or {}
            item["init_args"] = init
            if "save_dir" not in init:
                init["save_dir"] = RUN_DIR
                changed = True
    if not changed:
        return path
    trainer["logger"] = items if isinstance(loggers, list) else items[0]
    copy_path = tmp() / Path(path).name
    copy_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(copy_path)


def temporary_dir() -> tuple[Callable[[], Path], Callable[[], None]]:
    """A lazily created temporary directory and its cleanup."""
    holder: list[tempfile.TemporaryDirectory[str]] = []

    def get() -> Path:
        if not holder:
            holder.append(tempfile.TemporaryDirectory(prefix="clkit-config-"))
        return Path(holder[0].name)

    def cleanup() -> None:
        for h in holder:
            h.cleanup()

    return get, cleanup


def build_loggers(configured: Any, config: Any, run_dir: Path) -> Any:
    """The run's :class:`clkit.logger.StreamLoggers`: ``metrics.csv`` and the configured loggers (instances, with
    :data:`RUN_DIR` replaced by ``run_dir``: such loggers are built again from their ``config`` entry)."""
    from pytorch_lightning.loggers import Logger

    from clkit.logger import ExperienceLogger, StreamCSVLogger, StreamLoggers

    items = configured if isinstance(configured, (list, tuple)) else [configured]
    entries = config if isinstance(config, (list, tuple)) else [config]
    others = []
    for k, logger in enumerate(items):
        if not isinstance(logger, Logger):
            continue  # True / False / None: metrics.csv alone
        if str(getattr(logger, "save_dir", None) or getattr(logger, "_save_dir", "")) == RUN_DIR or \
                str(getattr(logger, "_root_dir", "")) == RUN_DIR:
            logger = _rebuild(logger, entries[k] if k < len(entries) else None, run_dir)
        others.append(ExperienceLogger(logger))
    return StreamLoggers(StreamCSVLogger(save_dir=str(run_dir)), others)


def _rebuild(logger: Any, entry: Any, run_dir: Path) -> Any:
    init = _as_dict(getattr(entry, "init_args", None) if entry is not None else None)
    if not init:
        raise ConfigError(f"cannot place the {type(logger).__name__}'s files under the run directory; give its "
                          "save_dir (--trainer.logger.save_dir DIR)")
    init["save_dir"] = str(run_dir)
    return type(logger)(**init)


def _as_dict(ns: Any) -> dict[str, Any]:
    if ns is None:
        return {}
    if hasattr(ns, "as_dict"):
        return dict(ns.as_dict())
    return dict(ns)


def make_trainer_factory(kwargs: dict[str, Any], callbacks: list[Any], loggers: Any, run_dir: Path) -> Any:
    """``make_trainer(index, **overrides)`` for :class:`clkit.loop.StreamRun`.

    Args:
        kwargs: The ``trainer`` section (without callbacks and logger).
        callbacks: The user's callbacks as configured (never the ones Lightning added to a Trainer).
        loggers: The run's :class:`clkit.logger.StreamLoggers`.
        run_dir: The run directory.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar

    from clkit.progress import StreamProgressBar

    pristine = copy.deepcopy(list(callbacks))  # stateful callbacks must not leak across experiences
    kwargs = {k: v for k, v in kwargs.items() if k not in ("callbacks", "logger", "default_root_dir")}
    checkpointing = bool(kwargs.pop("enable_checkpointing", False))

    def make_trainer(index: int, **overrides: Any) -> pl.Trainer:
        cbs = copy.deepcopy(pristine)
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in cbs):
            cbs.append(ModelCheckpoint())  # Lightning's default one, but in the experience's folder
        for cb in cbs:
            if isinstance(cb, ModelCheckpoint):
                base = Path(cb.dirpath) if cb.dirpath else Path(run_dir) / "checkpoints"
                cb.dirpath = str(base / f"exp{index}")
                cb.filename = f"exp{index}-" + (cb.filename or "{epoch}-{step}")
        user_bar = any(isinstance(c, ProgressBar) for c in cbs)
        bar = kwargs.get("enable_progress_bar", True) is not False
        if bar and not user_bar:
            if sys.stderr.isatty():
                cbs.append(StreamProgressBar())
            else:
                bar = False  # redirected output: the one summary line per experience, not megabytes of redraws
        return pl.Trainer(**{**kwargs, "callbacks": cbs, "logger": loggers.lightning,
                             "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in cbs),
                             "default_root_dir": str(run_dir), "enable_progress_bar": bar, **overrides})

    return make_trainer
