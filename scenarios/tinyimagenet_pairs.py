"""Tiny ImageNet animal vs non-animal pairs (IBCL protocol, docs/methods/ibcl.md): 10 binary domain-IL tasks.

Task ``t`` is animal class ``a_t`` (label 0) vs non-animal class ``b_t`` (label 1), both named by WordNet id in
:data:`PAIRS`. The official code indexes the classes in directory-listing order, which depends on the file system,
so its pairs are unknown; these are clkit's choice (ten animals against ten vehicles, like the CIFAR-100 pairs). Per
class, ``val_per_class`` (50) of the 500 training images (seeded) validate and the rest (450) train; the official
*val* split (50 per class) tests. Inputs are normalised with the ImageNet mean/std at 64×64, as IBCL feeds them to
its frozen ResNet-18: run ``scripts/extract_features.py`` on this scenario for the 512-d feature stream
(``configs/data/tinyimagenet_pairs_features.yaml``). Files: ``<dataset_root>/tiny-imagenet-200/`` as
:class:`scenarios.tinyimagenet.SplitTinyImageNet`; only the 20 classes' images are decoded.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from clkit.errors import ConfigError, DataError
from scenarios._files import downloading, require_files
from scenarios._pairs import BinaryTask, BinaryTaskStream
from scenarios._transforms import ImageBatch
from scenarios.tinyimagenet import SplitTinyImageNet

__all__ = ["PAIRS", "TinyImageNetPairs"]

# (animal, non-animal) WordNet ids of Tiny ImageNet classes.
PAIRS: tuple[tuple[str, str], ...] = (
    ("n01443537", "n02814533"),  # goldfish vs beach wagon
    ("n01641577", "n02917067"),  # bullfrog vs bullet train
    ("n01698640", "n03100240"),  # American alligator vs convertible
    ("n01742172", "n03444034"),  # boa constrictor vs go-kart
    ("n01882714", "n03670208"),  # koala vs limousine
    ("n01910747", "n03796401"),  # jellyfish vs moving van
    ("n02056570", "n04146614"),  # king penguin vs school bus
    ("n02099601", "n04285008"),  # golden retriever vs sports car
    ("n02123045", "n04465501"),  # tabby cat vs tractor
    ("n02129165", "n04487081"),  # lion vs trolleybus
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _decode(paths: list[Path]) -> Tensor:
    """JPEG files -> ``uint8`` (N, 3, H, W)."""
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as img:
            arrays.append(np.asarray(img.convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)


def _words(base: Path) -> dict[str, str]:
    """WordNet id -> first class name from the zip's ``words.txt`` (empty when the file is absent)."""
    path = base / "words.txt"
    if not path.is_file():
        return {}
    pairs = (line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)
    return {wnid: text.split(",")[0].strip() for wnid, text in pairs}


class TinyImageNetPairs(BinaryTaskStream):
    """The IBCL Tiny ImageNet stream.

    Args:
        pairs: (label-0 wnid, label-1 wnid) per task; default :data:`PAIRS`.
        val_per_class: Training images per class held out for validation.
    """

    DATASET = "Tiny ImageNet"
    EXPECTED = SplitTinyImageNet.EXPECTED

    def __init__(self, *, pairs: Optional[list[tuple[str, str]]] = None, val_per_class: int = 50,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        chosen = [tuple(str(c) for c in p) for p in (pairs if pairs is not None else PAIRS)]
        if any(len(p) != 2 or p[0] == p[1] for p in chosen):
            raise ConfigError(f"pairs={chosen}: every pair needs two different WordNet ids")
        if val_per_class < 1:
            raise ConfigError(f"val_per_class must be >= 1, got {val_per_class}")
        self.pairs = [list(p) for p in chosen]
        self.val_per_class = val_per_class

    def transform(self) -> ImageBatch:
        return ImageBatch(IMAGENET_MEAN, IMAGENET_STD)

    def _folder(self) -> Path:
        root = self.root
        if self.download and not all((root / p).exists() for p in self.EXPECTED):
            from avalanche.benchmarks.datasets import TinyImagenet

            with contextlib.redirect_stdout(io.StringIO()), downloading(self.DATASET, root):
                TinyImagenet(root=root, train=True, download=True)  # fetches and extracts the official zip
        require_files(self.DATASET, root, list(self.EXPECTED), "Extract tiny-imagenet-200.zip "
                      "(http://cs231n.stanford.edu/tiny-imagenet-200.zip) there, or pass download: true.")
        base = root / "tiny-imagenet-200"
        known = set((base / "wnids.txt").read_text().split())
        missing = sorted({c for p in self.pairs for c in p} - known)
        if missing:
            raise ConfigError(f"pairs name WordNet ids that are not Tiny ImageNet classes in {base / 'wnids.txt'}: "
                              f"{missing}")
        return base

    def _train_val(self, base: Path, wnid: str) -> tuple[Tensor, Tensor]:
        files = sorted((base / "train" / wnid / "images").glob("*.JPEG"))
        if len(files) <= self.val_per_class:
            raise DataError(f"Tiny ImageNet class {wnid} has {len(files)} training images; val_per_class="
                            f"{self.val_per_class} leaves none to train on")
        x = _decode(files)
        seed = self.seed * 1009 + int(wnid[1:]) % 1_000_003
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        return x[rows[self.val_per_class:]], x[rows[: self.val_per_class]]

    def tasks(self) -> list[BinaryTask]:
        base = self._folder()
        test_files: dict[str, list[Path]] = {}
        for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                test_files.setdefault(parts[1], []).append(base / "val" / "images" / parts[0])
        empty = sorted(c for p in self.pairs for c in p if not test_files.get(c))
        if empty:
            raise DataError(f"Tiny ImageNet: {base / 'val' / 'val_annotations.txt'} lists no test image of {empty}")
        words = _words(base)
        out = []
        for a, b in self.pairs:
            (tr_a, va_a), (tr_b, va_b) = self._train_val(base, a), self._train_val(base, b)
            te_a, te_b = _decode(test_files[a]), _decode(test_files[b])

            def part(xa: Tensor, xb: Tensor) -> tuple[Tensor, Tensor]:
                return torch.cat([xa, xb]), torch.cat([torch.zeros(len(xa)), torch.ones(len(xb))]).long()

            name = " vs ".join(f"{words[c]} ({c})" if c in words else c for c in (a, b))
            out.append(BinaryTask(name, part(tr_a, tr_b), part(va_a, va_b), part(te_a, te_b)))
        return out
