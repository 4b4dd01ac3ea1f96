"""Binary domain-incremental streams for IBCL (one shared sigmoid output, no task id at test).

- :class:`BinaryDigits`: scikit-learn's bundled digits, task ``e`` = digit ``a_e`` (label 0) vs digit ``b_e``
  (label 1), offline.
- :class:`RotatingBinary`: Gaussian inputs labelled by a half-plane whose normal turns by ``angle`` degrees per
  task: 90 degrees gives conflicting tasks (no single linear model solves two), 0 near-duplicate tasks.

Both are built from tensors directly (no Avalanche); every random choice comes from ``seed``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from clkit.data import ContinualDataModule, Experience, TensorData
from clkit.errors import ConfigError
from scenarios._base import experiences_argument
from scenarios.digits import load_digits_tensors

__all__ = ["BinaryDigits", "RotatingBinary"]

_DEFAULT_PAIRS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def _task(x: torch.Tensor, y: torch.Tensor, index: int) -> TensorData:
    return TensorData(x, y, torch.full_like(y, index))


class BinaryDigits(ContinualDataModule):
    """Digits (8x8, flattened to 64 features in [0, 1]) as binary domain-IL: one digit pair per experience.

    The first digit of each pair is labelled 0 and the second 1, consistently across tasks (the shared head makes
    the polarity matter, as in the protocol's Split-CIFAR100 pairs).

    Args:
        pairs: Digit pairs, one per experience (default (0,1), (2,3), (4,5), (6,7), (8,9)).
        test_fraction: Fraction of each class held out for testing (stratified, seeded).
    """

    setting = "domain-il"
    task_ids_at_test = False

    def __init__(self, *, pairs: list[list[int]] | None = None, test_fraction: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pairs = [list(p) for p in (pairs or _DEFAULT_PAIRS)]
        for p in self.pairs:
            if len(p) != 2 or p[0] == p[1] or not all(0 <= c <= 9 for c in p):
                raise ConfigError(f"pairs must hold two different digits in 0..9 each, got {p}")
        self.test_fraction = test_fraction

    def build(self) -> list[Experience]:
        (xtr, ytr), (xte, yte) = load_digits_tensors(self.test_fraction, self.seed)
        xtr, xte = xtr.flatten(1), xte.flatten(1)  # (N, 1, 8, 8) -> (N, 64)
        exps = []
        for i, (a, b) in enumerate(self.pairs):
            tr, te = (ytr == a) | (ytr == b), (yte == a) | (yte == b)
            train = _task(xtr[tr], (ytr[tr] == b).long(), i)
            test = _task(xte[te], (yte[te] == b).long(), i)
            exps.append(self.make_experience(i, (0, 1), train, test, f"{a} vs {b}"))
        return exps


class RotatingBinary(ContinualDataModule):
    """Task ``e`` labels ``x ~ N(0, I_F)`` by ``1[x . u_e > 0]``, ``u_e`` = angle ``e * angle`` in the first two axes.

    Args:
        n_experiences: Number of tasks (``num_experiences``: its deprecated alias).
        angle: Degrees between consecutive tasks' decision normals (90: conflicting, 0: near-duplicates).
        features: Input width ``F`` (``>= 2``); the extra features are noise.
        train_samples: Training samples per task (before the validation split).
        test_samples: Test samples per task.
        label_noise: Probability of flipping a label.
    """

    setting = "domain-il"
    task_ids_at_test = False

    def __init__(self, *, n_experiences: Optional[int] = None, angle: float = 90.0, features: int = 4,
                 train_samples: int = 400, test_samples: int = 200, label_noise: float = 0.0,
                 num_experiences: Optional[int] = None, **kwargs: Any) -> None:
        n_experiences = experiences_argument(n_experiences, num_experiences, 2, "RotatingBinary")
        kwargs.setdefault("batch_size", 32)
        super().__init__(**kwargs)
        if n_experiences < 1 or features < 2 or train_samples < 4 or test_samples < 1:
            raise ConfigError(f"bad RotatingBinary size: n_experiences={n_experiences}, features={features}, "
                              f"train_samples={train_samples}, test_samples={test_samples}")
        if not 0.0 <= label_noise < 0.5:
            raise ConfigError(f"label_noise must be in [0, 0.5), got {label_noise}")
        self.n_experiences, self.angle, self.features = n_experiences, angle, features
        self.train_samples, self.test_samples, self.label_noise = train_samples, test_samples, label_noise

    def _sample(self, n: int, normal: torch.Tensor, index: int, g: torch.Generator) -> TensorData:
        x = torch.randn(n, self.features, generator=g)  # (n, F)
        y = (x @ normal > 0).long()  # (n, F) @ (F,) -> (n,)
        flip = torch.rand(n, generator=g) < self.label_noise
        return _task(x, torch.where(flip, 1 - y, y), index)

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(self.seed)
        exps = []
        for i in range(self.n_experiences):
            theta = math.radians(i * self.angle)
            normal = torch.zeros(self.features)
            normal[0], normal[1] = math.cos(theta), math.sin(theta)
            train, test = self._sample(self.train_samples, normal, i, g), self._sample(self.test_samples, normal, i, g)
            exps.append(self.make_experience(i, (0, 1), train, test, f"normal at {i * self.angle:g} deg"))
        return exps
