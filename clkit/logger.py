"""Loggers that understand a stream of experiences.

``run_dir/metrics.csv`` is always written (:class:`StreamCSVLogger`: Lightning's CSV logger with an ``experience``
column, kept on resume); every other configured logger (TensorBoard, W&B, ...) is wrapped in
:class:`ExperienceLogger`, so its steps keep increasing across experiences.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from lightning_fabric.utilities.rank_zero import rank_zero_only
from pytorch_lightning.loggers import CSVLogger, Logger

__all__ = ["ExperienceLogger", "StreamCSVLogger", "StreamLoggers"]


class StreamCSVLogger(CSVLogger):
    """``metrics.csv`` directly in ``save_dir``, every row tagged with the experience it belongs to.

    A fresh Trainer per experience restarts Lightning's ``epoch``/``step`` counters, so the ``experience`` column is
    what tells the rows apart. On ``--resume`` :meth:`keep_history` keeps the rows of the finished experiences
    (Lightning's writer would delete the file) and drops those of the experience that was cut.
    """

    def __init__(self, save_dir: str) -> None:
        super().__init__(save_dir=save_dir, name="", version="")
        self.experience: Optional[int] = None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if self.experience is not None:
            metrics = {**metrics, "experience": self.experience}
        super().log_metrics(metrics, step)

    @rank_zero_only
    def keep_history(self, before: int) -> None:
        """Start the log, keeping the rows of experiences ``< before`` from an earlier, interrupted run."""
        path = Path(self.log_dir) / "metrics.csv"
        keys: list[str] = []
        rows: list[dict[str, str]] = []
        if before > 0 and path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                keys = list(reader.fieldnames or [])
                rows = [r for r in reader if r.get("experience") and float(r["experience"]) < before]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "directory not empty, previous logs will be deleted": handled here
            writer = self.experiment  # creating the writer removes an existing metrics.csv
        if rows:
            writer.metrics_keys = sorted(keys)
            with open(path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)


class ExperienceLogger(Logger):  # (``inner`` is typed Any: ``experiment`` is not part of Logger's interface)
    """Any Lightning logger, made to understand a stream of experiences (a fresh Trainer per experience).

    - Steps keep increasing across experiences: each experience's Trainer restarts ``global_step`` at 0, so the
      wrapper adds the steps of the experiences before it; every record also carries an ``experience`` scalar.
    - Hyper-parameters are logged once (not once per experience), with no placeholder metric.
    - ``finalize`` waits for the end of the stream (closing a writer per experience would split TensorBoard's
      event files); :meth:`close` finalises the wrapped logger.
    - :meth:`log_figure` logs a matplotlib figure where the backend can (TensorBoard, W&B).
    """

    def __init__(self, logger: Logger) -> None:
        super().__init__()
        self.inner: Any = logger
        self.experience: Optional[int] = None
        self.offset = 0
        self._hparams_logged = False
        if hasattr(logger, "_default_hp_metric"):
            logger._default_hp_metric = False  # TensorBoard: no hp_metric = -1 placeholder

    @property
    def name(self) -> Optional[str]:
        return self.inner.name

    @property
    def version(self) -> Optional[Union[int, str]]:
        return self.inner.version

    @property
    def save_dir(self) -> Optional[str]:
        return self.inner.save_dir

    @property
    def log_dir(self) -> Optional[str]:
        return getattr(self.inner, "log_dir", None)

    @property
    def experiment(self) -> Any:
        return self.inner.experiment

    def start_experience(self, index: int, step_offset: int) -> None:
        self.experience, self.offset = index, step_offset

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        tagged = {**metrics, "experience": self.experience} if self.experience is not None else dict(metrics)
        self.inner.log_metrics(tagged, None if step is None else self.offset + int(step))

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if not self._hparams_logged:
            self.inner.log_hyperparams(params, *args, **kwargs)
            self._hparams_logged = True

    @rank_zero_only
    def log_figure(self, name: str, figure: Any, step: int) -> None:
        kind = type(self.inner).__name__
        if kind == "TensorBoardLogger":
            self.inner.experiment.add_figure(name, figure, global_step=step, close=False)
        elif kind == "WandbLogger":
            import wandb

            self.inner.experiment.log({name: wandb.Image(figure), "trainer/global_step": step})

    @rank_zero_only
    def save(self) -> None:
        self.inner.save()

    def finalize(self, status: str) -> None:
        pass  # the stream goes on: see close()

    @rank_zero_only
    def close(self, status: str = "success") -> None:
        """Finalise the wrapped logger; a W&B run is also finished (its summary and config files written)."""
        self.inner.finalize(status)
        if type(self.inner).__name__ == "WandbLogger" and getattr(self.inner, "_experiment", None) is not None:
            self.inner.experiment.finish(exit_code=0 if status == "success" else 1)


class StreamLoggers:
    """The run's loggers as the loop sees them: ``metrics.csv`` (always) and every configured logger, wrapped.

    Args:
        csv: The run's :class:`StreamCSVLogger`.
        others: The configured loggers, each wrapped in :class:`ExperienceLogger`.
    """

    def __init__(self, csv: StreamCSVLogger, others: list[ExperienceLogger]) -> None:
        self.csv, self.others = csv, others

    @property
    def lightning(self) -> list[Logger]:
        """What each experience's Trainer receives."""
        return [self.csv, *self.others]

    def keep_history(self, before: int) -> None:
        self.csv.keep_history(before)

    def start_experience(self, index: int, step_offset: int) -> None:
        self.csv.experience = index
        for logger in self.others:
            logger.start_experience(index, step_offset)

    def log_row(self, index: int, scalars: dict[str, float], step: int, figure: Any = None) -> None:
        """``exp{j}/acc`` and ``stream/*`` after experience ``index`` at the stream's step ``step``."""
        self.start_experience(index, 0)
        self.csv.log_metrics(scalars, step)
        self.csv.save()
        for logger in self.others:
            logger.log_metrics(scalars, step)
            if figure is not None:
                logger.log_figure("stream/accuracy_matrix", figure, step)
            logger.save()

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved config, as hyper-parameters of every configured logger (W&B's run config, TensorBoard's)."""
        flat = _flatten(config)
        for logger in self.others:
            logger.log_hyperparams(flat)

    def close(self, status: str = "success") -> None:
        for logger in self.others:
            logger.close(status)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    if isinstance(config, (list, tuple)):
        return {prefix: str(list(config))}
    return {prefix: config}
