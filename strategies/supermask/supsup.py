"""SupSup: Supermasks in Superposition (Wortsman et al., NeurIPS 2020), scenario GG plus one-shot task inference."""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch

from clkit.nets import Backbone
from strategies.supermask.layers import BnInfer
from strategies.supermask.nets import MaskedBackbone, MaskedCNN, MaskedGEMResNet18, MaskedMLP
from strategies.supermask.masks import DensityMode
from strategies.supermask.base import SupermaskModule, TaskInference

__all__ = ["MaskedBackbone", "MaskedCNN", "MaskedGEMResNet18", "MaskedMLP", "SupSup"]


class SupSup(SupermaskModule):
    """Supermasks in Superposition (Wortsman, Ramanujan, Liu, Kembhavi, Rastegari, Yosinski, Farhadi, NeurIPS 2020).

    A fixed randomly weighted network (signed Kaiming constants) and, per task, a binary supermask found by training
    real-valued scores with edge-popup (top-k of ``|S|`` with a straight-through estimator). The weights never change,
    masks are frozen as packed bits after their task and BatchNorm is per task, so there is no forgetting.
    Scenario: task-IL (GG: task id at train and test). With ``task_inference="oneshot"`` (or ``"binary"``) the task
    is inferred at test time from the entropy gradient of superposed masks (spec §9) and ``test/task_id_acc`` is
    logged.

    Args:
        backbone: A masked backbone (``MaskedMLP``, ``MaskedCNN``, ``MaskedGEMResNet18``); default from the input.
        density: Fraction of weights kept per layer (uniform).
        density_mode: ``"uniform"`` or ``"erdos_renyi"`` (the GG setting of the paper).
        er_scale: Erdős–Rényi scale ``s`` (higher = denser).
        seed: Seed of the fixed weights and of the tasks' initial scores.
        task_inference: ``"none"``, ``"oneshot"``, ``"binary"`` or ``"exhaustive"``.
        bn_infer: BatchNorm statistics in the superposed pass: ``"batch"`` or ``"mixture"``.
        faithful: Official behaviour where spec §13 marks a row F (one example for task inference).
        lr: Score learning rate (Adam, cosine schedule over the experience's epochs).
        optimizer: ``"adam"`` (paper) or ``"sgd"``.
        momentum: SGD momentum.
        weight_decay: Weight decay on the scores.
    """

    def __init__(self, *, backbone: Optional[Backbone] = None, density: float = 0.1,
                 density_mode: DensityMode = "uniform", er_scale: float = 1.0, seed: int = 0,
                 task_inference: TaskInference = "none", bn_infer: BnInfer = "batch", faithful: bool = False,
                 lr: float = 1e-3, optimizer: Literal["sgd", "adam"] = "adam", momentum: float = 0.0,
                 weight_decay: float = 1e-4) -> None:
        super().__init__(backbone=backbone, density=density, density_mode=density_mode, er_scale=er_scale, seed=seed,
                         task_inference=task_inference, bn_infer=bn_infer, faithful=faithful, lr=lr,
                         optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        self.save_hyperparameters(ignore=["backbone"])

    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)}
