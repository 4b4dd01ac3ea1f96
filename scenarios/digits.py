"""Offline real-data streams from scikit-learn's bundled ``load_digits`` (1,797 8×8 images, 10 classes).

No download: the data ships inside scikit-learn. Inputs are (1, 8, 8) floats in [0, 1]. A seeded, stratified
train/test split (``test_fraction``) is made once; the streams are built through Avalanche generators.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from clkit.errors import ConfigError
from scenarios.avalanche import AvalancheScenario

__all__ = ["PermutedDigits", "SplitDigits", "load_digits_tensors"]


def load_digits_tensors(test_fraction: float, seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Digits as ``((x_train, y_train), (x_test, y_test))``, x of shape (N, 1, 8, 8) in [0, 1], stratified split."""
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.as_tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    test_rows = []
    for c in range(10):  # stratified: the same fraction of every class goes to test
        rows = (y == c).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=g)]
        n_test = int(round(test_fraction * len(rows)))
        if not 0 < n_test < len(rows):
            low, high = 0.5 / len(rows), 1 - 0.5 / len(rows)
            raise ConfigError(f"test_fraction={test_fraction} leaves class {c} ({len(rows)} images) with an empty "
                              f"{'test' if n_test == 0 else 'training'} split; valid: {low:.3f} to {high:.3f}")
        test_rows.append(rows[:n_test])
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[torch.cat(test_rows)] = True
    return (x[~is_test], y[~is_test]), (x[is_test], y[is_test])


def _dataset(x: Tensor, y: Tensor) -> TensorDataset:
    ds = TensorDataset(x, y)
    ds.targets = y  # type: ignore[attr-defined]  # Avalanche reads the labels from here
    return ds


class SplitDigits(AvalancheScenario):
    """Digits split by class: ``n_experiences`` experiences of ``10 / n_experiences`` classes each.

    Args:
        n_experiences: Must divide the 10 classes.
        setting: ``"task-il"`` (a head per experience, labels local) or ``"class-il"``.
        class_order: Explicit order of the 10 classes; default ``0..9``, or a seeded shuffle with
            ``shuffle_classes``.
        shuffle_classes: Shuffle the class order with ``seed``.
        test_fraction: Fraction of each class held out for testing.
    """

    def __init__(self, *, n_experiences: int = 5, setting: Literal["task-il", "class-il"] = "task-il",
                 class_order: Optional[list[int]] = None, shuffle_classes: bool = False, test_fraction: float = 0.3,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if setting not in ("task-il", "class-il"):
            raise ConfigError(f"setting={setting!r} is not one of 'task-il', 'class-il'")
        if n_experiences < 1 or 10 % n_experiences:
            raise ConfigError(f"n_experiences={n_experiences} does not divide the 10 classes of SplitDigits; "
                              "valid values: 1, 2, 5, 10")
        if class_order is not None and sorted(class_order) != list(range(10)):
            raise ConfigError(f"class_order={class_order} is not a permutation of the classes 0..9")
        self.n_experiences, self.setting, self.test_fraction = n_experiences, setting, test_fraction
        self.task_ids_at_test = setting == "task-il"
        self.class_order, self.shuffle_classes = class_order, shuffle_classes

    def benchmark(self) -> Any:
        from avalanche.benchmarks import nc_benchmark

        (xtr, ytr), (xte, yte) = load_digits_tensors(self.test_fraction, self.seed)
        order = self.class_order
        if order is None:
            order = (torch.randperm(10, generator=torch.Generator().manual_seed(self.seed)).tolist()
                     if self.shuffle_classes else list(range(10)))
        return nc_benchmark(_dataset(xtr, ytr), _dataset(xte, yte), n_experiences=self.n_experiences,
                            task_labels=self.setting == "task-il", fixed_class_order=order,
                            class_ids_from_zero_in_each_exp=False)


class PermutedDigits(AvalancheScenario):
    """Domain-IL digits: every experience sees all 10 classes through its own fixed pixel permutation.

    Every experience is permuted, the first included (as in permuted MNIST).

    Args:
        n_experiences: Number of permutations.
        test_fraction: Fraction of each class held out for testing.
    """

    setting = "domain-il"

    def __init__(self, *, n_experiences: int = 5, test_fraction: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_experiences < 1:
            raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
        self.n_experiences, self.test_fraction = n_experiences, test_fraction

    def benchmark(self) -> Any:
        from avalanche.benchmarks import tensors_benchmark

        (xtr, ytr), (xte, yte) = load_digits_tensors(self.test_fraction, self.seed)
        g = torch.Generator().manual_seed(self.seed + 1)
        train, test = [], []
        for _ in range(self.n_experiences):
            perm = torch.randperm(64, generator=g)
            train.append((xtr.flatten(1)[:, perm].view_as(xtr), ytr))
            test.append((xte.flatten(1)[:, perm].view_as(xte), yte))
        return tensors_benchmark(train, test, task_labels=[0] * self.n_experiences)

    def experience_names(self) -> Optional[list[str]]:
        return [f"permutation {i}" for i in range(self.n_experiences)]

    def estimated_bytes(self) -> Optional[int]:
        return self.n_experiences * 1797 * 64 * 4 * 2  # 1,797 images of 8x8 float32 per permutation, plus a copy
