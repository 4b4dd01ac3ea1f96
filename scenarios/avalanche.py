"""The one adapter between Avalanche benchmarks and clkit experiences.

Works with both Avalanche generator families: the 0.6 ones (``class_incremental_benchmark``,
``task_incremental_benchmark``, ``benchmark_from_datasets``) and the older ones (``nc_benchmark``,
``ni_benchmark``, ``dataset_benchmark``, ``tensors_benchmark``). Samples may be ``(x, y)`` or ``(x, y, t)``;
classes may come as a set, a list, or not at all (then they are read from the labels). Every experience is
materialised once into tensors, so training batches are plain tensor indexing.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clkit.data import ContinualDataModule, Experience, TensorData
from clkit.errors import DataError

__all__ = ["AvalancheScenario", "experiences_from_benchmark", "materialise"]


def materialise(dataset: Dataset, task_id: int, batch_size: int = 1024) -> TensorData:
    """Read a whole (Avalanche or torch) dataset into tensors; transforms run once, here.

    The task id of every sample is set to ``task_id`` (clkit's task id is the experience's position).
    """
    # a private generator: a DataLoader iterator otherwise draws its base seed from the global RNG
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, generator=torch.Generator())
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    for batch in loader:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise DataError(f"expected samples (x, y) or (x, y, t), got a batch of type {type(batch).__name__}")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]).long())
    if not xs:
        raise DataError("an experience has no samples")
    y = torch.cat(ys)
    return TensorData(torch.cat(xs), y, torch.full_like(y, task_id))


def _classes(exp: Any, data: TensorData) -> list[int]:
    found = getattr(exp, "classes_in_this_experience", None)
    if found is None:
        return sorted(int(c) for c in data.y.unique())
    return sorted(int(c) for c in found)


def _local_labels(data: TensorData, classes: list[int]) -> TensorData:
    """Map labels to 0..C-1 within the experience (task-IL heads), unless they already are."""
    if classes == list(range(len(classes))) and int(data.y.max()) < len(classes):
        return data
    lookup = torch.full((max(max(classes), int(data.y.max())) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    y = lookup[data.y]
    if bool((y < 0).any()):
        raise DataError(f"labels outside the experience's classes {classes}")
    return TensorData(data.x, y, data.t, data.transform)


def experiences_from_benchmark(benchmark: Any, scenario: ContinualDataModule,
                               names: Optional[list[str]] = None) -> list[Experience]:
    """Turn an Avalanche benchmark's train/test streams into clkit experiences.

    Args:
        benchmark: Any Avalanche benchmark with ``train_stream`` and ``test_stream`` of equal length.
        scenario: The clkit scenario; gives the setting (task-IL relabels per task), the seed and ``val_fraction``.
        names: Optional display names, one per experience.
    """
    train_stream, test_stream = list(benchmark.train_stream), list(benchmark.test_stream)
    if len(train_stream) != len(test_stream):
        raise DataError(f"benchmark has {len(train_stream)} train but {len(test_stream)} test experiences")
    out = []
    for i, (tr_exp, te_exp) in enumerate(zip(train_stream, test_stream)):
        train, test = materialise(tr_exp.dataset, i), materialise(te_exp.dataset, i)
        classes = _classes(tr_exp, train)
        if scenario.setting == "task-il":
            train, test = _local_labels(train, classes), _local_labels(test, classes)
        name = names[i] if names else "classes " + ",".join(map(str, classes))
        out.append(scenario.make_experience(i, classes, train, test, name))
    return out


class AvalancheScenario(ContinualDataModule):
    """A scenario defined by an Avalanche benchmark: subclasses implement :meth:`benchmark`."""

    def benchmark(self) -> Any:
        """Build and return the Avalanche benchmark (called once)."""
        raise NotImplementedError

    def experience_names(self) -> Optional[list[str]]:
        return None

    def build(self) -> list[Experience]:
        return experiences_from_benchmark(self.benchmark(), self, self.experience_names())
