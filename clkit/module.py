"""The base class of every strategy: a LightningModule with three CL hooks and one CL-memory protocol."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from clkit.data import SETTINGS, Experience, StreamSpec, TensorData
from clkit.errors import ConfigError, NonFiniteLossError, check_finite
from clkit.nets import Backbone, backbone_config, default_backbone
from clkit.optim import describe, optimizer_factory, probe, scheduler_factory, spec
from clkit.rng import derive_seed, forked_rng, generator

__all__ = ["ContinualModule", "LRSchedulerCallable", "OptimizerCallable", "memory_bytes"]

OptimizerCallable = Callable[[Iterable[Any]], Optimizer]
"""``params -> Optimizer``, as LightningCLI's type of the same name: the CLI builds it from ``--optimizer ...``."""
LRSchedulerCallable = Callable[[Optimizer], Union[LRScheduler, ReduceLROnPlateau]]
"""``optimizer -> scheduler``, as LightningCLI's type of the same name."""

SGD = spec("torch.optim.SGD", lr=0.01)
"""The default optimizer: plain SGD at lr 0.01 (a fresh one per experience)."""


class ContinualModule(pl.LightningModule):
    """A continual-learning strategy: a Lightning module that the stream loop drives experience by experience.

    The loop (:func:`clkit.loop.fit_stream`) calls, in this order::

        strategy.bind(stream.spec)                  # once: backbone, heads (StreamSpec, never the data)
        evaluate every test experience               # untrained model -> random-init accuracy (FWT)
        for i, exp in enumerate(stream.experiences):
            trainer = make_trainer(i)                # fresh Trainer, so a fresh optimizer
            move the module to trainer's device      # CL memory moves with it
            on_experience_start(exp)                 # may add or freeze parameters
            trainer.fit(strategy, train_data(exp), val_data(exp)):
                configure_optimizers()               # optimizer(optimizer_parameters()), lr_scheduler
                per step: training_step -> backward -> on_before_optimizer_step -> transform_gradients -> step
                (the same per batch on the fast path, clkit.fastfit, where Lightning sees chunks of batches)
            on_experience_end(exp)                   # model on the training device; may run forward passes
            evaluate every test and validation split # predict() -> row i of both accuracy matrices
            checkpoint: state_dict + memory_state()

    Every experience runs under torch's global generator seeded from (``seed``, i) and restored afterwards, so a
    run depends only on its seeds. Override points, most strategies need two or three:

    - the CL hooks :meth:`on_experience_start`, :meth:`on_experience_end`, :meth:`transform_gradients`;
    - Lightning's :meth:`training_step` (and, rarely, ``configure_optimizers``);
    - data: :meth:`train_data`, :meth:`val_data`; optimisation: :meth:`optimizer_parameters`,
      :meth:`trainer_overrides`; network: :meth:`build_backbone`, :meth:`build_heads`;
    - evaluation: :meth:`predict` (how the matrices are filled), :meth:`predict_within` (class-IL task-aware),
      :meth:`on_evaluation_start`/:meth:`on_evaluation_end`; results: :meth:`extra_results`.

    CL memory (bases, masks, posteriors, buffers) is declared with :meth:`register_memory`; the loop checkpoints it,
    moves it with the module and counts it in ``strategy_state_bytes``. Strategies whose memory is not a set of
    attributes override :meth:`memory_state`/:meth:`load_memory_state`.

    Heads: one per task in task-IL (labels local to the task, the batch's task ids ``t`` pick the head), one shared
    head otherwise. ``backbone`` defaults to one sized from the scenario (:func:`clkit.nets.default_backbone`).

    Args:
        backbone: Feature extractor; a :class:`clkit.nets.Backbone` is built for the stream's input shape by
            :meth:`bind`. Default: :meth:`build_backbone`.
        optimizer: ``params -> Optimizer`` (LightningCLI's ``--optimizer``), built afresh for every experience;
            a class path / ``init_args`` dict is accepted too. Default: SGD at lr 0.01.
        lr_scheduler: ``optimizer -> scheduler`` (``--lr_scheduler``), stepped every epoch of an experience;
            ``ReduceLROnPlateau`` monitors ``val/loss``.
        seed: Seed of the initial weights, of the training randomness of every experience and of every
            :meth:`generator`; default: torch's initial seed (what ``seed_everything`` set).
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset(SETTINGS)
    HEAD_BIAS: ClassVar[bool] = True
    LABEL: ClassVar[Optional[str]] = None  # name in results and tables; default: the class name
    FAST_TRAINING: ClassVar[bool] = True
    """Whether the loop may train through :class:`clkit.fastfit.FastFit` (Lightning sees chunks of batches; every
    per-batch hook of the module still runs per batch). ``False`` for a strategy that needs Lightning's own
    per-step machinery, e.g. one that reads ``trainer.num_training_batches``."""
    backbone: Optional[nn.Module]
    experiences_done: int  # CL memory: experiences learned (a strategy trains on one stream only)

    def __init__(self, *, backbone: Optional[nn.Module] = None, optimizer: OptimizerCallable = SGD,  # type: ignore[assignment]
                 lr_scheduler: Optional[LRSchedulerCallable] = None, seed: Optional[int] = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        check_finite(type(self).__name__, self.hparams)
        self._memory_names: list[str] = []
        self.register_module("backbone", backbone)  # a slot before the heads even when built later: a fixed order
        self.heads = nn.ModuleList()
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.optimizer_factory = optimizer_factory(optimizer)
        self.scheduler_factory = scheduler_factory(lr_scheduler)
        probe(self.optimizer_factory, self.scheduler_factory)  # bad settings (momentum -1, ...): one line now
        self.seed: int = int(seed) if seed is not None else -1
        self._given_seed = seed
        self.spec: Optional[StreamSpec] = None
        self._experience: Optional[Experience] = None
        self._epoch_means: dict[str, tuple[Tensor, int, bool]] = {}
        self._pending_losses: Optional[list[tuple[Tensor, int]]] = None  # set by clkit.fastfit.FastFit
        self.register_memory("experiences_done", 0)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` around every hook call (~45 times per training step), and
        # nn.Module.__setattr__ costs ~5 us each: a tenth of a small network's step. It is a plain string attribute.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def label(self) -> str:
        return self.LABEL or type(self).__name__

    # -- binding to a stream --------------------------------------------------------------------------------------
    @property
    def setting(self) -> str:
        return self.spec.setting if self.spec is not None else ""

    @property
    def multi_head(self) -> bool:
        return self.setting == "task-il"

    @property
    def unused_parameters(self) -> bool:
        """Whether a training step may leave trainable parameters without a gradient (the other tasks' heads in
        task-IL). Under DDP the loop then asks for ``find_unused_parameters``; override for other cases (masks,
        parameters frozen part-way)."""
        return self.multi_head

    @property
    def classes_per_task(self) -> list[int]:
        return [] if self.spec is None else list(self.spec.classes_per_experience)

    @property
    def num_tasks(self) -> int:
        return 0 if self.spec is None else self.spec.n_experiences

    @property
    def task_ids_at_test(self) -> bool:
        return self.spec is not None and self.spec.task_ids_at_test

    @property
    def task_aware(self) -> bool:
        """Whether :meth:`predict` uses the test batch's task ids (the test matrix is then task-aware)."""
        return self.multi_head

    @property
    def current_experience(self) -> Optional[Experience]:
        """The experience being trained (set by the loop from ``on_experience_start`` to ``on_experience_end``)."""
        return self._experience

    def bind(self, spec: StreamSpec) -> None:
        """Size the network for a stream described by ``spec``; a strategy never receives the stream itself.

        Subclasses that build more per-stream structure override this and call ``super().bind(spec)`` first.

        Raises:
            ConfigError: On an unsupported setting, or a second, different stream.
        """
        if not isinstance(spec, StreamSpec):
            raise ConfigError(f"bind() takes a StreamSpec (e.g. stream.spec), got {type(spec).__name__}")
        if spec.setting not in self.SUPPORTED_SCENARIOS:
            raise ConfigError(f"{type(self).__name__} supports settings {sorted(self.SUPPORTED_SCENARIOS)}, but "
                              f"scenario {spec.name} is {spec.setting!r}")
        if self.spec is not None:
            if self.spec.to_dict() | {"name": ""} != spec.to_dict() | {"name": ""}:
                raise ConfigError(f"{type(self).__name__} is already bound to another stream ({self.spec.name})")
            return
        self.resolve_seed()
        self.spec = spec
        with forked_rng(derive_seed(self.seed, "init")):  # initial weights depend on the seed alone
            if self.backbone is None:
                self.backbone = self.build_backbone(spec.input_shape)
            if isinstance(self.backbone, Backbone):
                self.backbone.build(spec.input_shape)
            self.heads = self.build_heads(self._feature_width(spec.input_shape), spec.num_classes)

    def build_backbone(self, input_shape: Sequence[int]) -> nn.Module:
        """The backbone used when the config gives none; override to change the default."""
        return default_backbone(input_shape)

    def build_heads(self, in_features: int, num_classes: int) -> nn.ModuleList:
        """One linear head per task (task-IL) or one shared head; override for special heads."""
        widths = self.classes_per_task if self.multi_head else [num_classes]
        return nn.ModuleList(nn.Linear(in_features, w, bias=self.HEAD_BIAS) for w in widths)

    def _feature_width(self, input_shape: Sequence[int]) -> int:
        width = getattr(self.backbone, "out_features", None)
        if isinstance(width, int) and width > 0:
            return width
        assert self.backbone is not None
        with torch.no_grad():  # a backbone without ``out_features``: measure it
            was_training = self.backbone.training
            self.backbone.eval()
            width = int(self.backbone(torch.zeros(2, *input_shape)).shape[-1])
            self.backbone.train(was_training)
            return width

    # -- randomness -----------------------------------------------------------------------------------------------
    def resolve_seed(self) -> int:
        """Fix :attr:`seed`: the constructor's, or else torch's initial seed now (what ``seed_everything`` set).

        :meth:`bind` calls it first; a subclass that needs the seed before ``super().bind`` may call it earlier.
        """
        if self.seed < 0:
            self.seed = int(self._given_seed) if self._given_seed is not None else torch.initial_seed() % 2**63
        return self.seed

    def generator(self, purpose: str, experience: Optional[int] = None) -> torch.Generator:
        """A fresh CPU generator for one ``purpose`` (e.g. ``"representation"``) of one experience.

        Seeded from the strategy's seed, the purpose and the experience index only, so draws are reproducible,
        independent across purposes and never touch the global random state.
        """
        return generator(self.resolve_seed(), purpose, experience)

    # -- forward --------------------------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        assert self.backbone is not None, "call bind(spec) first"
        return self.backbone(self.cast_input(x))

    def cast_input(self, x: Tensor) -> Tensor:
        """``x`` in the parameters' dtype when the Trainer converted the module (``precision="64-true"`` or
        ``"bf16-true"``) and the batch did not come through Lightning (a CL hook's own pass over an experience)."""
        return x.to(self.dtype) if x.is_floating_point() and x.dtype != self.dtype else x

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits for inputs ``x`` (N, ...) of tasks ``t`` (N,); task-IL pads narrower heads with -inf."""
        return self.head_logits(self.features(x), t)

    def head_logits(self, feats: Tensor, t: Tensor) -> Tensor:
        if not self.multi_head:
            return self.heads[0](feats)
        width = max(self.classes_per_task)
        task = int(t[0])
        if bool((t == task).all()):  # the usual case: a batch from one experience
            return _pad(self.heads[task](feats), width)
        out = feats.new_full((feats.shape[0], width), float("-inf"))
        for task in t.unique().tolist():
            rows = t == task
            out[rows] = _pad(self.heads[task](feats[rows]), width)
        return out

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        """Predicted labels (N,) that fill the accuracy matrices (eval mode, no grad); override for special
        inference. ``t`` holds the batch's task ids; a strategy that reads them is :attr:`task_aware`."""
        return self(x, t).argmax(dim=-1)

    def predict_within(self, x: Tensor, t: Tensor, classes: Tensor) -> Tensor:
        """Predicted labels (N,) restricted to ``classes`` (the experience's labels): the task-aware accuracy of a
        class-IL stream (FACIL's and Mammoth's "TAw"), recorded beside the task-agnostic matrix. Override together
        with :meth:`predict` (e.g. for a nearest-mean classifier)."""
        return _restricted_argmax(self(x, t), classes)

    # -- Lightning steps ------------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        loss = F.cross_entropy(self(x, t), y)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def log_epoch_mean(self, name: str, value: Tensor, n: int, prog_bar: bool = True) -> None:
        """Accumulate a per-batch mean and log its epoch mean once, at the end of the training epoch.

        Equivalent to ``self.log(name, value, on_step=False, on_epoch=True)`` but without Lightning's per-call
        bookkeeping, which costs about as much as a small network's training step.
        """
        means = self._epoch_means
        if name in means:
            total, count, _ = means[name]
            means[name] = (total.add_(value.detach(), alpha=n), count + n, prog_bar)
        else:
            means[name] = (value.detach() * n, n, prog_bar)

    def on_train_epoch_end(self) -> None:
        for name, (total, count, prog_bar) in self._epoch_means.items():
            self.log(name, total / max(count, 1), prog_bar=prog_bar, sync_dist=True)
        self._epoch_means = {}

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, t = batch
        logits = self(x, t)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True, sync_dist=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return
        if self._pending_losses is not None:  # the fast path checks a chunk's losses at once (one device sync)
            self._pending_losses.append((loss, batch_idx))
        elif not bool(torch.isfinite(loss).all()):
            self._raise_non_finite(loss, batch_idx)

    def _raise_non_finite(self, loss: Tensor, batch_idx: int) -> None:
        exp = self.current_experience.index if self.current_experience else "?"
        lrs = sorted({float(g["lr"]) for opt in self.trainer.optimizers for g in opt.param_groups})
        raise NonFiniteLossError(f"training loss is {loss.item()} at experience {exp}, epoch "
                                 f"{self.current_epoch}, batch {batch_idx} with lr {', '.join(f'{lr:g}' for lr in lrs)}",
                                 lr=max(lrs) if lrs else None)

    def configure_optimizers(self) -> Any:
        """A fresh ``optimizer(optimizer_parameters())`` (and ``lr_scheduler``) for the experience."""
        optimizer = self.build_optimizer([p for p in self.optimizer_parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def build_optimizer(self, params: Iterable[Any]) -> Optimizer:
        """``optimizer(params)``: the injected optimizer over ``params`` (for strategies with several)."""
        return self.optimizer_factory(params)

    def optimizer_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer of the current experience updates (default: all)."""
        return list(self.parameters())

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        self.transform_gradients()  # unscaled, accumulated, not yet clipped

    # -- CL hooks -------------------------------------------------------------------------------------------------
    def on_experience_start(self, experience: Experience) -> None:
        """Called by the loop before the experience's Trainer fits (module on the training device)."""

    def on_experience_end(self, experience: Experience) -> None:
        """Called after training on ``experience``, before it is evaluated; may run forward passes over its data."""

    def transform_gradients(self) -> None:
        """Edit ``p.grad`` in place before each optimizer step (gradient projection, masking, ...)."""

    def on_evaluation_start(self, split: Literal["test", "val"], row: int) -> None:
        """Called before the loop evaluates every experience's ``split`` for matrix row ``row`` (-1: untrained)."""

    def on_evaluation_end(self, split: Literal["test", "val"], row: int, data: Sequence[TensorData]) -> None:
        """Called after the loop filled row ``row`` of the ``split`` matrix, with that split of the experiences seen
        so far (``0..row``; none for the untrained row), for evaluations of a strategy's own (IBCL's preference
        models)."""

    def _enter_experience(self, experience: Experience) -> None:
        """The loop's call: record the experience, then :meth:`on_experience_start`. Not an override point."""
        self._experience = experience
        self.on_experience_start(experience)

    def _exit_experience(self, experience: Experience) -> None:
        """The loop's call: :meth:`on_experience_end`, then count the experience. Not an override point."""
        self.on_experience_end(experience)
        self.experiences_done = int(self.experiences_done) + 1
        self._experience = None

    # -- data and trainer requests --------------------------------------------------------------------------------
    def train_data(self, experience: Experience) -> TensorData:
        """Training data for ``experience`` (a strategy that needs past data keeps it in its own memory)."""
        return experience.train

    def val_data(self, experience: Experience) -> Optional[TensorData]:
        """Validation data seen while fitting ``experience`` (early stopping, best-state selection)."""
        return experience.val

    def trainer_overrides(self, experience: Experience) -> dict[str, Any]:
        """Trainer arguments this strategy needs for ``experience`` (e.g. a different ``max_epochs``)."""
        return {}

    # -- CL memory ------------------------------------------------------------------------------------------------
    def register_memory(self, name: str, value: Any) -> None:
        """Declare attribute ``name`` as CL memory and set it to ``value``.

        Memory is a tensor or a nested list/tuple/dict of tensors and plain values (bases, masks, posteriors,
        buffers). The loop saves it in checkpoints (:meth:`memory_state`), restores it (:meth:`load_memory_state`),
        counts its tensors in ``strategy_state_bytes`` and moves it with the module (``.to(device)``; its dtypes
        are kept).
        """
        if name in self._memory_names:
            raise ValueError(f"memory {name!r} is registered already")
        self._memory_names.append(name)
        setattr(self, name, value)

    def memory_state(self) -> dict[str, Any]:
        """The CL memory: every registered attribute, as it is."""
        return {name: getattr(self, name) for name in self._memory_names}

    def load_memory_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`memory_state` (tensors land on the module's device); override to rebuild caches."""
        missing = [name for name in self._memory_names if name not in state]
        if missing:
            raise ConfigError(f"the checkpoint's CL memory lacks {missing}: it was written by another strategy")
        device = next(iter(self.parameters()), torch.empty(0)).device
        for name in self._memory_names:
            setattr(self, name, _map_tensors(state[name], lambda t: t.to(device)))

    def strategy_state_bytes(self) -> int:
        """Bytes of CL memory beyond the network: every tensor in :meth:`memory_state`, each storage counted once."""
        return memory_bytes(self.memory_state())

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ContinualModule:
        super()._apply(fn, recurse)
        if getattr(self, "_memory_names", None):
            device = fn(torch.zeros(1)).device  # memory follows the module's device, keeping its own dtypes
            for name in self._memory_names:
                setattr(self, name, _map_tensors(getattr(self, name), lambda t: t.to(device)))
        return self

    # -- results and self-describing checkpoints --------------------------------------------------------------------
    def extra_results(self, accuracy_matrix: Tensor) -> dict[str, Any]:
        """Extra JSON-serialisable keys for ``results.json`` (e.g. IBCL's preference results), given the final
        (T, T) test matrix."""
        return {}

    def describe(self) -> dict[str, Any]:
        """How to rebuild this strategy: class path, constructor arguments, optimizer, scheduler and backbone."""
        cls = type(self)
        init_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.hparams.items()
                     if not k.startswith("_")}  # (LightningCLI adds ``_class_path``)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args,
                "optimizer": describe(self.optimizer), "lr_scheduler": describe(self.lr_scheduler),
                "backbone": backbone_config(self.backbone), "seed": self.seed}

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], backbone: Optional[nn.Module] = None) -> Any:
        """Rebuild a trained strategy from a run checkpoint (``run_dir/checkpoints/exp{i}.pt``, or a run directory:
        its latest checkpoint), without its stream.

        The checkpoint names the class, its arguments, the backbone and the stream's :class:`StreamSpec`; pass
        ``backbone`` for a network the checkpoint cannot name.

        Raises:
            ConfigError: If ``path`` holds no checkpoint, or one of a strategy that is not a ``cls``.
        """
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob("checkpoints/exp*.pt"), key=lambda p: int(p.stem[3:]) if p.stem[3:].isdigit()
                           else -1)
            if not found or not found[-1].stem[3:].isdigit():
                raise ConfigError(f"no experience checkpoints in {path / 'checkpoints'}")
            path = found[-1]
        if not path.is_file():
            raise ConfigError(f"no checkpoint at {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if "strategy" not in ckpt or "spec" not in ckpt:
            raise ConfigError(f"{path} is not a clkit experience checkpoint (no strategy or spec)")
        about = ckpt["strategy"]
        module, _, name = about["class_path"].rpartition(".")
        found_cls = getattr(importlib.import_module(module), name)
        if not issubclass(found_cls, cls):
            raise ConfigError(f"{path} holds a {found_cls.__name__} run, not a {cls.__name__} one")
        if backbone is None and about.get("backbone") is not None:
            b = about["backbone"]
            b_module, _, b_name = b["class_path"].rpartition(".")
            backbone = getattr(importlib.import_module(b_module), b_name)(**b["init_args"])
        kwargs = dict(about["init_args"])
        kwargs["seed"] = about["seed"]
        optimizer = about.get("optimizer")
        if isinstance(optimizer, dict):
            kwargs["optimizer"] = optimizer
        strategy: ContinualModule = found_cls(backbone=backbone, **kwargs)
        strategy.bind(StreamSpec.from_dict(ckpt["spec"]))
        strategy.load_memory_state(ckpt["memory"])
        strategy.load_state_dict(ckpt["state_dict"])
        return strategy


def _restricted_argmax(logits: Tensor, classes: Tensor) -> Tensor:
    """Argmax of ``logits`` (N, C) over the columns ``classes`` only."""
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    allowed[classes.to(logits.device)] = True
    return logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)


def _pad(logits: Tensor, width: int) -> Tensor:
    if logits.shape[-1] == width:
        return logits
    pad = logits.new_full((*logits.shape[:-1], width - logits.shape[-1]), float("-inf"))
    return torch.cat([logits, pad], dim=-1)


def _map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, list):
        return [_map_tensors(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def memory_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested memory value, each storage counted once."""
    seen: dict[tuple[int, str], int] = {}

    def visit(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), str(t.device))] = max(seen.get((storage.data_ptr(), str(t.device)), 0),
                                                        t.numel() * t.element_size())
        return t

    _map_tensors(value, visit)
    return sum(seen.values())
