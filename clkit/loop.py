"""The stream loop: train experience by experience, test every experience after each one (DESIGN.md §2.3).

Design: a **fresh Trainer per experience** (see README, "Architecture"). Each experience gets a new optimizer and
its own ``max_epochs``/early stopping, no ``fit`` is ever called twice on one Trainer, and strategies that need
special training (ExSSNeT's two phases) can ask for trainer overrides. CL memory lives on the module, so it
carries over; a checkpoint of the whole CL state (module, metric rows, RNG states) is written after every
experience, which is what ``--resume`` reads.
"""

from __future__ import annotations

import os
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from clkit.data import ContinualDataModule
from clkit.errors import ConfigError
from clkit.module import ContinualModule

__all__ = ["StreamRun", "TrainerFactory", "experience_checkpoints", "fit_stream", "trainer_factory"]

TrainerFactory = Callable[..., pl.Trainer]  # make_trainer(experience_index, **overrides) -> Trainer


def fit_stream(strategy: ContinualModule, stream: ContinualDataModule, make_trainer: TrainerFactory,
               *, run_dir: Optional[Path] = None, resume: bool = False) -> Tensor:
    """Train ``strategy`` on ``stream`` and return the (T, T) accuracy matrix; see :class:`StreamRun`."""
    return StreamRun(strategy, stream, make_trainer, run_dir=run_dir).run(resume=resume)


