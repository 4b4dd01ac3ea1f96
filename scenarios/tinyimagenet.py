"""Split Tiny ImageNet, reproducing Avalanche's classic ``SplitTinyImageNet`` (200 classes, 64×64).

Files: ``<dataset_root>/tiny-imagenet-200/`` as the official zip extracts (``wnids.txt``,
``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` and ``val/val_annotations.txt``; the official *val* split is
the test set). Read with Avalanche's own ``TinyImagenet`` data set (class ids in ``wnids.txt`` order); decoded once
into ``uint8`` tensors (about 1.4 GB for the full data set: use ``cache_dir`` to decode only once).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from scenarios._base import SplitImages
from scenarios._files import downloading, require_files

__all__ = ["SplitTinyImageNet"]


def _decode_all(dataset: Dataset, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        xs.append(x)
        ys.append(torch.as_tensor(y).long())
    return torch.cat(xs), torch.cat(ys)


class SplitTinyImageNet(SplitImages):
    """Tiny ImageNet split by class (Avalanche default: 10 experiences × 20 classes).

    Avalanche's default train transform is a horizontal flip plus normalisation with the CIFAR-10 statistics; both are
    kept. See :class:`scenarios._base.SplitImages` for the arguments.
    """

    DATASET = "Tiny ImageNet"
    EXPECTED = ("tiny-imagenet-200/wnids.txt", "tiny-imagenet-200/train", "tiny-imagenet-200/val/val_annotations.txt")
    N_CLASSES = 200
    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    FLIP = True

    def __init__(self, *, n_experiences: int = 10, **kwargs: Any) -> None:
        super().__init__(n_experiences=n_experiences, **kwargs)

    def load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        from avalanche.benchmarks.datasets import TinyImagenet
        from torchvision.transforms import PILToTensor

        root = self.root
        if not self.download:
            require_files(self.DATASET, root, list(self.EXPECTED), "Extract tiny-imagenet-200.zip "
                          "(http://cs231n.stanford.edu/tiny-imagenet-200.zip) there, or pass download: true.")
        with contextlib.redirect_stdout(io.StringIO()), downloading(self.DATASET, root):  # Avalanche prints progress
            train = TinyImagenet(root=root, train=True, transform=PILToTensor(), download=self.download)
            test = TinyImagenet(root=root, train=False, transform=PILToTensor(), download=self.download)
        return _decode_all(train), _decode_all(test)
