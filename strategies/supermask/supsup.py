"""SupSup: Supermasks in Superposition (Wortsman et al., NeurIPS 2020), scenario GG plus one-shot task inference."""

from __future__ import annotations

from typing import Any

import torch

from clkit.module import OptimizerCallable
from clkit.optim import spec
from strategies.supermask.base import SupermaskModule

__all__ = ["SupSup"]


class SupSup(SupermaskModule):
    """Supermasks in Superposition (Wortsman, Ramanujan, Liu, Kembhavi, Rastegari, Yosinski, Farhadi, NeurIPS 2020).

    A fixed randomly weighted network (signed Kaiming constants) and, per task, a binary supermask found by training
    real-valued scores with edge-popup (top-k of ``|S|`` with a straight-through estimator). The weights never change,
    masks are frozen as packed bits after their task and BatchNorm is per task, so there is no forgetting.
    Scenario: task-IL (GG: task id at train and test). With ``task_inference`` other than ``"none"`` the task is
    inferred at test time (the test matrix is then task-agnostic) and ``results.json`` reports, per row, the
    fraction of test batches whose task was identified.

    The scores are trained by ``optimizer`` (default Adam, lr 1e-3, weight decay 1e-4 on the scores, as the paper)
    with, unless an ``lr_scheduler`` is given, a cosine schedule over the experience's epochs.

    Args:
        **kwargs: :class:`strategies.supermask.base.SupermaskModule` arguments (``density``, ``density_mode``,
            ``er_scale``, ``task_inference``, ``bn_infer``, ``faithful``) and :class:`clkit.ContinualModule` ones.
    """

    def __init__(self, *, optimizer: OptimizerCallable = spec("torch.optim.Adam", lr=1e-3, weight_decay=1e-4),  # type: ignore[assignment]
                 **kwargs: Any) -> None:
        super().__init__(optimizer=optimizer, **kwargs)

    def configure_optimizers(self) -> Any:
        if self.scheduler_factory is not None:
            return super().configure_optimizers()
        optimizer = self.build_optimizer([p for p in self.optimizer_parameters() if p.requires_grad])
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)}
