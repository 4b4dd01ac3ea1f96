"""Shared base of :class:`strategies.SupSup` and :class:`strategies.ExSSNeT`: a masked network with per-task masks.

It builds a masked backbone and one masked shared head, routes each batch through the mask and BatchNorm of its task,
freezes the mask as packed bits at the end of the experience, optionally infers the task at test time (spec
``supermasks.md`` §9), and saves every piece of CL memory in checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import Tensor, nn

from clkit.data import ContinualDataModule, Experience
from clkit.errors import ConfigError
from clkit.metrics import max_forgetting
from clkit.module import ContinualModule
from clkit.nets import Backbone, tensor_bytes
from strategies.supermask.layers import BnInfer, KeepScores, MaskedLayer, TaskBatchNorm
from strategies.supermask.model import add_task, freeze_task, layout, mask_state_bytes, restore_layout, superposed
from strategies.supermask.nets import LayerFactory, MaskedBackbone, default_masked_backbone
from strategies.supermask.masks import DensityMode, count_bits, layer_density, overlap_bits
from strategies.supermask.inference import infer_task_binary, infer_task_exhaustive, infer_task_oneshot

__all__ = ["SupermaskModule", "TaskInference"]

TaskInference = Literal["none", "oneshot", "binary", "exhaustive"]


class SupermaskModule(ContinualModule):
    """Masked network, per-task masks and BatchNorm, task-IL routing and optional task inference.

    Args:
        backbone: A :class:`strategies.supermask.nets.MaskedBackbone` (default: masked MLP / CNN from the input shape).
        density: Fraction of weights each task keeps per layer (uniform mode).
        density_mode: ``"uniform"`` or ``"erdos_renyi"`` (SupSup GG).
        er_scale: Erdős–Rényi scale ``s``.
        seed: Seed of the signed-constant weights and of every task's initial scores.
        task_inference: ``"none"`` (task ids from the batch), ``"oneshot"`` or ``"binary"`` (inferred at test from
            the entropy gradient over superposed masks, spec §9), or ``"exhaustive"`` (the task whose own mask gives
            the lowest entropy: one forward pass per learned task, exact where one-shot is a first-order guess).
        bn_infer: BatchNorm statistics during the superposed inference pass (``"batch"``: the batch's own, so a
            one-example batch falls back to ``"mixture"``: the α-weighted per-task statistics).
        faithful: Reproduce the official code where spec §13 marks a row F.
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset({"task-il"})
    KEEP_SCORES: KeepScores = "bits"

    def __init__(self, *, backbone: Optional[Backbone] = None, density: float = 0.1,
                 density_mode: DensityMode = "uniform", er_scale: float = 1.0, seed: int = 0,
                 task_inference: TaskInference = "none", bn_infer: BnInfer = "batch", faithful: bool = False,
                 lr: float = 1e-3, optimizer: Literal["sgd", "adam"] = "adam", momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__(backbone=backbone, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        _check_choice("density_mode", density_mode, ("uniform", "erdos_renyi"))
        _check_choice("task_inference", task_inference, ("none", "oneshot", "binary", "exhaustive"))
        _check_choice("bn_infer", bn_infer, ("batch", "mixture"))
        if not 0.0 < density <= 1.0:
            raise ConfigError(f"density must be in (0, 1], got {density}")
        if density_mode == "erdos_renyi" and er_scale <= 0:
            raise ConfigError(f"er_scale must be > 0, got {er_scale}")
        if backbone is not None and not isinstance(backbone, MaskedBackbone):
            raise ConfigError(f"{type(self).__name__} needs a masked backbone (strategies.supermask.supsup.MaskedMLP, MaskedCNN "
                              f"or MaskedGEMResNet18), got {type(backbone).__name__}")
        if faithful and task_inference in ("oneshot", "binary") and bn_infer == "batch":
            raise ConfigError("faithful task inference uses one example, so bn_infer='batch' cannot normalise it; "
                              "set bn_infer='mixture'")
        self.mask_cfg = (density, density_mode, er_scale, seed)
        self.learned: list[int] = []  # tasks whose masks are frozen, in learning order
        self.task_id_hits: dict[int, list[int]] = {}  # eval row -> [correct batches, batches]
        self._modules_cache: list[Any] = []
        self._layers_cache: list[MaskedLayer] = []

    # -- construction ---------------------------------------------------------------------------------------------
    def density_of(self, shape: tuple[int, ...]) -> float:
        density, mode, scale, _ = self.mask_cfg
        return layer_density(shape, mode, density, scale)

    def bind(self, stream: ContinualDataModule) -> None:
        if isinstance(self.backbone, MaskedBackbone) and not self.backbone.built:
            self.backbone.configure_masks(self.density_of, self.mask_cfg[3])
        super().bind(stream)
        for layer in self._masked():
            layer.weight.requires_grad_(False)

    def build_backbone(self, input_shape: Sequence[int]) -> nn.Module:
        backbone = default_masked_backbone(input_shape)
        backbone.configure_masks(self.density_of, self.mask_cfg[3])
        return backbone

    def build_heads(self, in_features: int, num_classes: int) -> nn.ModuleList:
        """One masked shared head with ``max_classes`` outputs; task ``t`` uses its own mask and first ``C_t``."""
        return nn.ModuleList([LayerFactory(self.density_of, self.mask_cfg[3] + 7_777).linear(in_features, num_classes)])

    def _masked(self) -> list[MaskedLayer]:
        """The masked layers (backbone and head), cached once the network exists (the set never changes)."""
        if not self._layers_cache:
            self._layers_cache = [m for m in self.modules() if isinstance(m, MaskedLayer)]
        return self._layers_cache

    def _switchable(self) -> list[Any]:
        if not self._modules_cache:
            self._modules_cache = [m for m in self.modules() if isinstance(m, (MaskedLayer, TaskBatchNorm))]
        return self._modules_cache

    # -- forward --------------------------------------------------------------------------------------------------
    def set_task(self, task: int) -> None:
        for m in self._switchable():
            m.task = task

    def task_logits(self, x: Tensor, task: int) -> Tensor:
        """Logits of ``x`` under task ``task``'s masks and BatchNorm, restricted to its first ``C_t`` outputs."""
        self.set_task(task)
        logits = self.heads[0](self.features(x))
        width = logits.shape[-1]
        classes = self.classes_per_task[task] if task < len(self.classes_per_task) else width
        if classes == width:
            return logits
        return torch.cat([logits[:, :classes], logits.new_full((len(x), width - classes), float("-inf"))], dim=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        tasks = t.unique().tolist()
        if len(tasks) == 1:
            return self.task_logits(x, int(tasks[0]))
        out: Optional[Tensor] = None
        for task in tasks:  # a mixed batch: run each task's rows through its own masks
            rows = t == task
            part = self.task_logits(x[rows], int(task))
            out = part.new_empty(len(x), part.shape[1]) if out is None else out
            out[rows] = part
        assert out is not None
        return out

    # -- task inference -------------------------------------------------------------------------------------------
    def infer_task(self, x: Tensor) -> int:
        """The learned task whose mask most lowers the output entropy of ``x`` (one batch of one task)."""
        tasks = list(self.learned)
        width = max(self.classes_per_task[t] for t in tasks)
        if self.hparams.task_inference == "exhaustive":
            with torch.no_grad():
                return infer_task_exhaustive(lambda task: self.task_logits(x, task), tasks)
        with torch.inference_mode(False), torch.enable_grad():
            xs = x[:1].clone() if self.hparams.faithful else x.clone()  # official: first example only
            # batch statistics need two examples: a one-example batch (a test set's last) uses the stored ones
            bn_infer = self.hparams.bn_infer if len(xs) >= 2 else "mixture"

            def forward(alpha: Tensor, cand: Sequence[int]) -> Tensor:
                with superposed(self, list(cand), alpha.to(xs.device), bn_infer):
                    return self.heads[0](self.features(xs))[:, :width]

            infer = infer_task_binary if self.hparams.task_inference == "binary" else infer_task_oneshot
            return infer(forward, tasks)

    def predict(self, x: Tensor, t: Tensor) -> Tensor:
        if self.hparams.task_inference == "none" or not self.learned:
            return super().predict(x, t)
        task = self.infer_task(x)
        truth = int(t[0])
        if truth in self.learned:  # count only batches whose task can be identified
            hits = self.task_id_hits.setdefault(self.eval_row, [0, 0])
            hits[0] += int(bool((t == task).all()))
            hits[1] += 1
        return self.task_logits(x, task).argmax(dim=-1)

    def on_test_epoch_end(self) -> None:
        hits = self.task_id_hits.get(self.eval_row)
        if hits and hits[1]:
            self.log("test/task_id_acc", hits[0] / hits[1])

    def task_id_accuracy(self) -> dict[int, float]:
        """Task-identification accuracy per row of the accuracy matrix (fraction of batches)."""
        return {row: c / n for row, (c, n) in sorted(self.task_id_hits.items()) if n}

    # -- CL hooks -------------------------------------------------------------------------------------------------
    def initial_scores(self, experience: Experience) -> Optional[list[Tensor]]:
        """Per-layer initial scores of a new task; ``None`` = random (ExSSNeT overrides it for KKT)."""
        return None

    def on_experience_start(self, experience: Experience) -> None:
        task = experience.task_id
        if task in self.learned:
            raise ConfigError(f"task {task} was already learned; supermask strategies need a distinct task per "
                              f"experience")
        if not self._masked()[0].has_task(task):
            add_task(self, task, inits=self.initial_scores(experience))
        self.set_task(task)

    def on_experience_end(self, experience: Experience) -> None:
        freeze_task(self, experience.task_id, self.keep_scores)
        self.learned.append(experience.task_id)

    @property
    def keep_scores(self) -> KeepScores:
        return self.KEEP_SCORES

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The scores of ``task`` in every masked layer."""
        return [layer.scores[str(task)] for layer in self._masked()]

    def optimizer_parameters(self) -> list[nn.Parameter]:
        assert self.current_experience is not None
        return self.task_parameters(self.current_experience.task_id)

    # -- memory ---------------------------------------------------------------------------------------------------
    def strategy_state_bytes(self) -> int:
        """Packed masks, unions, kept float scores and per-task BatchNorm statistics."""
        norms = [b for m in self.modules() if isinstance(m, TaskBatchNorm) for b in m.buffers()]
        return mask_state_bytes(self) + tensor_bytes(*norms)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["supermask"] = {"layout": layout(self), "learned": list(self.learned),
                                   "task_id_hits": {int(k): list(v) for k, v in self.task_id_hits.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("supermask")
        if state is None:
            return
        restore_layout(self, state["layout"])  # lazily created scores/masks/BN must exist before the state loads
        self.learned = [int(t) for t in state["learned"]]
        self.task_id_hits = {int(k): [int(c), int(n)] for k, (c, n) in state["task_id_hits"].items()}
        self._modules_cache = []

    def extra_results(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mask_bytes_per_task": self.mask_bytes_per_task()}
        if self.accuracy is not None and self.num_tasks > 0:  # spec §11: exactly 0 in task-IL
            matrix = self.accuracy.compute().float().reshape(self.num_tasks, self.num_tasks)
            out["max_forgetting"] = round(float(max_forgetting(matrix)), 6)
        if len(self.learned) <= 50:  # O(T^2) packed ANDs
            out["mask_overlap"] = self.mask_overlap()
        if self.hparams.task_inference != "none":
            out["task_id_accuracy"] = self.task_id_accuracy()
        return out

    def mask_overlap(self) -> list[list[float]]:
        """Whole-network ``|M_a & M_b| / |M_a|`` for every pair of learned tasks (spec §11; divides by ``|M_a|``)."""
        layers = self._masked()
        sizes = {a: sum(count_bits(layer.masks.get(a)) for layer in layers) for a in self.learned}
        return [[sum(overlap_bits(layer.masks.get(a), layer.masks.get(b)) for layer in layers) / max(1, sizes[a])
                 for b in self.learned] for a in self.learned]

    def mask_bytes_per_task(self) -> int:
        """Bytes of one task's packed masks (8 weights per byte)."""
        return sum((layer.weight.numel() + 7) // 8 for layer in self._masked())


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(repr(v) for v in valid)}")
