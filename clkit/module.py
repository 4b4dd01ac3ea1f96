"""The base class of every strategy (DESIGN.md §2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from clkit.data import SETTINGS, ContinualDataModule, Experience, TensorData
from clkit.errors import ConfigError, NonFiniteLossError
from clkit.metrics import AccuracyMatrix
from clkit.nets import Backbone, default_backbone

__all__ = ["ContinualModule"]


class ContinualModule(pl.LightningModule):
    """A continual-learning strategy: a Lightning module with three CL hooks.

    The stream loop (:func:`clkit.loop.fit_stream`) drives it; per experience ``i``::

        strategy.bind(stream)                       # once: backbone, heads, accuracy matrix
        test all experiences                        # untrained model -> random-init accuracy
        for i, exp in enumerate(stream.experiences):
            trainer = make_trainer(i)               # fresh Trainer, fresh optimizer
            trainer.fit(...):
                setup("fit")        -> on_experience_start(exp)   # before configure_optimizers
                configure_optimizers()
                per step: training_step -> backward -> on_before_optimizer_step -> transform_gradients -> step
                on_fit_end()        -> on_experience_end(exp)     # both hooks: model on the training device
            trainer.test(every test experience)     # fills row i of the accuracy matrix
            save a checkpoint of the whole CL state

    Heads: one per task in task-IL (labels local to the task, the batch's task ids ``t`` pick the head), one shared
    head otherwise. ``backbone`` defaults to one sized from the scenario (:func:`clkit.nets.default_backbone`).

    Args:
        backbone: Feature extractor; built from the scenario's input shape by :meth:`bind`.
        lr: Learning rate.
        optimizer: ``"sgd"`` or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset(SETTINGS)
    HEAD_BIAS: ClassVar[bool] = True
    LABEL: ClassVar[Optional[str]] = None  # name in results and tables; default: the class name

    def __init__(self, *, backbone: Optional[Backbone] = None, lr: float = 0.01,
                 optimizer: Literal["sgd", "adam"] = "sgd", momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        if lr <= 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        if optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer={optimizer!r} is not one of 'sgd', 'adam'")
        # Kept apart from ``hparams``: a subclass's save_hyperparameters records its own signature only.
        self.optim_config: dict[str, Any] = {"lr": lr, "optimizer": optimizer, "momentum": momentum,
                                             "weight_decay": weight_decay}
        self.backbone = backbone
        self.heads = nn.ModuleList()
        self.setting: str = ""
        self.classes_per_task: list[int] = []
        self.task_ids_at_test = True
        self.current_experience: Optional[Experience] = None
        self.eval_row = 0  # row of the accuracy matrix that test_step fills; -1 = untrained model
        self.test_passes = 1  # test passes per matrix row, each over reshuffled batches (counts add up)
        self._epoch_means: dict[str, tuple[Tensor, int, bool]] = {}
        self.accuracy: Optional[AccuracyMatrix] = None
        self.init_accuracy: Optional[AccuracyMatrix] = None

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

    # -- binding to a scenario ------------------------------------------------------------------------------------
    @property
    def multi_head(self) -> bool:
        return self.setting == "task-il"

    @property
    def num_tasks(self) -> int:
        return len(self.classes_per_task)

    def bind(self, stream: ContinualDataModule) -> None:
        """Size the network for ``stream``; raises :class:`ConfigError` on an unsupported setting."""
        setting = stream.setting
        if setting not in self.SUPPORTED_SCENARIOS:
            raise ConfigError(f"{type(self).__name__} supports settings {sorted(self.SUPPORTED_SCENARIOS)}, but "
                              f"scenario {stream.name} is {setting!r}")
        per_task = [len(e.classes) for e in stream.experiences]
        if self.setting:
            if (self.setting, self.classes_per_task) != (setting, per_task):
                raise ConfigError(f"{type(self).__name__} is already bound to another stream")
            return
        self.setting, self.classes_per_task = setting, per_task
        self.task_ids_at_test = stream.task_ids_at_test
        if self.backbone is None:
            self.backbone = self.build_backbone(stream.input_shape)
        if isinstance(self.backbone, Backbone):
            self.backbone.build(stream.input_shape)
        self.heads = self.build_heads(self._feature_width(stream.input_shape), stream.num_classes)
        self.accuracy = AccuracyMatrix(len(per_task))
        self.init_accuracy = AccuracyMatrix(len(per_task), num_rows=1)

    def build_backbone(self, input_shape: Sequence[int]) -> nn.Module:
        """The backbone used when the config gives none; override to change the default."""
        return default_backbone(input_shape)

    def build_heads(self, in_features: int, num_classes: int) -> nn.ModuleList:
        """One linear head per task (task-IL) or one shared head; override for special heads."""
        widths = self.classes_per_task if self.multi_head else [num_classes]
        return nn.ModuleList(nn.Linear(in_features, w, bias=self.HEAD_BIAS) for w in widths)

    def _feature_width(self, input_shape: Sequence[int]) -> int:
        width = getattr(self.backbone, "out_features", None)
        if isinstance(width, int):
            return width
        assert self.backbone is not None
        with torch.no_grad():  # a backbone without ``out_features``: measure it
            return int(self.backbone(torch.zeros(2, *input_shape)).shape[-1])

    # -- forward --------------------------------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        assert self.backbone is not None, "call bind(stream) first"
        return self.backbone(x)

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
        """Predicted labels (N,) used for the accuracy matrix; override for special inference."""
        return self(x, t).argmax(dim=-1)

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
        total, count, _ = self._epoch_means.get(name, (value.new_zeros(()), 0, prog_bar))
        self._epoch_means[name] = (total + value.detach() * n, count + n, prog_bar)

    def on_train_epoch_end(self) -> None:
        for name, (total, count, prog_bar) in self._epoch_means.items():
            self.log(name, total / max(count, 1), prog_bar=prog_bar, sync_dist=True)
        self._epoch_means = {}

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, t = batch
        logits = self(x, t)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, t = batch  # under DDP every rank sees all test data (EvalBatches): counts are world_size × exact
        preds = self.predict(x, t)
        if self.eval_row < 0:
            assert self.init_accuracy is not None
            self.init_accuracy.update(preds, y, train_exp=0, eval_exp=dataloader_idx)
        else:
            assert self.accuracy is not None
            self.accuracy.update(preds, y, train_exp=self.eval_row, eval_exp=dataloader_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor) and not bool(torch.isfinite(loss).all()):
            exp = self.current_experience.index if self.current_experience else "?"
            raise NonFiniteLossError(f"training loss is {loss.item()} at experience {exp}, epoch "
                                     f"{self.current_epoch}, batch {batch_idx}; try a smaller lr (now "
                                     f"{self.optim_config['lr']})")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.optimizer_parameters() if p.requires_grad]
        cfg = self.optim_config
        if cfg["optimizer"] == "adam":
            return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])

    def optimizer_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer of the current experience updates (default: all)."""
        return list(self.parameters())

    # -- CL hooks -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.current_experience is not None:
            self._to_training_device()  # Lightning moves the model only after setup: CL state built here must not
            self.on_experience_start(self.current_experience)  # land on the CPU when training runs on a GPU

    def on_fit_end(self) -> None:
        if self.current_experience is not None:
            self._to_training_device()  # the Trainer's teardown has just moved the model to the CPU
            self.on_experience_end(self.current_experience)

    def _to_training_device(self) -> None:
        device = self.trainer.strategy.root_device
        if self.device != device:
            self.to(device)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        self.transform_gradients()  # unscaled, accumulated, not yet clipped

    def on_experience_start(self, experience: Experience) -> None:
        """Called before the optimizer of ``experience`` is built."""

    def on_experience_end(self, experience: Experience) -> None:
        """Called after training on ``experience``, before it is tested; may run forward passes over its data."""

    def transform_gradients(self) -> None:
        """Edit ``p.grad`` in place before each optimizer step (gradient projection, masking, ...)."""

    # -- data and trainer requests --------------------------------------------------------------------------------
    def train_data(self, seen: Sequence[Experience]) -> TensorData:
        """Training data for the last experience of ``seen`` (Joint returns the union)."""
        return seen[-1].train

    def val_data(self, seen: Sequence[Experience]) -> Optional[TensorData]:
        return seen[-1].val

    def trainer_overrides(self, experience: Experience) -> dict[str, Any]:
        """Trainer arguments this strategy needs for ``experience`` (e.g. a different ``max_epochs``)."""
        return {}

    # -- memory and results ---------------------------------------------------------------------------------------
    def strategy_state_bytes(self) -> int:
        """Bytes of CL memory (bases, masks, posteriors, ...) beyond the network itself."""
        return 0

    def extra_results(self) -> dict[str, Any]:
        """Extra JSON-serialisable keys for ``results.json`` (e.g. IBCL's preference results)."""
        return {}


def _pad(logits: Tensor, width: int) -> Tensor:
    if logits.shape[-1] == width:
        return logits
    pad = logits.new_full((*logits.shape[:-1], width - logits.shape[-1]), float("-inf"))
    return torch.cat([logits, pad], dim=-1)