@dataclass
class StreamRun:
    """One pass over a stream, with what ``results.json`` needs besides the matrix.

    Args:
        strategy: The strategy to train.
        stream: The scenario.
        make_trainer: ``make_trainer(i, **overrides)`` returns a new Trainer for experience ``i``.
        run_dir: Where checkpoints go (``run_dir/checkpoints``); ``None`` keeps nothing on disk.
        logger: Lightning logger that receives ``stream/*`` and ``exp{j}/acc`` scalars (step = experience).
        verbose: Print one summary line per experience (stderr).
    """

    strategy: ContinualModule
    stream: ContinualDataModule
    make_trainer: TrainerFactory
    run_dir: Optional[Path] = None
    logger: Any = None
    verbose: bool = False
    per_experience: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def checkpoint_dir(self) -> Optional[Path]:
        return None if self.run_dir is None else Path(self.run_dir) / "checkpoints"

    def run(self, resume: bool = False) -> Tensor:
        start_time = time.perf_counter()
        self.stream.prepare_data()
        self.stream.setup("fit")
        self.strategy.bind(self.stream)
        exps = self.stream.experiences
        first = self._resume() if resume else 0
        if hasattr(self.logger, "keep_history"):
            self.logger.keep_history(first)  # rows of the experiences already done survive a resume
        if first == 0:
            self._test(self.make_trainer(0), row=-1)
        for i in range(first, len(exps)):
            t0 = time.perf_counter()
            trainer = self.make_trainer(i, **self.strategy.trainer_overrides(exps[i]))
            self.strategy.current_experience = exps[i]
            train = self.strategy.train_data(exps[: i + 1])
            val = self.strategy.val_data(exps[: i + 1])
            trainer.fit(self.strategy, train_dataloaders=self.stream.train_loader(train, i),
                        val_dataloaders=None if val is None else self.stream.eval_loader(val))
            train_seconds = time.perf_counter() - t0
            self._test(trainer, row=i)
            self.per_experience.append({"experience": i, "name": exps[i].name, "classes": list(exps[i].classes),
                                        "train_seconds": train_seconds, "epochs": int(trainer.current_epoch),
                                        "train_samples": len(train)})
            self._log_row(i)
            if self.verbose and trainer.is_global_zero:
                self._announce(i, train_seconds)
            self.wall_seconds += time.perf_counter() - start_time
            start_time = time.perf_counter()
            self._save(i, trainer.is_global_zero)
        self.wall_seconds += time.perf_counter() - start_time
        self.strategy.current_experience = None
        return self.accuracy_matrix

    # -- results --------------------------------------------------------------------------------------------------
    @property
    def accuracy_matrix(self) -> Tensor:
        assert self.strategy.accuracy is not None
        t = self.strategy.num_tasks
        return self.strategy.accuracy.compute().float().reshape(t, t)  # torchmetrics squeezes a (1, 1) result

    @property
    def random_init_accuracy(self) -> Tensor:
        assert self.strategy.init_accuracy is not None
        return self.strategy.init_accuracy.compute().float().reshape(-1)

    @property
    def completed(self) -> int:
        return len(self.per_experience)

    def _test(self, trainer: pl.Trainer, row: int) -> None:
        """Fill one matrix row; with ``strategy.test_passes > 1`` the counts of several reshuffled passes add up."""
        self.strategy.eval_row = row
        for p in range(max(1, int(self.strategy.test_passes))):
            trainer.test(self.strategy, dataloaders=self.stream.test_dataloader(seed=p), verbose=False)

    def _announce(self, i: int, seconds: float) -> None:
        row = self.accuracy_matrix[i]
        exp = self.stream.experiences[i]
        print(f"[clkit] experience {i + 1}/{len(self.stream.experiences)} ({exp.name}): {seconds:.2f} s, "
              f"acc on it {float(row[i]):.3f}, mean acc on seen {float(row[: i + 1].mean()):.3f}", file=sys.stderr)

    def _log_row(self, i: int) -> None:
        from clkit.metrics import stream_metrics

        row = self.accuracy_matrix[i]
        if self.logger is None:
            return
        scalars = {f"exp{j}/acc": float(a) for j, a in enumerate(row)}
        block = self.accuracy_matrix[: i + 1, : i + 1]
        scalars.update({f"stream/{k}": v for k, v in stream_metrics(block, self.random_init_accuracy[: i + 1]).items()})
        self.logger.log_metrics(scalars, step=i)
        self.logger.save()

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _save(self, i: int, is_global_zero: bool) -> None:
        if self.checkpoint_dir is None or not is_global_zero:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt: dict[str, Any] = {"state_dict": self.strategy.state_dict(), "experience": i,
                                "per_experience": self.per_experience, "wall_seconds": self.wall_seconds,
                                "rng": _rng_state()}
        self.strategy.on_save_checkpoint(ckpt)
        path = self.checkpoint_dir / f"exp{i}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written checkpoint

    def latest_checkpoint(self) -> Optional[Path]:
        found = [] if self.checkpoint_dir is None else experience_checkpoints(self.checkpoint_dir)
        return found[-1] if found else None

    def _resume(self) -> int:
        path = self.latest_checkpoint()
        if path is None:
            return 0
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.strategy.on_load_checkpoint(ckpt)
        try:
            self.strategy.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise ConfigError(f"checkpoint {path} does not match this strategy/scenario config: {err}") from None
        self.per_experience = list(ckpt["per_experience"])
        self.wall_seconds = float(ckpt["wall_seconds"])
        _set_rng_state(ckpt["rng"])
        return int(ckpt["experience"]) + 1


def experience_checkpoints(folder: Path) -> list[Path]:
    """``exp{i}.pt`` files in ``folder`` in experience order (other files, e.g. ``exp_old.pt``, are not ours)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("exp*.pt") if re.fullmatch(r"exp\d+", p.stem)]
    return sorted(found, key=lambda p: int(p.stem[3:]))


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def trainer_factory(**defaults: Any) -> TrainerFactory:
    """A ``make_trainer`` that builds ``pl.Trainer(**defaults, **overrides)`` for every experience.

    Quiet CPU defaults (no Lightning checkpointing, no logger, no progress bar) that ``defaults`` may override;
    handy for scripts and tests::

        acc = fit_stream(Naive(), SplitDigits(), trainer_factory(max_epochs=3))
    """
    base: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                            "enable_progress_bar": False, "enable_model_summary": False, "max_epochs": 1}
    base.update(defaults)

    def make(index: int, **overrides: Any) -> pl.Trainer:
        return pl.Trainer(**{**base, **overrides})

    return make
