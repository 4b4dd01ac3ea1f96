"""Joint training on everything seen so far: the usual upper bound."""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from clkit.data import Experience, TensorData
from clkit.module import ContinualModule

__all__ = ["Joint"]


class Joint(ContinualModule):
    """Cumulative joint training: at experience ``i`` train on the union of experiences ``0..i``.

    It keeps every experience's training and validation data in its CL memory (counted in
    ``strategy_state_bytes``), so it is not a continual learner; it is the upper bound against which forgetting is
    judged. With a fresh optimizer per experience it keeps training from the current weights (not from scratch).
    Supports task-IL (each sample keeps its task id, hence its head), domain-IL and class-IL.

    Args:
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    past_train: list[list[Tensor]]  # CL memory
    past_val: list[list[Tensor]]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_memory("past_train", [])  # per past experience: [x, y, t]
        self.register_memory("past_val", [])

    def train_data(self, experience: Experience) -> TensorData:
        return _union(self.past_train, experience.train)

    def val_data(self, experience: Experience) -> Optional[TensorData]:
        if experience.val is None:
            return None
        return _union(self.past_val, experience.val)

    def on_experience_end(self, experience: Experience) -> None:
        self.past_train = [*self.past_train, _tensors(experience.train)]
        if experience.val is not None:
            self.past_val = [*self.past_val, _tensors(experience.val)]


def _tensors(data: TensorData) -> list[Tensor]:
    return [data.x, data.y, data.t]


def _union(past: list[list[Tensor]], current: TensorData) -> TensorData:
    """The stored parts and ``current``, with ``current``'s batch transform (the stream's normalisation)."""
    parts = [TensorData(x.to(current.x.device), y.to(current.y.device), t.to(current.t.device), current.transform)
             for x, y, t in past]
    return TensorData.concat([*parts, current])
