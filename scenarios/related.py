"""Domain-IL streams of real digit images where backward transfer is possible: later experiences are related.

On permuted MNIST every experience is an unrelated task, so an old task can only be forgotten or kept; no method can
improve it. These streams give every experience its **own disjoint share of the training images** (a later
experience brings new images of the same digits) seen through its own transformation, and the whole test set
through the same transformation:

- :class:`RotatedSteps`: experience ``i`` rotates its images by ``i * step`` degrees. With small steps, neighbouring
  experiences are nearly the same task, so what a later experience learns can improve an earlier one.
  ``train_sizes`` gives experiences different amounts of data, e.g. a data-scarce first experience followed by
  data-rich related ones (``configs/data/scarce_first.yaml``).
- :class:`MixedRelated`: related and unrelated experiences alternate: even experiences are rotations by
  ``(i // 2) * step`` degrees, odd ones fixed random pixel permutations. A method must improve the related tasks and
  keep the unrelated ones.

Images: scikit-learn's bundled 8x8 digits (``dataset: digits``, float in [0, 1], a seeded stratified
``test_fraction`` split), or MNIST in torchvision's layout under ``dataset_root`` (``dataset: mnist``, e.g. the
5,000-image subset of ``scripts/mnist_subset.py``; uint8, normalised per batch with MNIST's statistics). Rotations
are nearest-neighbour with zero fill (as :class:`scenarios.RotatedMNIST`). Built through Avalanche's
``tensors_benchmark`` and the clkit adapter.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from clkit.data import Experience
from clkit.errors import ConfigError
from scenarios._base import with_transforms
from scenarios._files import resolve_root
from scenarios._transforms import ImageBatch
from scenarios.avalanche import AvalancheScenario, experiences_from_benchmark

__all__ = ["MixedRelated", "RotatedSteps", "rotate_images"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
_MNIST_FILES = ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
                "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte")
Dataset = Literal["digits", "mnist"]


def rotate_images(x: Tensor, angle: float) -> Tensor:
    """Images ``x`` (N, C, H, W), any dtype, rotated by ``angle`` degrees (nearest neighbour, zero fill).

    An image of pixel numbers is rotated once and the batch gathered through it: nearest-neighbour rotation moves
    values without mixing them, so this equals rotating every image, in one indexing pass.
    """
    if angle == 0:
        return x
    from torchvision.transforms.functional import InterpolationMode, rotate

    n, c, h, w = x.shape
    numbers = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)
    source = rotate(numbers, float(angle), interpolation=InterpolationMode.NEAREST, fill=[0.0]).long().view(-1)
    padded = torch.cat([x.new_zeros(n, c, 1), x.reshape(n, c, h * w)], dim=2)  # (N, C, 1 + H*W); 0 = the fill
    return padded[:, :, source].view_as(x)


class _RelatedImages(AvalancheScenario):
    """Digit images in disjoint per-experience training shares, one transformation per experience.

    Args:
        dataset: ``"digits"`` (scikit-learn, offline) or ``"mnist"`` (files under ``dataset_root``).
        n_experiences: Number of experiences.
        step: Rotation step in degrees.
        train_sizes: Training images per experience (before the validation split), drawn without overlap from a
            seeded shuffle of the training set; default: the training set split evenly.
        dataset_root: MNIST folder (``MNIST/raw/...``); default ``$CLKIT_DATA_ROOT``.
        download: Let torchvision fetch missing MNIST files (needs internet).
        test_fraction: Digits only: the fraction of each class held out for testing.
        **kwargs: :class:`clkit.data.ContinualDataModule` arguments (``seed``, ``val_fraction``, ``batch_size``, ...).
    """

    setting = "domain-il"
    task_ids_at_test = False

    def __init__(self, *, dataset: Dataset = "digits", n_experiences: int = 5, step: float = 10.0,
                 train_sizes: Optional[list[int]] = None, dataset_root: Optional[str] = None, download: bool = False,
                 test_fraction: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dataset not in ("digits", "mnist"):
            raise ConfigError(f"dataset={dataset!r} is not one of 'digits', 'mnist'")
        if n_experiences < 1:
            raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
        if train_sizes is not None and (len(train_sizes) != n_experiences or min(train_sizes) < 1):
            raise ConfigError(f"train_sizes={train_sizes} needs {n_experiences} positive sizes (one per experience)")
        self.dataset, self.n_experiences, self.step = dataset, n_experiences, float(step)
        self.train_sizes = None if train_sizes is None else [int(s) for s in train_sizes]
        self.dataset_root, self.download, self.test_fraction = dataset_root, download, test_fraction

    # -- what subclasses define --------------------------------------------------------------------------------------
    def transformation(self, index: int) -> tuple[str, float]:
        """``("rotation", degrees)`` or ``("permutation", k)`` (the ``k``-th seeded pixel permutation)."""
        raise NotImplementedError

    # -- building ----------------------------------------------------------------------------------------------------
    def load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``((x_train, y_train), (x_test, y_test))``, x (N, 1, H, W): float digits or uint8 MNIST."""
        if self.dataset == "digits":
            from scenarios.digits import load_digits_tensors

            return load_digits_tensors(self.test_fraction, self.seed)
        from scenarios.mnist import load_mnist

        root = resolve_root(self.dataset_root, "MNIST", _MNIST_FILES, downloadable=True)
        return load_mnist(root, self.download)

    def shares(self, labels: Tensor) -> list[Tensor]:
        """Disjoint training-image indices per experience: a seeded shuffle, interleaved by class so that every
        share holds the classes in proportion, cut into ``train_sizes``."""
        n_train = len(labels)
        sizes = self.train_sizes or [n_train // self.n_experiences] * self.n_experiences
        if sum(sizes) > n_train:
            raise ConfigError(f"train_sizes={sizes} ask for {sum(sizes)} training images; the {self.dataset} training "
                              f"set has {n_train}")
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n_train, generator=g)
        rank = torch.empty(n_train)  # position of each image among the shuffled images of its class, in [0, 1)
        for c in labels.unique():
            rows = order[labels[order] == c]
            rank[rows] = (torch.arange(len(rows)) + torch.rand(len(rows), generator=g)) / len(rows)
        order = order[torch.argsort(rank[order], stable=True)]
        return list(order[: sum(sizes)].split(sizes))

    def permutation(self, k: int, pixels: int) -> Tensor:
        rng = np.random.RandomState(self.seed + 1000 * (k + 1))
        return torch.from_numpy(rng.permutation(pixels)).long()

    def apply(self, x: Tensor, index: int) -> Tensor:
        kind, value = self.transformation(index)
        if kind == "rotation":
            return rotate_images(x, value)
        return x.flatten(1)[:, self.permutation(int(value), x[0].numel())].view_as(x)

    def benchmark(self) -> Any:
        from avalanche.benchmarks import tensors_benchmark

        (xtr, ytr), (xte, yte) = self.load()
        train = [(self.apply(xtr[rows], i), ytr[rows]) for i, rows in enumerate(self.shares(ytr))]
        test = [(self.apply(xte, i), yte) for i in range(self.n_experiences)]
        return tensors_benchmark(train, test, task_labels=[0] * self.n_experiences)

    def experience_names(self) -> list[str]:
        names = []
        for i in range(self.n_experiences):
            kind, value = self.transformation(i)
            names.append(f"rotation {value:g}" if kind == "rotation" else f"permutation {int(value)}")
        return names

    def build(self) -> list[Experience]:
        exps = experiences_from_benchmark(self.benchmark(), self, self.experience_names())
        if self.dataset == "digits":
            return exps
        norm = ImageBatch(MNIST_MEAN, MNIST_STD)
        return [with_transforms(e, norm, norm) for e in exps]


class RotatedSteps(_RelatedImages):
    """Experience ``i`` sees its own share of the training images rotated by ``i * step`` degrees (domain-IL).

    See the module docstring; :class:`_RelatedImages` lists the arguments (``dataset``, ``n_experiences``, ``step``,
    ``train_sizes``, ``dataset_root``, ``download``, ``test_fraction``).
    """

    def transformation(self, index: int) -> tuple[str, float]:
        return ("rotation", index * self.step)


class MixedRelated(_RelatedImages):
    """Related and unrelated experiences alternate (domain-IL): even ``i`` rotates by ``(i // 2) * step`` degrees,
    odd ``i`` applies its own fixed random pixel permutation; each with its own share of the training images.

    See :class:`RotatedSteps` for the arguments.
    """

    def transformation(self, index: int) -> tuple[str, float]:
        if index % 2 == 0:
            return ("rotation", (index // 2) * self.step)
        return ("permutation", float(index // 2))
