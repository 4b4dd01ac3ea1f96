"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clkit.errors import ConfigError
from clkit.module import ContinualModule
from strategies._teacher import snapshot, teacher_call

__all__ = ["LwF", "distillation"]


def distillation(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """The paper's knowledge-distillation loss: cross-entropy between the teacher's and the student's softmax at
    ``temperature`` (Eq. 2), summed over outputs and averaged over the batch."""
    soft = F.softmax(teacher / temperature, dim=1)
    return -(soft * F.log_softmax(student / temperature, dim=1)).sum(1).mean()


class LwF(ContinualModule):
    """LwF: the loss on each new experience adds ``lambda_old`` times the distillation loss between the outputs of
    the network before the experience (stored as CL memory) and the current one, on the new data, for every old
    output: each old task's head in task-IL (the paper), the old classes' outputs of the shared head in class-IL
    (LwF.MC of the iCaRL paper) and the whole shared head in domain-IL (as van de Ven et al.'s "three types of
    incremental learning"). Differences: no warm-up epochs training the new head alone; the old outputs are
    computed on the fly from the stored network rather than recorded beforehand (the same values).

    Args:
        lambda_old: Weight of the distillation loss (the paper: 1).
        temperature: Softmax temperature (the paper: 2).
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    teacher: dict[str, Tensor]  # CL memory: the network after the previous experience

    def __init__(self, *, lambda_old: float = 1.0, temperature: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if lambda_old < 0 or temperature <= 0:
            raise ConfigError(f"lambda_old must be >= 0 and temperature > 0, got {lambda_old}, {temperature}")
        self.lambda_old, self.temperature = float(lambda_old), float(temperature)
        self.register_memory("teacher", {})

    def old_outputs(self, x: Tensor, t: Tensor, feats: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(student, teacher) logits of every old output block on ``x``."""
        exp = self.current_experience
        assert exp is not None and self.spec is not None
        if self.multi_head:
            assert self.backbone is not None
            old_feats = teacher_call(self.backbone, self.teacher, x, prefix="backbone.")
            return [(self.heads[k](feats), teacher_call(self.heads[k], self.teacher, old_feats, prefix=f"heads.{k}."))
                    for k in range(exp.index)]
        teacher = teacher_call(self, self.teacher, x, t)
        student = self.heads[0](feats)
        if self.setting == "class-il":
            cols = torch.tensor([c for cs in self.spec.classes[: exp.index] for c in cs], device=x.device)
            return [(student[:, cols], teacher[:, cols])]
        return [(student, teacher)]

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        feats = self.features(x)
        loss = F.cross_entropy(self.head_logits(feats, t), y)
        if self.teacher and self.lambda_old > 0:
            old = sum(distillation(s, q, self.temperature) for s, q in self.old_outputs(x, t, feats))
            loss = loss + self.lambda_old * old
            self.log_epoch_mean("train/distillation", old.detach() if isinstance(old, Tensor) else
                                torch.tensor(float(old)), len(y), prog_bar=False)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def on_experience_end(self, experience: Any) -> None:
        self.teacher = snapshot(self)
