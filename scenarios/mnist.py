"""MNIST streams, reproducing Avalanche's classic ``SplitMNIST``, ``PermutedMNIST`` and ``RotatedMNIST``.

Files: torchvision's layout, ``<dataset_root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (plain or
``.gz``). Images are kept as ``uint8`` (N, 1, 28, 28) and normalised per batch with Avalanche's MNIST statistics
(0.1307, 0.3081). Permutations and rotations are drawn exactly as Avalanche draws them
(``numpy.random.RandomState(seed)``), but applied once to whole tensors instead of per item.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError
from scenarios._base import FileScenario, SplitImages, check_setting, map_parts, tensor_dataset, with_transforms
from scenarios._readers import read_mnist
from scenarios._transforms import ImageBatch
from scenarios.avalanche import experiences_from_benchmark

__all__ = ["PermutedMNIST", "RotatedMNIST", "SplitMNIST", "load_mnist"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
_EXPECTED = ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
             "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte")


def load_mnist(root: Path, download: bool, folder: str = "MNIST",
               dataset: str = "MNIST") -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """MNIST-format train and test sets under ``root/<folder>/raw``; ``download`` fetches them with torchvision."""
    if download:
        from torchvision import datasets

        cls = datasets.FashionMNIST if folder == "FashionMNIST" else datasets.MNIST
        for train in (True, False):
            cls(str(root), train=train, download=True)
    return read_mnist(root, folder, True, dataset), read_mnist(root, folder, False, dataset)


class SplitMNIST(SplitImages):
    """MNIST split by class, as Avalanche's ``SplitMNIST`` (default 5 experiences × 2 classes, task-IL).

    No augmentation (Avalanche's default transform only normalises). See :class:`scenarios._base.SplitImages`
    for the arguments.
    """

    DATASET = "MNIST"
    EXPECTED = _EXPECTED
    N_CLASSES = 10
    MEAN, STD = MNIST_MEAN, MNIST_STD

    def load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        return load_mnist(self.root, self.download)


class _TransformedMNIST(FileScenario):
    """MNIST seen through one fixed transformation per experience (domain-IL by default)."""

    DATASET = "MNIST"
    EXPECTED = _EXPECTED
    KIND: ClassVar[str] = ""

    def __init__(self, *, n_experiences: int = 10, setting: Literal["domain-il", "task-il"] = "domain-il",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_setting(setting, ("domain-il", "task-il"))
        if n_experiences < 1:
            raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
        self.n_experiences, self.setting = n_experiences, setting
        self.task_ids_at_test = setting == "task-il"

    def transform_images(self, x: Tensor, index: int) -> Tensor:
        """Experience ``index``'s transformation of uint8 images (N, 1, 28, 28)."""
        raise NotImplementedError

    def _transformed(self, data: TensorData, index: int) -> TensorData:
        return TensorData(self.transform_images(data.x, index), data.y, data.t)

    def benchmark(self) -> Any:
        from avalanche.benchmarks import nc_benchmark

        (xtr, ytr), (xte, yte) = load_mnist(self.root, self.download)
        train, test = tensor_dataset(xtr, ytr), tensor_dataset(xte, yte)
        # Avalanche's own construction: one dataset per experience, labels 0..9 in every experience.
        return nc_benchmark([train] * self.n_experiences, [test] * self.n_experiences,
                            n_experiences=self.n_experiences, task_labels=self.setting == "task-il", shuffle=False,
                            one_dataset_per_exp=True, class_ids_from_zero_in_each_exp=True)

    def build_experiences(self) -> list[Experience]:
        names = [f"{self.KIND} {i}" for i in range(self.n_experiences)]
        exps = experiences_from_benchmark(self.benchmark(), self, names)
        norm = ImageBatch(MNIST_MEAN, MNIST_STD)
        out = []
        for e in exps:
            e = map_parts(e, partial(self._transformed, index=e.index))
            out.append(with_transforms(e, norm, norm))
        return out


class PermutedMNIST(_TransformedMNIST):
    """Permuted MNIST as Avalanche builds it: experience ``i`` sees every image through its own pixel permutation.

    Every experience is permuted, the first included; the permutations are
    ``numpy.random.RandomState(seed).permutation(784)`` drawn in order, exactly as Avalanche's ``PermutedMNIST``.

    Args:
        n_experiences: Number of permutations (GPM/TRGP/CUBER: 10).
        setting: ``"domain-il"`` (one shared 10-way head, no task ids; the GPM protocol) or ``"task-il"``.
    """

    KIND = "permutation"

    def permutations(self) -> list[Tensor]:
        rng = np.random.RandomState(self.seed)
        return [torch.from_numpy(rng.permutation(784)).long() for _ in range(self.n_experiences)]

    def transform_images(self, x: Tensor, index: int) -> Tensor:
        if not hasattr(self, "_perms"):
            self._perms = self.permutations()
        return x.flatten(1)[:, self._perms[index]].view_as(x)  # (N, 784) -> (N, 1, 28, 28)


class RotatedMNIST(_TransformedMNIST):
    """Rotated MNIST as Avalanche builds it: experience ``i`` sees every image rotated by its own angle.

    Angles come from ``rotations_list`` or ``numpy.random.RandomState(seed).randint(-180, 181)`` drawn in order;
    rotation is nearest-neighbour with zero fill, as ``RandomRotation(degrees=(a, a))`` in Avalanche.

    Args:
        rotations_list: Explicit angle in degrees (-180..180) per experience.
    """

    KIND = "rotation"

    def __init__(self, *, rotations_list: Optional[list[int]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if rotations_list is not None:
            if len(rotations_list) != self.n_experiences:
                raise ConfigError(f"rotations_list has {len(rotations_list)} angles for n_experiences="
                                  f"{self.n_experiences}")
            if any(not -180 <= a <= 180 for a in rotations_list):
                raise ConfigError(f"rotations_list={rotations_list}: every angle must be in [-180, 180]")
        self.rotations_list = rotations_list

    def angles(self) -> list[int]:
        if self.rotations_list is not None:
            return [int(a) for a in self.rotations_list]
        rng = np.random.RandomState(self.seed)
        return [int(rng.randint(-180, 181)) for _ in range(self.n_experiences)]

    def transform_images(self, x: Tensor, index: int) -> Tensor:
        from torchvision.transforms.functional import InterpolationMode, rotate

        return rotate(x, float(self.angles()[index]), interpolation=InterpolationMode.NEAREST, fill=[0.0])
