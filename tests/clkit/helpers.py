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
    """Naive whose loss becomes NaN on experience ``experience`` while the lr exceeds ``above_lr`` (tests the NaN stop
    and the advised resume with a smaller lr)."""

    def __init__(self, *, experience: int = 1, above_lr: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_experience, self.above_lr = experience, above_lr

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        assert self.current_experience is not None
        lr = max(g["lr"] for opt in self.trainer.optimizers for g in opt.param_groups)
        return loss * float("nan") if self.current_experience.index == self.nan_experience and lr > self.above_lr \
            else loss


class RecordOptimizer(pl.Callback):
    """Appends ``experience epoch optimizer-class lr`` to ``path`` at every training epoch's start."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        opt = trainer.optimizers[0]
        with open(self.path, "a") as f:
            f.write(f"{pl_module.current_experience.index} {trainer.current_epoch} {type(opt).__name__} "
                    f"{opt.param_groups[0]['lr']:g}\n")


from scenarios.digits import SplitDigits  # noqa: E402


class SplitDigitsTestNoise(SplitDigits):
    """SplitDigits whose test images carry seeded noise of scale ``test_noise``: the test data alone changes (the
    training and validation images, carved from the training part, are SplitDigits' own)."""

    def __init__(self, *, test_noise: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.test_noise = test_noise

    def benchmark(self) -> Any:
        import torch
        from avalanche.benchmarks import nc_benchmark

        from scenarios.digits import _dataset, load_digits_tensors

        (xtr, ytr), (xte, yte) = load_digits_tensors(self.test_fraction, self.seed)
        noise = torch.randn(xte.shape, generator=torch.Generator().manual_seed(12345))
        xte = (xte + self.test_noise * noise).clamp(0.0, 1.0)
        return nc_benchmark(_dataset(xtr, ytr), _dataset(xte, yte), n_experiences=self.n_experiences,
                            task_labels=self.setting == "task-il", fixed_class_order=list(range(10)),
                            class_ids_from_zero_in_each_exp=False)
