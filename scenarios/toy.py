"""Tiny seeded synthetic streams for tests and examples (no download, seconds on a CPU).

- :class:`ToySplit`: Gaussian class blobs split into experiences (task-IL or class-IL).
- :class:`ToyPermuted`: one blob problem seen through a different fixed feature permutation per experience
  (domain-IL).
- :class:`ToyShared`: tasks whose labels all depend on the same low-dimensional projection of the input, so what
  one task learns helps the others (domain-IL or task-IL).

All are built through Avalanche generators (``tensors_benchmark``) and the clkit adapter.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from torch import Tensor

from clkit.errors import ConfigError
from scenarios._base import experiences_argument
from scenarios.avalanche import AvalancheScenario

__all__ = ["ToyPermuted", "ToyShared", "ToySplit", "blobs"]


def blobs(num_classes: int, samples_per_class: int, features: int, *, spread: float, generator: torch.Generator
          ) -> tuple[Tensor, Tensor]:
    """Gaussian blobs: class centres ~ N(0, 1), samples = centre + spread * N(0, 1). Returns x (N, F), y (N,)."""
    centres = torch.randn(num_classes, features, generator=generator)  # (C, F)
    y = torch.arange(num_classes).repeat_interleave(samples_per_class)  # (C*S,)
    x = centres[y] + spread * torch.randn(y.numel(), features, generator=generator)  # (C*S, F)
    return x, y


def _tensors_benchmark(train: list[tuple[Tensor, Tensor]], test: list[tuple[Tensor, Tensor]]) -> Any:
    from avalanche.benchmarks import tensors_benchmark

    return tensors_benchmark(train, test, task_labels=list(range(len(train))))


class _Toy(AvalancheScenario):
    def __init__(self, *, n_experiences: Optional[int] = None, samples_per_class: int = 64, features: int = 8,
                 spread: float = 0.5, test_fraction: float = 0.25, num_experiences: Optional[int] = None,
                 **kwargs: Any) -> None:
        """``n_experiences`` defaults to 3; ``num_experiences`` is its deprecated alias."""
        n_experiences = experiences_argument(n_experiences, num_experiences, 3, type(self).__name__)
        kwargs.setdefault("val_fraction", 0.0)
        kwargs.setdefault("batch_size", 32)
        super().__init__(**kwargs)
        if n_experiences < 1 or samples_per_class < 4 or features < 1:
            raise ConfigError(f"bad toy stream size: n_experiences={n_experiences}, "
                              f"samples_per_class={samples_per_class}, features={features}")
        self.n_experiences = n_experiences
        self.samples_per_class = samples_per_class
        self.features = features
        self.spread = spread
        self.test_fraction = test_fraction

    def _split(self, x: Tensor, y: Tensor, g: torch.Generator) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        perm = torch.randperm(len(y), generator=g)
        n_test = max(1, int(self.test_fraction * len(y)))
        te, tr = perm[:n_test], perm[n_test:]
        return (x[tr], y[tr]), (x[te], y[te])


class ToySplit(_Toy):
    """``n_experiences × classes_per_experience`` Gaussian blob classes, a disjoint set of classes per experience.

    Args:
        classes_per_experience: Classes in each experience.
        setting: ``"task-il"`` (a head per experience, task ids at test) or ``"class-il"``.
    """

    def __init__(self, *, classes_per_experience: int = 2, setting: Literal["task-il", "class-il"] = "class-il",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if setting not in ("task-il", "class-il"):
            raise ConfigError(f"setting={setting!r} is not one of 'task-il', 'class-il'")
        self.classes_per_experience = classes_per_experience
        self.setting = setting
        self.task_ids_at_test = setting == "task-il"

    def benchmark(self) -> Any:
        g = torch.Generator().manual_seed(self.seed)
        c = self.classes_per_experience
        x, y = blobs(self.n_experiences * c, self.samples_per_class, self.features, spread=self.spread, generator=g)
        train, test = [], []
        for e in range(self.n_experiences):
            rows = (y >= e * c) & (y < (e + 1) * c)
            tr, te = self._split(x[rows], y[rows], g)
            train.append(tr)
            test.append(te)
        return _tensors_benchmark(train, test)


class ToyPermuted(_Toy):
    """One ``num_classes``-class blob problem; experience ``e`` sees the features permuted by its own permutation.

    The first experience is permuted too (as in permuted MNIST).
    """

    setting = "domain-il"

    def __init__(self, *, num_classes: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes_ = num_classes

    def benchmark(self) -> Any:
        g = torch.Generator().manual_seed(self.seed)
        x, y = blobs(self.num_classes_, self.samples_per_class, self.features, spread=self.spread, generator=g)
        tr, te = self._split(x, y, g)
        train, test = [], []
        for _ in range(self.n_experiences):
            perm = torch.randperm(self.features, generator=g)
            train.append((tr[0][:, perm], tr[1]))
            test.append((te[0][:, perm], te[1]))
        return _tensors_benchmark(train, test)


class ToyShared(_Toy):
    """Tasks that share structure: ``y_e = argmax(A_e · U x)`` with one shared ``U`` (rank ``shared_dim``).

    Every task's label depends on the same ``shared_dim`` directions of the input, so features learned for one task
    serve the others; ``A_e`` (``num_classes × shared_dim``) differ mildly between tasks (``task_noise``).

    Args:
        num_classes: Classes per task.
        shared_dim: Rank of the shared projection ``U``.
        task_noise: Scale of the per-task perturbation of the shared read-out.
        setting: ``"domain-il"`` (one head) or ``"task-il"``.
    """

    def __init__(self, *, num_classes: int = 2, shared_dim: int = 2, task_noise: float = 0.3,
                 setting: Literal["domain-il", "task-il"] = "domain-il", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if setting not in ("domain-il", "task-il"):
            raise ConfigError(f"setting={setting!r} is not one of 'domain-il', 'task-il'")
        self.num_classes_, self.shared_dim, self.task_noise = num_classes, shared_dim, task_noise
        self.setting = setting
        self.task_ids_at_test = setting == "task-il"

    def benchmark(self) -> Any:
        g = torch.Generator().manual_seed(self.seed)
        u = torch.linalg.qr(torch.randn(self.features, self.shared_dim, generator=g))[0]  # (F, k) orthonormal
        base = torch.randn(self.num_classes_, self.shared_dim, generator=g)  # (C, k)
        n = self.num_classes_ * self.samples_per_class
        train, test = [], []
        for _ in range(self.n_experiences):
            a = base + self.task_noise * torch.randn(base.shape, generator=g)  # (C, k)
            x = torch.randn(n, self.features, generator=g)  # (N, F)
            y = ((x @ u) @ a.T).argmax(dim=1)  # (N, F)(F, k)(k, C) -> (N, C) -> (N,)
            tr, te = self._split(x, y, g)
            train.append(tr)
            test.append(te)
        return _tensors_benchmark(train, test)
