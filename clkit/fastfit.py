"""The fast training path: several optimizer steps per Lightning step, below Lightning's per-step floor.

Lightning's automatic optimization costs about 0.4 ms of hook machinery per training step (batch fetching and
progress bookkeeping, a dozen hook dispatches, the logger connector), as much as a small network's whole step.
:class:`FastFit` hands Lightning *chunks* of :attr:`FastFit.CHUNK` consecutive batches of the unchanged train
loader and, in one Lightning training step under manual optimization, runs each batch exactly as automatic
optimization would:

    on_train_batch_start(batch, i)                       # the module's hook, real batch index
    optimizer_step(epoch, i, optimizer, closure):        # the module's hook (GPM projects its update there)
        closure: training_step(batch, i) under the precision's step context -> on_before_zero_grad
                 -> optimizer_zero_grad -> manual_backward(loss)
        optimizer.step(closure) -> on_before_optimizer_step (callbacks, module: transform_gradients) -> step
    step-interval LR schedulers
    on_train_batch_end({"loss": loss}, batch, i)         # the module's hook (non-finite loss check, SI, HAT)

Epoch-interval LR schedulers step after the epoch's last batch (ReduceLROnPlateau after the module's
``on_train_epoch_end``); everything at epoch boundaries (validation, callbacks, EarlyStopping, the logged epoch mean
of the training loss) is Lightning's own. The same batches in the same order, the same hooks in the same order and
the same global random state give results bit-identical to the slow path (``tests/clkit/test_fastfit.py``).

The loop uses it when :meth:`FastFit.refusal` finds nothing against it: a strategy that needs Lightning's own
per-step machinery declares ``FAST_TRAINING = False``; a strategy with its own manual optimization, several devices
(DDP), gradient accumulation or clipping, ``max_steps``, partial epochs (``limit_train_batches``, mid-epoch
validation, ``fast_dev_run``) and callbacks with per-batch hooks (other than progress bars, which then count chunks)
keep the slow path.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar
from torch import Tensor

from clkit.errors import ConfigError

if TYPE_CHECKING:
    from clkit.module import ContinualModule

__all__ = ["ChunkedBatches", "FastFit"]

_PER_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_zero_grad")
_SHADOWED = ("on_fit_start", "training_step", "on_train_batch_start", "on_train_batch_end", "on_train_epoch_end")


class ChunkedBatches:
    """The batches of ``loader`` in lists of up to ``size`` consecutive ones; each pass iterates ``loader`` once, so
    its shuffling (and the global random draws of a DataLoader's iterator) are those of the slow path."""

    def __init__(self, loader: Iterable[Any], size: int) -> None:
        self.loader, self.size = loader, int(size)

    def __len__(self) -> int:
        return -(-len(self.loader) // self.size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[Any]]:
        batches = iter(self.loader)
        while chunk := list(itertools.islice(batches, self.size)):
            yield chunk


class FastFit:
    """Installs the fast path on ``module`` for one ``trainer.fit`` (see the module docstring).

    Args:
        module: The strategy.
        trainer: The experience's Trainer (single device).
        n_batches: Batches per epoch of the train loader.
    """

    CHUNK = 32
    """Batches per Lightning step: Lightning's per-step cost is divided by it; a chunk is fetched at once."""

    def __init__(self, module: ContinualModule, trainer: pl.Trainer, n_batches: int) -> None:
        self.module, self.trainer, self.n_batches = module, trainer, int(n_batches)
        self.n_chunks = -(-self.n_batches // self.CHUNK)
        callbacks: list[Callback] = getattr(trainer, "callbacks", [])
        self._callbacks_zero_grad = [cb for cb in callbacks if _overrides(cb, "on_before_zero_grad")]
        self._stop_epoch = False
        self._outer_dtype = torch.get_default_dtype()
        from pytorch_lightning.plugins.precision import Precision
        from pytorch_lightning.strategies import SingleDeviceStrategy

        self._contexts = type(trainer.precision_plugin) is not Precision  # 32-true: no step context to enter/leave
        self._direct = not self._contexts and type(trainer.strategy) is SingleDeviceStrategy
        self._schedulers = True  # until the first chunk shows there are none

    # -- whether ------------------------------------------------------------------------------------------------
    @staticmethod
    def refusal(module: ContinualModule, trainer: pl.Trainer, loader: Any) -> Optional[str]:
        """Why this fit must take the slow path, or ``None`` when the fast one keeps every semantic."""
        from pytorch_lightning.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
        from pytorch_lightning.strategies import SingleDeviceStrategy

        if not getattr(type(module), "FAST_TRAINING", False):
            return f"{type(module).__name__} declares FAST_TRAINING = False"
        if not module.automatic_optimization:
            return "the strategy optimizes manually"
        if not isinstance(trainer.strategy, SingleDeviceStrategy) or trainer.world_size != 1:
            return "several devices (DDP syncs gradients once per Lightning step)"
        if type(trainer.precision_plugin) not in (Precision, MixedPrecision, DoublePrecision, HalfPrecision):
            return f"precision plugin {type(trainer.precision_plugin).__name__}"
        if isinstance(trainer.precision_plugin, MixedPrecision) and trainer.precision_plugin.scaler is not None:
            return "a gradient scaler (16-mixed)"
        if trainer.accumulate_grad_batches != 1:
            return "gradient accumulation"
        if trainer.gradient_clip_val:
            return "gradient clipping by the Trainer"
        if trainer.max_steps != -1:
            return "max_steps"
        if getattr(trainer, "fast_dev_run", False) or trainer.limit_train_batches != 1.0 or trainer.val_check_interval != 1.0:
            return "partial epochs (fast_dev_run, limit_train_batches or val_check_interval)"
        for cb in getattr(trainer, "callbacks", []):
            if isinstance(cb, ProgressBar):
                continue  # cosmetic: the bar then advances once per chunk
            if isinstance(cb, ModelCheckpoint) and not cb._every_n_train_steps and cb._train_time_interval is None:
                continue
            if any(_overrides(cb, hook) for hook in _PER_BATCH_HOOKS[:2]):
                return f"callback {type(cb).__name__} has per-batch hooks"
        try:
            len(loader)
        except TypeError:
            return "a train loader without a length"
        return None

    # -- installation ---------------------------------------------------------------------------------------------
    @contextmanager
    def installed(self) -> Iterator[None]:
        """Manual optimization and the chunk-level hooks on the module, for the duration of one fit."""
        module = self.module
        was = module.automatic_optimization
        module._pending_losses = []
        for name in _SHADOWED:
            object.__setattr__(module, name, getattr(self, name))
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
                yield
        finally:
            for name in _SHADOWED:
                module.__dict__.pop(name, None)
            module.automatic_optimization = was
            module._pending_losses = None

    # -- the hooks Lightning calls once per chunk -------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Manual optimization from here on: the Trainer validated its settings and read the LR schedulers'
        ``interval``/``frequency``/``monitor`` as automatic optimization does (manual optimization ignores them)."""
        type(self.module).on_fit_start(self.module)
        self.module.automatic_optimization = False

    def on_train_batch_start(self, chunk: Any, chunk_idx: int) -> Optional[int]:
        if chunk_idx == 0:
            self._stop_epoch = False
        return -1 if self._stop_epoch else None

    def on_train_batch_end(self, outputs: Any, chunk: Any, chunk_idx: int) -> None:
        pass  # the module's own hook ran after each of the chunk's batches

    def on_train_epoch_end(self) -> None:
        type(self.module).on_train_epoch_end(self.module)
        self._step_schedulers("epoch", plateau=True, index=self.trainer.current_epoch)

    def training_step(self, chunk: list[Any], chunk_idx: int) -> None:
        module, trainer = self.module, self.trainer
        cls = type(module)
        optimizer = module.optimizers()
        if isinstance(optimizer, list):
            raise ConfigError(f"{cls.__name__} configures {len(optimizer)} optimizers; the fast training path "
                              "takes one (declare FAST_TRAINING = False)")
        epoch, first = trainer.current_epoch, chunk_idx * self.CHUNK
        self._schedulers = bool(trainer.lr_scheduler_configs)
        direct = _DirectSteps(module, trainer, optimizer) if self._direct else None
        for k, batch in enumerate(chunk):
            i = first + k
            if cls.on_train_batch_start(module, batch, i) == -1:
                self._stop_epoch = True
                break
            result: dict[str, Tensor] = {}

            def closure(batch: Any = batch, i: int = i, result: dict[str, Tensor] = result) -> Tensor:
                with self._inside():
                    out = cls.training_step(module, batch, i)
                loss = out["loss"] if isinstance(out, dict) else out
                result["loss"] = loss.detach()
                for cb in self._callbacks_zero_grad:
                    cb.on_before_zero_grad(trainer, module, optimizer)  # type: ignore[arg-type]
                cls.on_before_zero_grad(module, optimizer)  # type: ignore[arg-type]
                cls.optimizer_zero_grad(module, epoch, i, optimizer)  # type: ignore[arg-type]
                if direct is None:
                    module.manual_backward(loss)
                else:
                    direct.backward(loss)
                return loss

            with self._outside():
                cls.optimizer_step(module, epoch, i, direct or optimizer, closure)  # type: ignore[arg-type]
                if self._schedulers:
                    self._step_schedulers("step", plateau=False, index=i)
                    if i == self.n_batches - 1:
                        self._step_schedulers("epoch", plateau=False, index=epoch)
                cls.on_train_batch_end(module, result, batch, i)
        self._check_losses()

    def _check_losses(self) -> None:
        """The chunk's training losses, checked for non-finite values with one device sync (the error names the
        first bad batch, as the slow path's per-batch check does)."""
        pending = self.module._pending_losses
        if not pending:
            return
        self.module._pending_losses = []
        finite = torch.stack([torch.isfinite(loss).all() for loss, _ in pending])
        if not bool(finite.all()):
            loss, i = pending[int((~finite).nonzero()[0])]
            self.module._raise_non_finite(loss, i)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _inside(self) -> AbstractContextManager[Any]:
        return self.trainer.precision_plugin.train_step_context() if self._contexts else nullcontext()

    def _outside(self) -> AbstractContextManager[Any]:
        """Leave the precision's step context that Lightning entered around the chunk: backward, gradient hooks and
        the optimizer step run outside it, as in automatic optimization (32-true has none)."""
        return self._leave_context() if self._contexts else nullcontext()

    @contextmanager
    def _leave_context(self) -> Iterator[None]:
        from pytorch_lightning.plugins.precision import MixedPrecision

        dtype = torch.get_default_dtype()
        torch.set_default_dtype(self._outer_dtype)
        device = self.trainer.strategy.root_device.type
        try:
            with torch.autocast(device, enabled=False) if isinstance(self.trainer.precision_plugin, MixedPrecision) \
                    else nullcontext():
                yield
        finally:
            torch.set_default_dtype(dtype)

    def _step_schedulers(self, interval: str, plateau: bool, index: int) -> None:
        """Lightning's own rule (``_TrainingEpochLoop._update_learning_rates``), which manual optimization skips."""
        module = self.module
        for config in self.trainer.lr_scheduler_configs:
            if config.reduce_on_plateau != plateau or config.interval != interval or (index + 1) % config.frequency:
                continue
            monitor = None
            if config.reduce_on_plateau:
                if interval == "step":
                    raise ConfigError("a ReduceLROnPlateau scheduler stepped every batch needs the slow training "
                                      "path (declare FAST_TRAINING = False)")
                monitor = self.trainer.callback_metrics.get(str(config.monitor))
                if monitor is None:
                    if config.strict:
                        raise ConfigError(f"ReduceLROnPlateau monitors {config.monitor}, which is not logged; "
                                          f"logged: {', '.join(sorted(self.trainer.callback_metrics)) or 'none'}")
                    continue
            type(module).lr_scheduler_step(module, config.scheduler, monitor)


class _DirectSteps:
    """Lightning's backward and optimizer-step chains for exactly ``SingleDeviceStrategy`` with the plain 32-bit
    ``Precision`` plugin, in the same order with the same hooks, called directly (they cost ~0.1 ms per step through
    strategy, precision plugin, closure wrappers and the profiler contexts of each dispatch):

    - backward: ``on_before_backward`` (callbacks, module), the module's ``backward``, ``on_after_backward``;
    - ``step(closure)``: the manual loop's step counting, ``optimizer.step(closure + on_before_optimizer_step for
      callbacks and module)``; other attributes are the :class:`LightningOptimizer`'s.
    """

    def __init__(self, module: ContinualModule, trainer: pl.Trainer, optimizer: Any) -> None:
        self._module, self._trainer, self._lightning = module, trainer, optimizer
        callbacks: list[Callback] = getattr(trainer, "callbacks", [])
        self._hooks = {name: [cb for cb in callbacks if _overrides(cb, name)]
                       for name in ("on_before_backward", "on_after_backward", "on_before_optimizer_step")}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lightning, name)

    def _module_hook(self, name: str, *args: Any) -> None:
        module = self._module
        previous = module._current_fx_name
        module._current_fx_name = name
        try:
            getattr(type(module), name)(module, *args)
        finally:
            module._current_fx_name = previous

    def backward(self, loss: Tensor) -> None:
        module, trainer = self._module, self._trainer
        for cb in self._hooks["on_before_backward"]:
            cb.on_before_backward(trainer, module, loss)
        self._module_hook("on_before_backward", loss)
        self._module_hook("backward", loss)
        for cb in self._hooks["on_after_backward"]:
            cb.on_after_backward(trainer, module)
        self._module_hook("on_after_backward")

    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        lightning = self._lightning
        raw = lightning._optimizer
        module, trainer = self._module, self._trainer

        def wrapped() -> Any:
            out = closure() if closure is not None else None
            for cb in self._hooks["on_before_optimizer_step"]:
                cb.on_before_optimizer_step(trainer, module, raw)
            self._module_hook("on_before_optimizer_step", raw)
            return out

        lightning._on_before_step()
        out = raw.step(closure=wrapped, **kwargs)
        lightning._on_after_step()
        return out


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook, None) is not getattr(Callback, hook)
