"""Tiny domain-IL streams for the gradient-projection behaviour tests (no Avalanche, built in milliseconds).

Every task labels isotropic Gaussian inputs ``x ∈ R^f`` by ``y = argmax(A_e U x)`` with one shared ``U`` (f × k):

- ``"related"``: ``A_e = A + noise · N(0, 1)``, tasks agree up to a perturbation (shared structure);
- ``"conflicting"``: ``A_e = (-1)^e A``, each task undoes the previous one's labels.
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

    def __init__(self, mode: Literal["related", "conflicting"], *, n_tasks: int = 3, n: int = 400, features: int = 8,
                 rank: int = 2, classes: int = 2, noise: float = 0.2, seed: int = 0) -> None:
        super().__init__(seed=seed, val_fraction=0.0, batch_size=32)
        self.mode, self.n_tasks, self.n, self.features = mode, n_tasks, n, features
        self.rank, self.classes, self.noise = rank, classes, noise

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(self.seed)
        u = torch.linalg.qr(torch.randn(self.features, self.rank, generator=g))[0]  # (f, k)
        base = torch.randn(self.classes, self.rank, generator=g)  # (C, k)
        out = []
        for e in range(self.n_tasks):
            if self.mode == "related":
                a = base + self.noise * torch.randn(base.shape, generator=g)
            else:
                a = base if e % 2 == 0 else -base
            x = torch.randn(2 * self.n, self.features, generator=g)  # (2n, f)
            y = ((x @ u) @ a.T).argmax(dim=1)  # (2n, f)(f, k)(k, C) -> (2n, C) -> (2n,)
            t = torch.full_like(y, e)
            train = TensorData(x[: self.n], y[: self.n], t[: self.n])
            test = TensorData(x[self.n :], y[self.n :], t[self.n :])
            out.append(self.make_experience(e, range(self.classes), train, test, f"{self.mode} task {e}"))
        return out


def run_stream(strategy: ContinualModule, stream: ContinualDataModule, epochs: int) -> tuple[torch.Tensor, dict]:
    """Train on ``stream``; return the accuracy matrix and its metrics."""
    result = StreamRun(strategy, stream, trainer_factory(max_epochs=epochs)).run()
    return result.accuracy_matrix, result.metrics


class ImageStream(ContinualDataModule):
    """Task-IL stream of random ``(3, side, side)`` images with random labels (for shape tests only)."""

    setting = "task-il"
    task_ids_at_test = True

    def __init__(self, *, n: int = 130, side: int = 32, n_tasks: int = 2) -> None:
        super().__init__(seed=0, val_fraction=0.0, batch_size=64)
        self.n, self.side, self.n_tasks = n, side, n_tasks

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(0)
        out = []
        for e in range(self.n_tasks):
            x = torch.randn(self.n, 3, self.side, self.side, generator=g)
            y = torch.randint(0, 2, (self.n,), generator=g)
            data = TensorData(x, y, torch.full_like(y, e))
            out.append(self.make_experience(e, range(2), data, data, f"images {e}"))
        return out
