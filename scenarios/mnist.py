"""MNIST streams, reproducing Avalanche's classic ``SplitMNIST``, ``PermutedMNIST`` and ``RotatedMNIST``.

Files: torchvision's layout, ``<dataset_root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (plain or
``.gz``). Images are kept as ``uint8`` (N, 1, 28, 28) and normalised per batch with Avalanche's MNIST statistics
(0.1307, 0.3081). Permutations and rotations are drawn exactly as Avalanche draws them
(``numpy.random.RandomState(seed)``), but applied once to whole tensors instead of per item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError, DataError
from scenarios._base import FileScenario, SplitImages, check_setting, with_transforms
from scenarios._files import downloading
from scenarios._readers import MNIST_FILES, read_mnist
from scenarios._transforms import ImageBatch
from scenarios.avalanche import materialise

__all__ = ["PermutedMNIST", "RotatedMNIST", "SplitMNIST", "load_mnist"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
_EXPECTED = ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
             "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte")


def load_mnist(root: Path, download: bool, folder: str = "MNIST",
               dataset: str = "MNIST") -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """MNIST-format train and test sets under ``root/<folder>/raw``; ``download`` fetches missing files with
    torchvision (files already there are read as they are: a damaged one is reported, not re-fetched)."""
    raw = root / folder / "raw"
    present = all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for pair in MNIST_FILES.values() for n in pair)
    if download and not present:
        from torchvision import datasets

        cls = datasets.FashionMNIST if folder == "FashionMNIST" else datasets.MNIST
        with downloading(dataset, root):
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

    def estimated_bytes(self) -> Optional[int]:
        """``n_experiences`` transformed copies of the images (their files' size, or full MNIST's 70,000)."""
        try:
            files = [self.root / name for name in ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-images-idx3-ubyte")]
            per_copy = sum(f.stat().st_size for f in files) if all(f.is_file() for f in files) else 70_000 * 784
        except DataError:  # no dataset_root: the build reports it
            return None
        return self.n_experiences * per_copy

    def benchmark(self) -> Any:
        from avalanche.benchmarks import tensors_benchmark

        (xtr, ytr), (xte, yte) = load_mnist(self.root, self.download)
        # Avalanche's classic builds this with nc_benchmark(one_dataset_per_exp=True, class_ids_from_zero_in_each_exp=
        # True), which gives the same experiences (labels 0..9 each) but spends a minute remapping 700k labels one by
        # one; tensors_benchmark makes the same stream in seconds.
        tasks = list(range(self.n_experiences)) if self.setting == "task-il" else [0] * self.n_experiences
        return tensors_benchmark([(xtr, ytr)] * self.n_experiences, [(xte, yte)] * self.n_experiences,
                                 task_labels=tasks)

    def build_experiences(self) -> list[Experience]:
        bench = self.benchmark()
        # Every experience of Avalanche's benchmark holds the same MNIST images before its own transformation: they
        # are read through Avalanche once (per-item reading of all 10 x 70k samples would take a minute).
        train0, test0 = materialise(bench.train_stream[0].dataset, 0), materialise(bench.test_stream[0].dataset, 0)
        norm = ImageBatch(MNIST_MEAN, MNIST_STD)
        out = []
        for i, (tr, te) in enumerate(zip(bench.train_stream, bench.test_stream)):
            if (len(tr.dataset), len(te.dataset)) != (len(train0), len(test0)):
                raise DataError(f"{type(self).__name__}: experience {i} does not hold the same images as experience 0")
            train = TensorData(self.transform_images(train0.x, i), train0.y, torch.full_like(train0.y, i))
            test = TensorData(self.transform_images(test0.x, i), test0.y, torch.full_like(test0.y, i))
            e = self.make_experience(i, sorted(tr.classes_in_this_experience), train, test, f"{self.KIND} {i}")
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

        h, w = x.shape[-2:]
        # Rotate an image of pixel numbers once (nearest neighbour moves values without mixing them), then gather:
        # the same result as rotating every image, in one indexing pass. Number 0 marks the zero fill.
        numbers = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)
        source = rotate(numbers, float(self.angles()[index]), interpolation=InterpolationMode.NEAREST, fill=[0.0])
        padded = torch.cat([x.new_zeros(len(x), 1), x.flatten(1)], dim=1)  # (N, 1 + H*W); column 0 = fill
        return padded[:, source.long().view(-1)].view_as(x)  # (N, H*W) -> (N, 1, H, W)
