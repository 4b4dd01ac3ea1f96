"""The stream loop: it drives the continual-learning protocol and owns the accuracy matrices.

Design: a **fresh Trainer per experience** (see README, "Architecture"). Each experience gets a new optimizer and
its own ``max_epochs``/early stopping, and no ``fit`` is ever called twice on one Trainer. The loop calls the CL
hooks itself, with the module on the training device; after each experience it evaluates every test experience
(future ones included) and every validation split, filling one row of the test and of the validation accuracy
matrix, and writes a checkpoint of the whole CL state (module, CL memory, matrices), which is what ``--resume``
reads. Evaluation runs the module directly (no Trainer), in as few passes as the data allows.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from clkit._io import save_torch_atomic
from clkit.data import ContinualDataModule, StreamSpec, TensorData
from clkit.errors import ConfigError, DataError
from clkit.fastfit import ChunkedBatches, FastFit
from clkit.metrics import AccuracyCounts, stream_metrics
from clkit.module import ContinualModule, _restricted_argmax
from clkit.results import StreamResult
from clkit.rng import derive_seed, forked_rng

__all__ = ["CHECKPOINT_FORMAT", "StreamResult", "StreamRun", "TrainerFactory", "check_trainer",
           "experience_checkpoints", "fit_stream", "trainer_factory"]

TrainerFactory = Callable[..., pl.Trainer]  # make_trainer(experience_index, **overrides) -> Trainer
CHECKPOINT_FORMAT = 2


def fit_stream(strategy: ContinualModule, stream: ContinualDataModule,
               make_trainer: Optional[TrainerFactory] = None, *, run_dir: Optional[Path] = None,
               resume: bool = False, test_passes: int = 1) -> StreamResult:
    """Train ``strategy`` on ``stream`` experience by experience and return the :class:`StreamResult`.

    Args:
        strategy: A fresh strategy (training one that has already learned a stream is refused).
        stream: The scenario.
        make_trainer: ``make_trainer(i, **overrides)`` returns the Trainer of experience ``i``; default
            :func:`trainer_factory` (quiet, CPU, 1 epoch).
        run_dir: Where checkpoints go (``run_dir/checkpoints``); ``None`` keeps nothing on disk.
        resume: Continue after the last checkpoint in ``run_dir``.
        test_passes: Evaluation passes per matrix row, each over reshuffled batches, their counts added (for
            networks that normalise with test-batch statistics).

    Example:
        >>> result = fit_stream(Naive(), SplitDigits(), trainer_factory(max_epochs=3))  # doctest: +SKIP
        >>> result.metrics["acc"]  # doctest: +SKIP
    """
    run = StreamRun(strategy, stream, make_trainer or trainer_factory(), run_dir=run_dir, test_passes=test_passes)
    return run.run(resume=resume)


@dataclass
class StreamRun:
    """One pass over a stream; :meth:`run` returns its :class:`StreamResult`.

    Args:
        strategy: The strategy to train.
        stream: The scenario.
        make_trainer: ``make_trainer(i, **overrides)`` returns a new Trainer for experience ``i``.
        run_dir: Where checkpoints go (``run_dir/checkpoints``); ``None`` keeps nothing on disk.
        logger: Lightning logger that receives ``stream/*`` and ``exp{j}/acc`` scalars (step = experience).
        verbose: Print one summary line per experience (stderr).
        test_passes: Evaluation passes per matrix row (see :func:`fit_stream`).
        about: Extra JSON-able facts written into every checkpoint (the CLI puts the resolved config there).
        fast_training: Train through :class:`clkit.fastfit.FastFit` (several optimizer steps per Lightning step,
            bit-identical results) whenever it keeps every semantic; ``False``: always Lightning's own step loop.
    """

    strategy: ContinualModule
    stream: ContinualDataModule
    make_trainer: TrainerFactory
    run_dir: Optional[Path] = None
    logger: Any = None
    verbose: bool = False
    test_passes: int = 1
    about: dict[str, Any] = field(default_factory=dict)
    fast_training: bool = True
    fast_path_refusal: Optional[str] = None  # why the last experience took the slow path (None: it took the fast one)
    per_experience: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0

    def __post_init__(self) -> None:
        if int(self.test_passes) < 1:
            raise ConfigError(f"test_passes must be >= 1, got {self.test_passes}")
        self._test: Optional[AccuracyCounts] = None
        self._val: Optional[AccuracyCounts] = None
        self._aware: Optional[AccuracyCounts] = None  # class-IL: test predictions restricted to each experience's classes
        self._init: Optional[AccuracyCounts] = None  # rows: test splits, validation splits, task-aware test splits
        self.spec: Optional[StreamSpec] = None
        self._steps = 0

    @property
    def steps_done(self) -> int:
        """Optimizer steps of the finished experiences (a stream-wide step for loggers)."""
        return sum(int(p.get("steps", 0)) for p in self.per_experience)

    @property
    def checkpoint_dir(self) -> Optional[Path]:
        return None if self.run_dir is None else Path(self.run_dir) / "checkpoints"

    @property
    def completed(self) -> int:
        return len(self.per_experience)

    def run(self, resume: bool = False) -> StreamResult:
        start = time.perf_counter()
        self.stream.prepare_data()
        self.stream.setup("fit")
        self.spec = spec = self.stream.spec
        strategy = self.strategy
        if strategy.spec is not None and int(strategy.experiences_done) > 0:
            raise ConfigError(f"{type(strategy).__name__} has already been trained on a stream; build a new strategy "
                              "for each run (resuming goes through run_dir and resume=True)")
        strategy.bind(spec)
        t = spec.n_experiences
        self._test, self._val, self._init = AccuracyCounts(t, t), AccuracyCounts(t, t), AccuracyCounts(3, t)
        self._aware = AccuracyCounts(t, t) if spec.setting == "class-il" else None
        first = self._resume() if resume else 0
        if hasattr(self.logger, "keep_history"):
            self.logger.keep_history(first)  # rows of the experiences already done survive a resume
        exps = self.stream.experiences
        if first == 0:
            trainer = self._trainer(0)
            with forked_rng(derive_seed(strategy.seed, "evaluation", -1), trainer.strategy.root_device):
                self._evaluate(trainer, row=-1)
        for i in range(first, t):
            t0 = time.perf_counter()
            trainer = self._trainer(i, **strategy.trainer_overrides(exps[i]))
            if hasattr(self.logger, "start_experience"):
                self.logger.start_experience(i, self.steps_done)
            device = trainer.strategy.root_device
            with forked_rng(derive_seed(strategy.seed, "experience", i), device), precision_errors(strategy, trainer):
                train, val = self._fit(trainer, i)
                train_seconds = time.perf_counter() - t0
                self._evaluate(trainer, row=i)
            self.per_experience.append({"experience": i, "name": exps[i].name, "classes": list(exps[i].classes),
                                        "train_seconds": round(train_seconds, 4), "epochs": int(trainer.current_epoch),
                                        "steps": self._steps, "train_samples": len(train),
                                        "val_samples": 0 if val is None else len(val)})
            self._log_row(i)
            if self.verbose and trainer.is_global_zero:
                self._announce(i, train_seconds)
            self.wall_seconds += time.perf_counter() - start
            start = time.perf_counter()
            self._save(i, trainer.is_global_zero)
        self.wall_seconds += time.perf_counter() - start
        return self.result()

    def _trainer(self, i: int, **overrides: Any) -> pl.Trainer:
        """``make_trainer(i, **overrides)``; Lightning's complaints about the settings become one-line errors."""
        try:
            with _cached_entry_points():
                trainer = self.make_trainer(i, **overrides)
            _ddp_for(self.strategy, trainer)
            return trainer
        except (ValueError, TypeError) as err:
            raise ConfigError(f"trainer: {str(err).splitlines()[0]}") from None
        except Exception as err:
            if type(err).__name__ == "MisconfigurationException":
                raise ConfigError(f"trainer: {str(err).splitlines()[0]}") from None
            raise

    def _fit(self, trainer: pl.Trainer, i: int) -> tuple[TensorData, Optional[TensorData]]:
        """Experience ``i``: hooks around ``trainer.fit``, the module on the training device for both hooks."""
        check_trainer(trainer)
        strategy, exp = self.strategy, self.stream.experiences[i]
        device = trainer.strategy.root_device
        strategy.to(device)
        strategy._enter_experience(exp)
        train, val = strategy.train_data(exp), strategy.val_data(exp)
        loader: Any = self.stream.train_loader(train, i)
        self.fast_path_refusal = FastFit.refusal(strategy, trainer, loader) if self.fast_training else "turned off"
        fast = None if self.fast_path_refusal else FastFit(strategy, trainer, len(loader))
        with fast.installed() if fast is not None else nullcontext():
            trainer.fit(strategy, train_dataloaders=loader if fast is None else ChunkedBatches(loader, fast.CHUNK),
                        val_dataloaders=None if val is None else self.stream.eval_loader(val))
            self._steps = int(trainer.global_step)  # (read under manual optimization: its own step counter)
        strategy.to(device)  # the Trainer's teardown moved the module to the CPU
        strategy._exit_experience(exp)
        return train, val

    # -- evaluation -----------------------------------------------------------------------------------------------
    def _evaluate(self, trainer: pl.Trainer, row: int) -> None:
        """Fill row ``row`` of the test matrix (``-1``: the untrained model's row) and of the validation matrix."""
        assert self._test is not None and self._val is not None and self._init is not None
        strategy = self.strategy
        precision = trainer.strategy.precision_plugin
        strategy.to(trainer.strategy.root_device)
        precision.convert_module(strategy)
        was_training = strategy.training
        strategy.eval()
        test, val, aware = (self._init, self._init, self._aware and self._init) if row < 0 else \
            (self._test, self._val, self._aware)
        test_row, val_row, aware_row = (0, 1, 2) if row < 0 else (row, row, row)
        for counts, r in ((test, test_row), (val, val_row), (aware, aware_row)):
            if counts is not None:
                counts.reset_row(r)
        exps = self.stream.experiences
        strategy.on_evaluation_start("test", row)
        for p in range(self.test_passes):
            for j, exp in enumerate(exps):
                classes = torch.tensor(exp.classes) if aware is not None else None
                correct, total, correct_aware = self._count(exp.test, precision, seed=p, classes=classes)
                test.add(test_row, j, correct, total)
                if aware is not None:
                    aware.add(aware_row, j, correct_aware, total)
        strategy.on_evaluation_end("test", row, [e.test for e in exps[: row + 1]])
        strategy.on_evaluation_start("val", row)
        for j, exp in enumerate(exps):
            if exp.val is not None:
                val.add(val_row, j, *self._count(exp.val, precision, seed=0)[:2])
        strategy.on_evaluation_end("val", row, [e.val for e in exps[: row + 1] if e.val is not None])
        strategy.train(was_training)

    def _count(self, data: TensorData, precision: Any, seed: int,
               classes: Optional[Tensor] = None) -> tuple[int, int, int]:
        """Correct and total predictions of the strategy on ``data``, in the stream's shuffled eval batches, and with
        ``classes``, the correct predictions restricted to them (task-aware class-IL accuracy)."""
        strategy, device = self.strategy, self.strategy.device
        plain = type(strategy).predict is ContinualModule.predict and \
            type(strategy).predict_within is ContinualModule.predict_within  # one forward pass gives both
        correct = total = correct_aware = 0
        with torch.no_grad(), precision.forward_context():
            for x, y, t in self.stream.eval_loader(data, seed=seed):
                x, t = precision.convert_input(x.to(device, non_blocking=True)), t.to(device)
                if classes is not None and plain:
                    logits = strategy(x, t)
                    preds, aware = logits.argmax(-1), _restricted_argmax(logits, classes)
                else:
                    preds = strategy.predict(x, t)
                    aware = strategy.predict_within(x, t, classes) if classes is not None else preds
                correct += int((preds.to(y.device) == y).sum())
                correct_aware += int((aware.to(y.device) == y).sum())
                total += int(y.numel())
        return correct, total, correct_aware

    # -- results --------------------------------------------------------------------------------------------------
    @property
    def accuracy_matrix(self) -> Tensor:
        assert self._test is not None, "run() first"
        return self._test.accuracy()

    @property
    def val_accuracy_matrix(self) -> Optional[Tensor]:
        assert self._val is not None, "run() first"
        if not bool((self._val.total > 0).any()):
            return None
        return self._val.accuracy()

    @property
    def random_init_accuracy(self) -> Tensor:
        assert self._init is not None, "run() first"
        return self._init.accuracy()[0]

    @property
    def task_aware_accuracy_matrix(self) -> Optional[Tensor]:
        """Class-IL only: the test matrix with every prediction restricted to its experience's classes."""
        return None if self._aware is None else self._aware.accuracy()

    @property
    def val_random_init_accuracy(self) -> Optional[Tensor]:
        assert self._init is not None, "run() first"
        return None if self.val_accuracy_matrix is None else self._init.accuracy()[1]

    def result(self) -> StreamResult:
        assert self.spec is not None, "run() first"
        assert self._init is not None
        return StreamResult(self.strategy, self.spec, self.accuracy_matrix, self.val_accuracy_matrix,
                            self.random_init_accuracy, list(self.per_experience), self.wall_seconds,
                            self.test_passes, self.val_random_init_accuracy, self.task_aware_accuracy_matrix,
                            None if self._aware is None else self._init.accuracy()[2], dict(self.environment))

    def _announce(self, i: int, seconds: float) -> None:
        row = self.accuracy_matrix[i]
        exp = self.stream.experiences[i]
        val = self.val_accuracy_matrix
        val_text = "" if val is None or math.isnan(float(val[i, i])) else f", val acc {float(val[i, i]):.3f}"
        print(f"[clkit] experience {i + 1}/{len(self.stream.experiences)} ({exp.name}): {seconds:.2f} s, "
              f"acc on it {float(row[i]):.3f}{val_text}, mean acc on seen {float(row[: i + 1].mean()):.3f}",
              file=sys.stderr)

    def _log_row(self, i: int) -> None:
        if self.logger is None:
            return
        row = self.accuracy_matrix[i]
        scalars = {f"exp{j}/acc": float(a) for j, a in enumerate(row)}
        block = self.accuracy_matrix[: i + 1, : i + 1]
        scalars.update({f"stream/{k}": v for k, v in stream_metrics(block, self.random_init_accuracy[: i + 1]).items()})
        if hasattr(self.logger, "log_row"):  # clkit's loggers: a stream-wide step and the matrix figure
            figure = None
            if getattr(self.logger, "others", None):
                from clkit.figures import matrix_figure

                figure = matrix_figure(self.accuracy_matrix, [e.name for e in self.stream.experiences], upto=i)
            self.logger.log_row(i, scalars, self.steps_done, figure)
            if figure is not None:
                import matplotlib.pyplot as plt

                plt.close(figure)
        else:
            self.logger.log_metrics(scalars, step=i)
            self.logger.save()

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _save(self, i: int, is_global_zero: bool) -> None:
        if self.checkpoint_dir is None or not is_global_zero:
            return
        assert self._test is not None and self._val is not None and self._init is not None and self.spec is not None
        ckpt: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "experience": i, "state_dict": self.strategy.state_dict(),
            "memory": self.strategy.memory_state(), "strategy": self.strategy.describe(),
            "spec": self.spec.to_dict(), "environment": self.environment,
            "matrices": {"test": self._test.state(), "val": self._val.state(), "init": self._init.state(),
                         **({"task_aware": self._aware.state()} if self._aware is not None else {})},
            "per_experience": self.per_experience, "wall_seconds": self.wall_seconds, "about": self.about,
        }
        try:
            save_torch_atomic(self.checkpoint_dir / f"exp{i}.pt", ckpt)
        except OSError as err:  # a full disk: the run stops with what is finished on disk
            raise DataError(f"cannot write the checkpoint of experience {i} to {self.checkpoint_dir}: "
                            f"{err.strerror or err}") from None

    def latest_checkpoint(self) -> Optional[Path]:
        found = [] if self.checkpoint_dir is None else experience_checkpoints(self.checkpoint_dir)
        return found[-1] if found else None

    def _readable_checkpoint(self) -> tuple[Optional[Path], dict[str, Any]]:
        """The newest experience checkpoint that loads; unreadable ones (a cut copy, a full disk, zero bytes) are
        skipped with a warning naming them."""
        found = [] if self.checkpoint_dir is None else experience_checkpoints(self.checkpoint_dir)
        for path in reversed(found):
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(ckpt, dict) or "experience" not in ckpt:
                    raise ValueError("not an experience checkpoint")
            except Exception as err:  # noqa: BLE001  (torch raises RuntimeError, EOFError, UnpicklingError, ...)
                warnings.warn(f"skipping unreadable checkpoint {path} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:120] if str(err) else 'empty'}); resuming from an earlier one",
                              stacklevel=3)
                continue
            return path, ckpt
        return None, {}

    def _resume(self) -> int:
        path, ckpt = self._readable_checkpoint()
        if path is None:
            return 0
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint {path} was written by another clkit version (format "
                              f"{ckpt.get('format', 1)}, this version reads {CHECKPOINT_FORMAT}); start a new run")
        try:
            self.strategy.load_memory_state(ckpt["memory"])
            self.strategy.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, KeyError) as err:
            raise ConfigError(f"checkpoint {path} does not match this strategy/scenario config: {err}") from None
        assert self._test is not None and self._val is not None and self._init is not None
        self._test.load(ckpt["matrices"]["test"])
        self._val.load(ckpt["matrices"]["val"])
        self._init.load(ckpt["matrices"]["init"])
        if self._aware is not None:
            self._aware.load(ckpt["matrices"]["task_aware"])
        self._warn_if_environment_changed(ckpt.get("environment", {}), path)
        self.per_experience = list(ckpt["per_experience"])
        self.wall_seconds = float(ckpt["wall_seconds"])
        return int(ckpt["experience"]) + 1


    @property
    def environment(self) -> dict[str, Any]:
        """What the numbers may depend on besides the config: torch version and threads, the device."""
        return {"torch": str(torch.__version__), "torch_threads": torch.get_num_threads(),
                "device": str(self.strategy.device), "lightning": pl.__version__}

    def _warn_if_environment_changed(self, saved: dict[str, Any], path: Path) -> None:
        now = self.environment
        changed = {k: (saved[k], now[k]) for k in ("torch", "torch_threads") if k in saved and saved[k] != now[k]}
        if changed:
            text = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            warnings.warn(f"resuming {path.parent.parent} with a different {text}: the remaining experiences may not "
                          "reproduce an uninterrupted run's numbers exactly", stacklevel=2)


PRECISIONS = ("32-true", "64-true", "bf16-mixed")
"""Precisions every shipped strategy is tested in (``tests/strategies/test_precision.py``)."""
_DTYPE_ERRORS = ("not implemented for 'BFloat16'", "not implemented for 'Half'", "must have the same dtype",
                 "to have the same dtype", "should be the same", "expected scalar type", "Input type")


@contextmanager
def precision_errors(strategy: ContinualModule, trainer: pl.Trainer) -> Iterator[None]:
    """An operation that the Trainer's precision does not support becomes one line naming the strategy, the
    precision and the ones it is tested in (instead of a traceback from deep in a CL hook)."""
    try:
        yield
    except (NotImplementedError, RuntimeError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        precision = str(getattr(trainer.strategy.precision_plugin, "precision", "?"))
        if precision not in ("32-true", "32") and any(m in text for m in _DTYPE_ERRORS):
            raise ConfigError(f"{type(strategy).__name__} does not run in trainer.precision={precision} ({text}); "
                              f"valid: {', '.join(PRECISIONS)}") from None
        raise


_ENTRY_POINTS: dict[str, Any] = {}


@contextmanager
def _cached_entry_points() -> Iterator[None]:
    """Every Trainer scans the installed packages' entry points for callback factories (~10 ms, a third of a small
    experience's set-up); the installed packages do not change during a run, so the scan is done once per group."""
    from importlib.metadata import entry_points

    try:
        from lightning_fabric.utilities import registry
    except ImportError:  # another Lightning layout: no caching
        yield
        return

    def cached(group: str) -> Any:
        if group not in _ENTRY_POINTS:
            _ENTRY_POINTS[group] = tuple(entry_points(group=group))
        return _ENTRY_POINTS[group]

    original = registry.entry_points
    registry.entry_points = cached  # type: ignore[assignment]
    try:
        yield
    finally:
        registry.entry_points = original  # type: ignore[assignment]


def _ddp_for(strategy: ContinualModule, trainer: pl.Trainer) -> None:
    """Under DDP, a strategy whose steps leave parameters without gradients (the other tasks' heads in task-IL,
    frozen or masked weights: :attr:`ContinualModule.unused_parameters`) needs ``find_unused_parameters``; the loop
    turns it on rather than letting DDP fail at the first step. An explicit ``ddp`` strategy object is left alone
    unless it is Lightning's default."""
    from pytorch_lightning.strategies import DDPStrategy

    ddp = trainer.strategy
    if isinstance(ddp, DDPStrategy) and strategy.unused_parameters and \
            not ddp._ddp_kwargs.get("find_unused_parameters", False):
        ddp._ddp_kwargs["find_unused_parameters"] = True


def check_trainer(trainer: pl.Trainer) -> None:
    """Refuse per-experience Trainer settings that would train nothing or forever, or that torch would reject late.

    Raises:
        ConfigError: Naming the setting and what is valid.
    """
    epochs, steps = trainer.max_epochs, trainer.max_steps
    if epochs is not None and (epochs == 0 or epochs < -1):
        raise ConfigError(f"trainer.max_epochs={epochs} trains nothing; valid: >= 1 (epochs per experience)")
    if epochs == -1 and steps == -1:
        raise ConfigError("trainer.max_epochs=-1 with no max_steps would train the first experience forever; valid: "
                          "max_epochs >= 1, or max_steps >= 1")
    limit = trainer.limit_train_batches
    if limit is not None and limit <= 0:
        raise ConfigError(f"trainer.limit_train_batches={limit} trains nothing; valid: a fraction in (0, 1] or a "
                          "number of batches >= 1")
    clip = trainer.gradient_clip_val
    if clip is not None and (clip < 0 or clip != clip):
        raise ConfigError(f"trainer.gradient_clip_val={clip} is invalid; valid: a number >= 0 (0: no clipping)")


def experience_checkpoints(folder: Path) -> list[Path]:
    """``exp{i}.pt`` files in ``folder`` in experience order (other files, e.g. ``exp_old.pt``, are not ours)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("exp*.pt") if re.fullmatch(r"exp\d+", p.stem)]
    return sorted(found, key=lambda p: int(p.stem[3:]))


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer start-up notes (devices, tips), which a Trainer per experience repeats."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def trainer_factory(**defaults: Any) -> TrainerFactory:
    """A ``make_trainer`` that builds ``pl.Trainer(**defaults, **overrides)`` for every experience.

    Quiet CPU defaults (no Lightning checkpointing, no logger, no progress bar, no start-up banners) that
    ``defaults`` may override; handy for scripts, notebooks and tests::

        result = fit_stream(Naive(), SplitDigits(), trainer_factory(max_epochs=3))
    """
    base: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                            "enable_progress_bar": False, "enable_model_summary": False, "max_epochs": 1}
    base.update(defaults)
    quiet_lightning()

    def make(index: int, **overrides: Any) -> pl.Trainer:
        return pl.Trainer(**{**base, **overrides})

    return make
