"""Avalanche benchmarks built on scikit-learn's digits with every generator family (factories for FromAvalanche)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset


def _digits(flat: bool = False) -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    if flat:
        x = x.flatten(1)
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    train, test = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])
    train.targets, test.targets = y[:1400], y[1400:]  # type: ignore[attr-defined]
    return train, test


class RandomShift:
    """A random train-time augmentation on tensors: roll each image by -1, 0 or 1 pixel (torch's global RNG)."""

    def __call__(self, x: Tensor) -> Tensor:
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,)))
        return torch.roll(x, shifts=(dx, dy), dims=(-2, -1))


def ni(n_experiences: int = 3) -> Any:
    from avalanche.benchmarks import ni_benchmark

    train, test = _digits()
    return ni_benchmark(train, test, n_experiences=n_experiences, seed=0)


def nc(n_experiences: int = 5, task_labels: bool = False, augmented: bool = False) -> Any:
    from avalanche.benchmarks import nc_benchmark

    train, test = _digits()
    return nc_benchmark(train, test, n_experiences=n_experiences, task_labels=task_labels, seed=0,
                        train_transform=RandomShift() if augmented else None, eval_transform=None)


def nc_with_validation(n_experiences: int = 5) -> Any:
    from avalanche.benchmarks import benchmark_with_validation_stream

    return benchmark_with_validation_stream(nc(n_experiences), validation_size=0.2, shuffle=True, seed=0)


def tensors(n_experiences: int = 3) -> Any:
    from avalanche.benchmarks import tensors_benchmark

    train, test = _digits(flat=True)
    x, y = train.tensors
    xt, yt = test.tensors
    parts = [(x[i::n_experiences], y[i::n_experiences]) for i in range(n_experiences)]
    return tensors_benchmark(parts, [(xt, yt)] * n_experiences, task_labels=[0] * n_experiences)


def class_incremental(n_experiences: int = 5) -> Any:
    from avalanche.benchmarks import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset

    train, test = _digits()
    datasets = {"train": as_classification_dataset(train), "test": as_classification_dataset(test)}
    return class_incremental_benchmark(datasets, class_order=list(range(10)), num_experiences=n_experiences)


def from_datasets(n_experiences: int = 3) -> Any:
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.utils import as_classification_dataset

    train, test = _digits()
    parts = []
    for split in (train, test):
        x, y = split.tensors
        chunks = []
        for i in range(n_experiences):
            ds = TensorDataset(x[i::n_experiences], y[i::n_experiences])
            ds.targets = y[i::n_experiences]  # type: ignore[attr-defined]
            chunks.append(as_classification_dataset(ds))
        parts.append(chunks)
    return benchmark_from_datasets(train=parts[0], test=parts[1])
