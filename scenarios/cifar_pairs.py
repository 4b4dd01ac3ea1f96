"""Split-CIFAR-100 animal vs non-animal pairs (IBCL protocol, docs/methods/ibcl.md): 10 binary domain-IL tasks.

Task ``t`` is animal class ``a_t`` (label 0) vs non-animal class ``b_t`` (label 1) in the order of :data:`PAIRS`.
Per class, ``val_per_class`` training images (seeded) are held out for validation and the rest train (400 / 100);
the official test images (100 per class) test. Inputs are normalised with mean = std = 0.5, as IBCL feeds them to its
frozen ResNet-18: run ``scripts/extract_features.py`` on this scenario to get the 512-d feature stream the IBCL
configs use (``configs/data/cifar100_pairs_features.yaml``). Files: as :class:`scenarios.cifar.SplitCIFAR100`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from clkit.errors import ConfigError, DataError
from scenarios._pairs import BinaryTask, BinaryTaskStream
from scenarios._transforms import ImageBatch
from scenarios.cifar import load_cifar

__all__ = ["PAIRS", "CIFAR100Pairs"]

# (animal, non-animal) CIFAR-100 fine-label ids (docs/methods/ibcl.md).
PAIRS: tuple[tuple[int, int], ...] = ((1, 8), (4, 13), (30, 41), (32, 48), (55, 58), (67, 69), (72, 81), (73, 85),
                                      (91, 89), (95, 90))


class CIFAR100Pairs(BinaryTaskStream):
    """The IBCL Split-CIFAR-100 stream.

    Args:
        pairs: (label-0 class, label-1 class) per task; default :data:`PAIRS`.
        val_per_class: Training images per class held out for validation.
    """

    DATASET = "CIFAR-100"
    EXPECTED = ("cifar-100-python/train", "cifar-100-python/test")

    def __init__(self, *, pairs: Optional[list[tuple[int, int]]] = None, val_per_class: int = 100,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        chosen = [tuple(int(c) for c in p) for p in (pairs if pairs is not None else PAIRS)]
        if any(len(p) != 2 or p[0] == p[1] or not all(0 <= c < 100 for c in p) for p in chosen):
            raise ConfigError(f"pairs={chosen}: every pair needs two different CIFAR-100 classes in 0..99")
        if val_per_class < 1:
            raise ConfigError(f"val_per_class must be >= 1, got {val_per_class}")
        self.pairs = [list(p) for p in chosen]
        self.val_per_class = val_per_class

    def transform(self) -> ImageBatch:
        return ImageBatch((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def _class_split(self, x: Tensor, y: Tensor, c: int) -> tuple[Tensor, Tensor]:
        rows = (y == c).nonzero().squeeze(1)
        if len(rows) <= self.val_per_class:
            raise DataError(f"CIFAR-100 class {c} has {len(rows)} training images; val_per_class="
                            f"{self.val_per_class} leaves none to train on")
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed * 1009 + c))]
        return rows[self.val_per_class:], rows[: self.val_per_class]

    def tasks(self) -> list[BinaryTask]:
        (xtr, ytr), (xte, yte), names = load_cifar(self.root, "cifar100", self.download, self.DATASET)
        out = []
        for a, b in self.pairs:
            (tr_a, va_a), (tr_b, va_b) = self._class_split(xtr, ytr, a), self._class_split(xtr, ytr, b)
            te_a, te_b = (yte == a).nonzero().squeeze(1), (yte == b).nonzero().squeeze(1)

            def part(ia: Tensor, ib: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
                return x[torch.cat([ia, ib])], torch.cat([torch.zeros(len(ia)), torch.ones(len(ib))]).long()

            out.append(BinaryTask(f"{names[a]} ({a}) vs {names[b]} ({b})", part(tr_a, tr_b, xtr),
                                  part(va_a, va_b, xtr), part(te_a, te_b, xte)))
        return out
