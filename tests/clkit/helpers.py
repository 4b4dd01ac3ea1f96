"""Small classes that tests reference by class path from configs."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from strategies.naive import Naive


class TaskILOnly(Naive):
    """A strategy that only supports task-IL (to test the unsupported-setting error)."""

    SUPPORTED_SCENARIOS = frozenset({"task-il"})


class CrashAt(pl.Callback):
    """Raises at the start of training on experience ``experience`` (simulates a killed run)."""

    def __init__(self, experience: int) -> None:
        self.experience = experience

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if pl_module.current_experience.index == self.experience:
            raise RuntimeError(f"simulated crash at experience {self.experience}")


class NaNAt(Naive):
    """Naive whose loss becomes NaN on experience ``experience`` (tests the NaN stop)."""

    def __init__(self, *, experience: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_experience = experience

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        assert self.current_experience is not None
        return loss * float("nan") if self.current_experience.index == self.nan_experience else loss
