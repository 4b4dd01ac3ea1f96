"""A progress bar for streams: one training bar per experience, no bars for the many test passes."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

__all__ = ["StreamProgressBar"]


class StreamProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, labelled ``exp i/T · epoch e``; validation and test passes run without bars.

    The stream loop tests every experience after each one (and once before training), which with the stock bar
    prints T+1 test bars per experience; the per-experience summary line of the loop replaces them.
    """

    # Validation and test passes: no bars of their own (the train bar still shows the validation metrics).
    def on_validation_start(self, *args: Any) -> None:
        pass

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_progress_bar is not None and trainer.state.fn == "fit":
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_test_start(self, *args: Any) -> None:
        pass

    def on_test_batch_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_test_end(self, *args: Any) -> None:
        pass

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        exp = getattr(pl_module, "current_experience", None)
        total = len(getattr(pl_module, "classes_per_task", [])) or "?"
        if exp is not None:
            self.train_progress_bar.set_description(f"exp {exp.index + 1}/{total} · epoch {trainer.current_epoch}")
