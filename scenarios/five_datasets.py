"""5-Datasets (GPM/TRGP/CUBER protocol): CIFAR-10, MNIST, SVHN, FashionMNIST, notMNIST as 5 tasks of 10 classes.

Avalanche has no such benchmark; this one follows the GPM code (``dataloader/five_datasets.py``): tasks in that order,
grayscale images zero-padded to 32×32 and repeated to 3 channels, each data set normalised with its own statistics,
no augmentation, task-IL. The five data sets are read from local files and turned into a stream with Avalanche's
``tensors_benchmark``.

Files under ``dataset_root`` (each can be moved elsewhere with ``roots: {name: folder}``):

- ``cifar10``: ``cifar-10-batches-py/`` (python version);
- ``mnist``: ``MNIST/raw/`` (IDX files); ``fashion_mnist``: ``FashionMNIST/raw/`` (IDX files);
- ``svhn``: ``train_32x32.mat`` and ``test_32x32.mat``;
- ``notmnist`` (default folder ``<dataset_root>/notMNIST``, never downloaded): either the GPM pickles
  ``notmnist_train.pkl`` / ``notmnist_test.pkl`` (``features`` uint8 (N, 1, H, W), ``labels``), or image folders
  ``train/A..J`` and ``test/A..J``, or only ``A..J`` (e.g. ``notMNIST_small``), split with ``notmnist_test_fraction``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from clkit.data import Experience
from clkit.errors import ConfigError, DataError
from scenarios._base import FileScenario, with_transforms
from scenarios._files import downloading
from scenarios._readers import read_pickle, read_svhn
from scenarios._transforms import ImageBatch
from scenarios.avalanche import experiences_from_benchmark
from scenarios.cifar import load_cifar
from scenarios.mnist import load_mnist

__all__ = ["FiveDatasets", "load_notmnist", "to_rgb32"]

Pair = tuple[Tensor, Tensor]
NAMES = ("cifar10", "mnist", "svhn", "fashion_mnist", "notmnist")
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {  # from the GPM code, padding included
    "cifar10": (tuple(v / 255 for v in (125.3, 123.0, 113.9)), tuple(v / 255 for v in (63.0, 62.1, 66.7))),
    "mnist": ((0.1,), (0.2752,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)),
    "fashion_mnist": ((0.2190,), (0.3318,)),
    "notmnist": ((0.4254,), (0.4501,)),
}
LETTERS = "ABCDEFGHIJ"


def to_rgb32(x: Tensor) -> Tensor:
    """uint8 (N, 1, H, W) with H, W <= 32 -> (N, 3, 32, 32): zero-padded around, channel repeated."""
    h, w = x.shape[-2:]
    top, left = (32 - h) // 2, (32 - w) // 2
    x = torch.nn.functional.pad(x, (left, 32 - w - left, top, 32 - h - top))  # (N, 1, 32, 32)
    return x.expand(-1, 3, -1, -1).contiguous()  # (N, 3, 32, 32)


def _letter_folders(folder: Path) -> Pair:
    from PIL import Image, UnidentifiedImageError

    xs, ys, bad = [], [], 0
    for label, letter in enumerate(LETTERS):
        for path in sorted((folder / letter).glob("*")):
            try:
                with Image.open(path) as img:
                    xs.append(np.asarray(img.convert("L"), dtype=np.uint8))
                    ys.append(label)
            except (UnidentifiedImageError, OSError):
                bad += 1  # notMNIST ships a few unreadable files
    if bad:
        warnings.warn(f"notMNIST: skipped {bad} unreadable files in {folder}", stacklevel=3)
    if not xs:
        raise DataError(f"notMNIST: no images in {folder}/{{{','.join(LETTERS)}}}")
    return torch.from_numpy(np.stack(xs)).unsqueeze(1), torch.tensor(ys)


def _stratified_split(x: Tensor, y: Tensor, test_fraction: float, seed: int) -> tuple[Pair, Pair]:
    g = torch.Generator().manual_seed(seed)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique().tolist():
        rows = (y == c).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=g)]
        is_test[rows[: round(test_fraction * len(rows))]] = True
    return (x[~is_test], y[~is_test]), (x[is_test], y[is_test])


def load_notmnist(folder: Path, test_fraction: float, seed: int) -> tuple[Pair, Pair]:
    """notMNIST from one of the three layouts described in the module docstring; x uint8 (N, 1, H, W)."""
    if (folder / "notmnist_train.pkl").is_file() and (folder / "notmnist_test.pkl").is_file():
        out = []
        for split in ("train", "test"):
            d = read_pickle(folder / f"notmnist_{split}.pkl")
            feats = np.asarray(d.get(b"features", d.get("features")), dtype=np.uint8)
            labels = np.asarray(d.get(b"labels", d.get("labels")), dtype=np.int64)
            x = torch.from_numpy(feats.reshape(len(feats), 1, *feats.shape[-2:]).copy())
            out.append((x, torch.from_numpy(labels)))
        return out[0], out[1]
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return _letter_folders(folder / "train"), _letter_folders(folder / "test")
    if any((folder / letter).is_dir() for letter in LETTERS):
        return _stratified_split(*_letter_folders(folder), test_fraction, seed)
    raise DataError(f"notMNIST not found in {folder}: expected 'notmnist_train.pkl' and 'notmnist_test.pkl' (the GPM "
                    "pickles), or folders 'train/A..J' and 'test/A..J', or folders 'A..J' of letter images "
                    "(e.g. notMNIST_small). notMNIST is never downloaded; set roots: {notmnist: <folder>}.")


class FiveDatasets(FileScenario):
    """5-Datasets, task-IL: experience ``i`` is data set ``NAMES[i]`` with its 10 classes (labels 0..9).

    Args:
        roots: Folder per data set name (``cifar10``, ``mnist``, ``svhn``, ``fashion_mnist``, ``notmnist``) when it
            is not under ``dataset_root``.
        notmnist_test_fraction: Test share of each letter when notMNIST comes as one folder per letter.
    """

    DATASET = "5-Datasets"
    EXPECTED = ("cifar-10-batches-py/", "MNIST/raw/", "train_32x32.mat", "FashionMNIST/raw/", "notMNIST/")
    setting = "task-il"
    task_ids_at_test = True

    def __init__(self, *, roots: Optional[dict[str, str]] = None, notmnist_test_fraction: float = 0.2,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(roots or {}) - set(NAMES))
        if unknown:
            raise ConfigError(f"roots has unknown data sets {unknown}; valid names: {list(NAMES)}")
        if not 0.0 < notmnist_test_fraction < 1.0:
            raise ConfigError(f"notmnist_test_fraction must be in (0, 1), got {notmnist_test_fraction}")
        self.roots = dict(roots or {})
        self.notmnist_test_fraction = notmnist_test_fraction

    def root_of(self, name: str) -> Path:
        if name in self.roots:
            return Path(self.roots[name]).expanduser().resolve()
        return self.root / "notMNIST" if name == "notmnist" else self.root

    def load(self, name: str) -> tuple[Pair, Pair]:
        """Train and test sets of one data set as uint8 (N, 3, 32, 32) images and labels."""
        root = self.root_of(name)
        if name == "cifar10":
            train, test, _ = load_cifar(root, "cifar10", self.download, "CIFAR-10 (5-Datasets)")
            return train, test
        if name == "svhn":
            if self.download and not all((root / f"{s}_32x32.mat").is_file() for s in ("train", "test")):
                from torchvision.datasets import SVHN

                with downloading("SVHN (5-Datasets)", root):
                    for split in ("train", "test"):
                        SVHN(str(root), split=split, download=True)
            return read_svhn(root, True, "SVHN (5-Datasets)"), read_svhn(root, False, "SVHN (5-Datasets)")
        if name == "notmnist":
            train, test = load_notmnist(root, self.notmnist_test_fraction, self.seed)
        else:
            folder = "MNIST" if name == "mnist" else "FashionMNIST"
            train, test = load_mnist(root, self.download, folder, f"{folder} (5-Datasets)")
        return (to_rgb32(train[0]), train[1]), (to_rgb32(test[0]), test[1])

    def benchmark(self) -> Any:
        from avalanche.benchmarks import tensors_benchmark

        parts = [self.load(name) for name in NAMES]
        return tensors_benchmark([p[0] for p in parts], [p[1] for p in parts], task_labels=list(range(len(NAMES))))

    def build_experiences(self) -> list[Experience]:
        exps = experiences_from_benchmark(self.benchmark(), self, list(NAMES))
        return [with_transforms(e, ImageBatch(*NORMS[e.name]), ImageBatch(*NORMS[e.name])) for e in exps]
