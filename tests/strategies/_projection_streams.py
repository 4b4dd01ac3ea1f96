"""Tiny domain-IL streams for the gradient-projection behaviour tests (no Avalanche, built in milliseconds).

Every task labels isotropic Gaussian inputs ``x ∈ R^f`` by ``y = argmax(A_e U x)`` with one shared ``U`` (f × k):

- ``"related"``: ``A_e = A + noise · N(0, 1)``, tasks agree up to a perturbation (shared structure);
- ``"conflicting"``: ``A_e = (-1)^e A``, each task undoes the previous one's labels;
- ``"disjoint"``: as ``"related"``, but task ``e``'s inputs live in its own ``f / n_tasks``-dimensional block of
  coordinates (``x = P_e z``): the labelling rule is shared, the inputs are not;
- ``"mixed"``: as ``"disjoint"``, but the even tasks share block 0: related and unrelated tasks alternate.

``sizes`` gives each task its own number of training samples (e.g. a data-scarce first task).
"""

from __future__ import annotations

from typing import Literal

import torch

from clkit.data import ContinualDataModule, Experience, TensorData
from clkit.loop import StreamRun, trainer_factory
from clkit.module import ContinualModule


class ReadoutStream(ContinualDataModule):
    """Domain-IL stream of linear read-outs of one shared low-rank projection (see the module docstring)."""

    setting = "domain-il"
    task_ids_at_test = False

    def __init__(self, mode: Literal["related", "conflicting", "disjoint", "mixed"], *, n_tasks: int = 3, n: int = 400,
                 features: int = 8, rank: int = 2, classes: int = 2, noise: float = 0.2, seed: int = 0,
                 sizes: list[int] | None = None) -> None:
        super().__init__(seed=seed, val_fraction=0.0, batch_size=32)
        self.mode, self.n_tasks, self.n, self.features = mode, n_tasks, n, features
        self.rank, self.classes, self.noise = rank, classes, noise
        self.sizes = sizes or [n] * n_tasks

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(self.seed)
        u = torch.linalg.qr(torch.randn(self.features, self.rank, generator=g))[0]  # (f, k)
        base = torch.randn(self.classes, self.rank, generator=g)  # (C, k)
        out = []
        for e in range(self.n_tasks):
            if self.mode == "conflicting":
                a = base if e % 2 == 0 else -base
            else:
                a = base + self.noise * torch.randn(base.shape, generator=g)
            n_train = self.sizes[e]
            x = torch.randn(n_train + self.n, self.features, generator=g)  # (N, f)
            if self.mode in ("disjoint", "mixed"):
                width = self.features // self.n_tasks
                block = e if self.mode == "disjoint" else (0 if e % 2 == 0 else (e + 1) // 2)
                z = x[:, :width]  # (N, width): the labels read the same coordinates of z in every task
                y = ((z @ u[:width]) @ a.T).argmax(dim=1)  # (N, w)(w, k)(k, C) -> (N, C) -> (N,)
                x = torch.zeros_like(x)
                x[:, block * width: (block + 1) * width] = z
            else:
                y = ((x @ u) @ a.T).argmax(dim=1)  # (N, f)(f, k)(k, C) -> (N, C) -> (N,)
            t = torch.full_like(y, e)
            train = TensorData(x[:n_train], y[:n_train], t[:n_train])
            test = TensorData(x[n_train:], y[n_train:], t[n_train:])
            out.append(self.make_experience(e, range(self.classes), train, test, f"{self.mode} task {e}"))
        return out


def run_stream(strategy: ContinualModule, stream: ContinualDataModule, epochs: int) -> tuple[torch.Tensor, dict]:
    """Train on ``stream``; return the accuracy matrix and its metrics."""
    result = StreamRun(strategy, stream, trainer_factory(max_epochs=epochs)).run()
    return result.accuracy_matrix, result.metrics


class ImageStream(ContinualDataModule):
    """Task-IL stream of ``(3, side, side)`` images: random labels (for shape tests), or with ``learnable=True`` two
    class templates per task plus noise, each task at its own brightness and contrast (``x (1 + e) + 2 e``), so that
    BatchNorm running statistics differ from task to task."""

    setting = "task-il"
    task_ids_at_test = True

    def __init__(self, *, n: int = 130, side: int = 32, n_tasks: int = 2, learnable: bool = False) -> None:
        super().__init__(seed=0, val_fraction=0.0, batch_size=64 if not learnable else 32)
        self.n, self.side, self.n_tasks, self.learnable = n, side, n_tasks, learnable

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(0)
        out = []
        for e in range(self.n_tasks):
            y = torch.randint(0, 2, (self.n,), generator=g)
            x = torch.randn(self.n, 3, self.side, self.side, generator=g)
            if self.learnable:
                templates = torch.randn(2, 3, self.side, self.side, generator=g)
                x = (templates[y] + 0.5 * x) * (1 + e) + 2.0 * e
            data = TensorData(x, y, torch.full_like(y, e))
            out.append(self.make_experience(e, range(2), data, data, f"images {e}"))
        return out
