"""Joint training on everything seen so far: the usual upper bound."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from clkit.data import Experience, TensorData
from clkit.module import ContinualModule

__all__ = ["Joint"]


class Joint(ContinualModule):
    """Cumulative joint training: at experience ``i`` train on the union of experiences ``0..i``.

    This stores all past data, so it is not a continual learner; it is the upper bound against which forgetting
    is judged. With a fresh optimizer per experience it keeps training from the current weights (not from
    scratch). Supports task-IL (each sample keeps its task id, hence its head), domain-IL and class-IL.
    """

    def train_data(self, seen: Sequence[Experience]) -> TensorData:
        return TensorData.concat([e.train for e in seen])

    def val_data(self, seen: Sequence[Experience]) -> Optional[TensorData]:
        parts = [e.val for e in seen if e.val is not None]
        return TensorData.concat(parts) if parts else None
