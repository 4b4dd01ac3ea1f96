"""CelebA attribute tasks (IBCL protocol, docs/methods/ibcl.md): 15 binary domain-IL tasks on the same images.

Task ``t`` predicts attribute ``t`` (label 1 = present) in torchvision's attribute order; every task uses all images
of torchvision's splits (train 162,770 / valid 19,867 / test 19,962); the official *valid* split is the validation set.

Files (torchvision's layout, read directly because torchvision checks md5 sums): ``<dataset_root>/celeba/``
with ``list_attr_celeba.txt``, ``list_eval_partition.txt`` and ``img_align_celeba/`` (the aligned 178×218 JPEGs).

Images are decoded once into one ``uint8`` tensor per split that the 15 experiences share (no copies). Full-size
images would need about 23 GB, so the stream centre-crops and resizes to ``image_size`` (default 64: 2.5 GB). IBCL
uses full-size images through a frozen ResNet-18: ``scripts/extract_features.py`` streams them from disk through
:meth:`CelebAAttributes.input_splits` / :meth:`CelebAAttributes.experiences_from_inputs` without loading them all.
Avalanche has no CelebA benchmark, and its generators would copy the shared images per task, so this stream is
built directly from tensors.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError, DataError
from scenarios._base import FileScenario
from scenarios._files import downloading, require_files
from scenarios._transforms import ImageBatch

__all__ = ["ATTRIBUTES", "CelebAAttributes", "read_celeba_tables"]

ATTRIBUTES = ("5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
              "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
              "Double_Chin")
SPLITS = {"train": 0, "val": 1, "test": 2}


def read_celeba_tables(folder: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(file names, attribute names, attributes (N, 40) in {0, 1}, partition (N,) in {0, 1, 2})."""
    lines = (folder / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    rows = [ln.split() for ln in lines[2:] if ln.strip()]
    files = [r[0] for r in rows]
    attrs = (np.asarray([[int(v) for v in r[1:]] for r in rows], dtype=np.int64) + 1) // 2  # {-1, 1} -> {0, 1}
    part = {p[0]: int(p[1]) for p in (ln.split() for ln in (folder / "list_eval_partition.txt").read_text()
                                      .splitlines() if ln.strip())}
    missing = [f for f in files if f not in part]
    if missing:
        raise DataError(f"CelebA: {len(missing)} images of list_attr_celeba.txt are not in list_eval_partition.txt")
    return files, names, attrs, np.asarray([part[f] for f in files])


class _Images(Dataset):
    """Decoded uint8 (3, H, W) images, centre-cropped to a square and resized when ``size`` is given."""

    def __init__(self, paths: list[Path], size: Optional[int]) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as opened:
            img = opened.convert("RGB")
            if self.size is not None:
                w, h = img.size
                s = min(w, h)
                img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # (H, W, 3) -> (3, H, W)


class CelebAAttributes(FileScenario):
    """CelebA binary attribute tasks, domain-IL, one shared output.

    Args:
        attributes: Attribute names, one task each; default the first 15 (:data:`ATTRIBUTES`).
        image_size: Side of the centre-cropped, resized square images; ``None`` keeps 218×178 (huge).
        max_per_split: Keep only the first N images of each split (quick experiments).
        num_workers: DataLoader workers that decode the JPEGs.
    """

    DATASET = "CelebA"
    EXPECTED = ("celeba/list_attr_celeba.txt", "celeba/list_eval_partition.txt", "celeba/img_align_celeba/")
    setting = "domain-il"
    task_ids_at_test = False

    def __init__(self, *, attributes: Optional[list[str]] = None, image_size: Optional[int] = 64,
                 max_per_split: Optional[int] = None, num_workers: int = 0, val_fraction: float = 0.0,
                 **kwargs: Any) -> None:
        if val_fraction != 0.0:
            warnings.warn(f"CelebAAttributes uses the official valid split; val_fraction={val_fraction} is ignored",
                          stacklevel=2)
        super().__init__(val_fraction=0.0, **kwargs)
        if image_size is not None and image_size < 1:
            raise ConfigError(f"image_size must be >= 1 or null, got {image_size}")
        self.attributes = list(attributes) if attributes is not None else list(ATTRIBUTES)
        self.image_size, self.max_per_split, self.num_workers = image_size, max_per_split, num_workers

    @property
    def input_transform(self) -> ImageBatch:
        """Normalisation of uint8 images, as IBCL feeds them to its backbone (mean = std = 0.5)."""
        return ImageBatch((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def _tables(self) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
        if self.download:
            from torchvision.datasets import CelebA

            with downloading(self.DATASET, self.root):
                CelebA(str(self.root), split="all", download=True)
        require_files(self.DATASET, self.root, list(self.EXPECTED), "Put torchvision's CelebA files (aligned "
                      "images unzipped) there, or pass download: true (needs gdown).")
        files, names, attrs, part = read_celeba_tables(self.root / "celeba")
        unknown = [a for a in self.attributes if a not in names]
        if unknown:
            raise ConfigError(f"unknown CelebA attributes {unknown}; valid names: {names}")
        rows = {}
        for split, code in SPLITS.items():
            r = np.nonzero(part == code)[0]
            rows[split] = r[: self.max_per_split] if self.max_per_split is not None else r
        labels = attrs[:, [names.index(a) for a in self.attributes]]  # (N, T)
        return files, rows, labels

    def input_splits(self, image_size: Optional[int] = None) -> dict[str, Dataset]:
        """Per split, a data set of uint8 images in the order :meth:`experiences_from_inputs` expects."""
        files, rows, _ = self._tables()
        folder = self.root / "celeba" / "img_align_celeba"
        return {s: _Images([folder / files[i] for i in r], image_size) for s, r in rows.items()}

    def experiences_from_inputs(self, inputs: dict[str, Tensor], transform: Optional[Any] = None) -> list[Experience]:
        """The 15 experiences over per-split inputs (images or features) in :meth:`input_splits` order."""
        _, rows, labels = self._tables()
        exps = []
        for t, attr in enumerate(self.attributes):
            parts = {s: TensorData(inputs[s], torch.from_numpy(labels[rows[s], t]), torch.full((len(rows[s]),), t),
                                   transform) for s in SPLITS}
            exps.append(Experience(t, t, (0, 1), parts["train"], parts["val"], parts["test"], attr))
        return exps

    def build_experiences(self) -> list[Experience]:
        from torch.utils.data import DataLoader

        decoded = {}
        for split, ds in self.input_splits(self.image_size).items():
            chunks = list(DataLoader(ds, batch_size=256, num_workers=self.num_workers))
            decoded[split] = torch.cat(chunks) if chunks else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
        return self.experiences_from_inputs(decoded, self.input_transform)
