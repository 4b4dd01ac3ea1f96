"""Split CIFAR-10 / CIFAR-100, reproducing Avalanche's classic ``SplitCIFAR10`` / ``SplitCIFAR100``.

Files: the python version as torchvision extracts it, ``<dataset_root>/cifar-10-batches-py/`` or
``<dataset_root>/cifar-100-python/``. Read directly (torchvision's loader checks md5 sums); ``download: true``
fetches them with torchvision first. Images stay ``uint8``; Avalanche's default train transform (random crop 32 with
padding 4, horizontal flip, normalisation) runs per batch; ``augment: false`` leaves only the normalisation (the
GPM/TRGP/CUBER protocol).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from scenarios._base import SplitImages
from scenarios._files import downloading
from scenarios._readers import CIFAR_FILES, read_cifar

__all__ = ["SplitCIFAR10", "SplitCIFAR100", "load_cifar"]


def load_cifar(root: Path, which: str, download: bool,
               dataset: str) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], list[str]]:
    """``((x_train, y_train), (x_test, y_test), class_names)`` of ``which`` in {"cifar10", "cifar100"}; ``download``
    fetches missing files with torchvision (files already there are read as they are)."""
    folder, train_files, test_files, _ = CIFAR_FILES[which]
    meta = "batches.meta" if which == "cifar10" else "meta"
    present = all((root / folder / f).is_file() for f in (*train_files, *test_files, meta))
    if download and not present:
        from torchvision import datasets

        cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
        with downloading(dataset, root):
            for train in (True, False):
                cls(str(root), train=train, download=True)
    xtr, ytr, names = read_cifar(root, which, True, dataset)
    xte, yte, _ = read_cifar(root, which, False, dataset)
    return (xtr, ytr), (xte, yte), names


class SplitCIFAR10(SplitImages):
    """CIFAR-10 split by class (default 5 experiences × 2 classes); see :class:`scenarios._base.SplitImages`."""

    DATASET = "CIFAR-10"
    EXPECTED = ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch")
    N_CLASSES = 10
    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    CROP_PADDING, FLIP = 4, True

    def load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        train, test, self._class_names = load_cifar(self.root, "cifar10", self.download, self.DATASET)
        return train, test


class SplitCIFAR100(SplitImages):
    """CIFAR-100 split by class; see :class:`scenarios._base.SplitImages`.

    Protocols (configs/data/): GPM/TRGP/CUBER 10 tasks in label order, no augmentation, 5 % validation
    (``cifar100_10split.yaml``); SupSup/ExSSNeT 5 or 20 tasks, ``class_order = range(100)``, crop + flip
    (``splitcifar100_5.yaml``, ``splitcifar100_20.yaml``).
    """

    DATASET = "CIFAR-100"
    EXPECTED = ("cifar-100-python/train", "cifar-100-python/test")
    N_CLASSES = 100
    MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    CROP_PADDING, FLIP = 4, True

    def load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        train, test, self._class_names = load_cifar(self.root, "cifar100", self.download, self.DATASET)
        return train, test
