"""Binary domain-IL streams whose protocol fixes the validation split (the IBCL benchmarks).

Every task is a 0/1 problem on a shared input space (one shared output, no task id at test). ``classes`` of each
experience are the label values ``(0, 1)``; the experience name says what 0 and 1 mean.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from clkit.data import Experience, TensorData
from scenarios._base import FileScenario, with_transforms
from scenarios.avalanche import experiences_from_benchmark

__all__ = ["BinaryTask", "BinaryTaskStream"]


class BinaryTask(NamedTuple):
    """One binary task: inputs and 0/1 labels of its train, validation and test parts."""

    name: str
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


class BinaryTaskStream(FileScenario):
    """Base class: subclasses implement :meth:`tasks`; built with Avalanche's ``tensors_benchmark``.

    The protocol's own validation split is used; ``val_fraction`` is ignored (with a warning when non-zero).
    """

    setting = "domain-il"
    task_ids_at_test = False

    def __init__(self, *, val_fraction: float = 0.0, **kwargs: Any) -> None:
        if val_fraction != 0.0:
            warnings.warn(f"{type(self).__name__} uses its protocol's validation split; val_fraction={val_fraction} "
                          "is ignored", stacklevel=2)
        super().__init__(val_fraction=0.0, **kwargs)

    def tasks(self) -> list[BinaryTask]:
        raise NotImplementedError

    def transform(self) -> Optional[Any]:
        """Batch transform of the inputs (all parts), e.g. uint8 -> normalised float."""
        return None

    def benchmark(self) -> Any:
        raise NotImplementedError("built in build_experiences")

    def build_experiences(self) -> list[Experience]:
        from avalanche.benchmarks import tensors_benchmark

        tasks = self.tasks()
        bench = tensors_benchmark([t.train for t in tasks], [t.test for t in tasks],
                                  task_labels=list(range(len(tasks))))
        exps = experiences_from_benchmark(bench, self, [t.name for t in tasks])
        out = []
        for e, task in zip(exps, tasks):
            x, y = task.val
            e = dataclasses.replace(e, val=TensorData(x, y.long(), torch.full((len(y),), e.index, dtype=torch.long)),
                                    classes=(0, 1))
            out.append(with_transforms(e, self.transform(), self.transform()))
        return out
