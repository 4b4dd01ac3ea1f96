"""The run's CSV log (``run_dir/metrics.csv``): Lightning's CSV logger with an ``experience`` column, kept on resume."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning_fabric.utilities.rank_zero import rank_zero_only
from pytorch_lightning.loggers import CSVLogger

__all__ = ["StreamCSVLogger"]


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
