"""Shared machinery of the file-backed scenarios: local roots, the optional cache, class orders, class splits.

:class:`FileScenario` adds ``dataset_root``, ``download`` and ``cache_dir`` to an :class:`AvalancheScenario`.
:class:`SplitImages` is the common shape of SplitMNIST / SplitCIFAR / SplitTinyImageNet: images read into ``uint8``
tensors, split by class with Avalanche's ``nc_benchmark`` (class order computed here from ``seed`` so Avalanche
never reseeds the global generator), materialised by the adapter, then normalised (and augmented) per batch.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError, DataError
from scenarios._files import cache_key, load_cached, resolve_root, save_cached
from scenarios._transforms import ImageBatch
from scenarios.avalanche import AvalancheScenario, experiences_from_benchmark

__all__ = [
    "FileScenario",
    "SplitImages",
    "check_setting",
    "class_order_for",
    "relabel_local",
    "tensor_dataset",
    "with_transforms",
]

SplitSetting = Literal["task-il", "domain-il", "class-il"]


def tensor_dataset(x: Tensor, y: Tensor) -> TensorDataset:
    """A TensorDataset with ``targets``, the attribute Avalanche's generators read labels from."""
    ds = TensorDataset(x, y)
    ds.targets = y  # type: ignore[attr-defined]
    return ds


def experiences_argument(n_experiences: Optional[int], num_experiences: Optional[int], default: int, owner: str) -> int:
    """``n_experiences``, or the deprecated ``num_experiences`` (a warning), or ``default``; both given is an error."""
    if num_experiences is None:
        return default if n_experiences is None else int(n_experiences)
    if n_experiences is not None and int(n_experiences) != int(num_experiences):
        raise ConfigError(f"{owner}: give n_experiences only (num_experiences={num_experiences} is its deprecated "
                          f"alias and disagrees with n_experiences={n_experiences})")
    warnings.warn(f"{owner}(num_experiences=...) is deprecated; use n_experiences (the name every scenario takes)",
                  DeprecationWarning, stacklevel=3)
    return int(num_experiences)


def check_setting(setting: str, allowed: Sequence[str]) -> None:
    if setting not in allowed:
        raise ConfigError(f"setting={setting!r} is not one of {', '.join(repr(a) for a in allowed)}")


def class_order_for(n_classes: int, class_order: Optional[Sequence[int]], shuffle: bool, seed: int) -> list[int]:
    """The class order: explicit, a seeded shuffle, or label order.

    The shuffle equals Avalanche's ``nc_benchmark(seed=seed, shuffle=True)`` order (``torch.randperm`` after
    ``manual_seed(seed)``) without touching the global generator.
    """
    if class_order is not None:
        order = [int(c) for c in class_order]
        if sorted(order) != list(range(n_classes)):
            raise ConfigError(f"class_order={order} is not a permutation of the classes 0..{n_classes - 1}")
        return order
    if shuffle:
        return torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return list(range(n_classes))


def relabel_local(data: TensorData, classes: Sequence[int]) -> TensorData:
    """Labels mapped to their rank within ``classes`` (sorted), i.e. ``0..len(classes)-1``."""
    lookup = torch.full((int(max(max(classes), int(data.y.max()))) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(sorted(classes))] = torch.arange(len(classes))
    y = lookup[data.y]
    if bool((y < 0).any()):
        raise DataError(f"labels outside the experience's classes {list(classes)}")
    return TensorData(data.x, y, data.t, data.transform)


def map_parts(exp: Experience, fn: Callable[[TensorData], TensorData], **changes: Any) -> Experience:
    """The experience with ``fn`` applied to its train, val (when present) and test parts, plus ``changes``."""
    return dataclasses.replace(exp, train=fn(exp.train), val=None if exp.val is None else fn(exp.val),
                               test=fn(exp.test), **changes)


def with_transforms(exp: Experience, train: Optional[Any], evaluation: Optional[Any]) -> Experience:
    """The experience with ``train`` as its training-data transform and ``evaluation`` on val and test."""
    out = map_parts(exp, lambda d: TensorData(d.x, d.y, d.t, evaluation))
    return dataclasses.replace(out, train=TensorData(exp.train.x, exp.train.y, exp.train.t, train))


class FileScenario(AvalancheScenario):
    """A scenario read from local files.

    Args:
        dataset_root: Folder holding the data set's files (default: ``$CLKIT_DATA_ROOT``).
        download: Let torchvision / Avalanche download missing files into ``dataset_root`` (needs internet).
        cache_dir: Folder for a cache of the built experiences, keyed by the scenario's parameters; the next run
            with the same parameters loads it instead of decoding the files again. ``None`` = no cache.
        **kwargs: :class:`clkit.data.ContinualDataModule` arguments (``seed``, ``val_fraction``, ``batch_size``,
            ``task_order``, ``shuffle_tasks``, ...).
    """

    DATASET: ClassVar[str] = ""
    EXPECTED: ClassVar[tuple[str, ...]] = ()  # files under dataset_root, for the "no dataset_root" error
    DOWNLOADABLE: ClassVar[bool] = True  # whether ``download: true`` can fetch the files

    def __init__(self, *, dataset_root: Optional[str] = None, download: bool = False,
                 cache_dir: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset_root = dataset_root
        self.download = download
        self.cache_dir = cache_dir

    @property
    def root(self) -> Path:
        return resolve_root(self.dataset_root, self.DATASET or type(self).__name__, self.EXPECTED,
                            downloadable=self.DOWNLOADABLE)

    def build(self) -> list[Experience]:
        key = cache_key(self, root=str(self.root))  # before building: building may set attributes
        cached = load_cached(self.cache_dir, key)
        if cached is not None:
            return cached
        exps = self.build_experiences()
        save_cached(self.cache_dir, key, exps)
        return exps

    def build_experiences(self) -> list[Experience]:
        """Build the experiences from the files (natural order); default: through :meth:`benchmark`."""
        return super().build()


class SplitImages(FileScenario):
    """Images split by class into ``n_experiences`` experiences of equal size (Avalanche's ``nc_benchmark``).

    Args:
        n_experiences: Number of experiences; must divide the number of classes.
        setting: ``"task-il"`` (task ids; labels are ranks within the experience's classes), ``"class-il"``
            (global labels, one head) or ``"domain-il"`` (labels are ranks within the experience's classes, one
            shared head, no task ids; ``classes`` lists the shared label values and the name the original ids).
        class_order: Explicit order of all classes; default label order, or a seeded shuffle.
        shuffle_classes: Shuffle the class order with ``seed`` (Avalanche's default; same order as Avalanche's
            benchmark for the same seed).
        augment: Random crop / flip of training batches as in the Avalanche benchmark's default train transform;
            ``None`` = that benchmark's default (on for CIFAR and Tiny ImageNet, off for MNIST).
        mean: Per-channel normalisation mean (default: the Avalanche benchmark's).
        std: Per-channel normalisation std (default: the Avalanche benchmark's).
    """

    N_CLASSES: ClassVar[int] = 0
    MEAN: ClassVar[tuple[float, ...]] = (0.0,)
    STD: ClassVar[tuple[float, ...]] = (1.0,)
    CROP_PADDING: ClassVar[int] = 0  # the Avalanche default train transform's RandomCrop padding (0 = none)
    FLIP: ClassVar[bool] = False

    def __init__(self, *, n_experiences: int = 5, setting: SplitSetting = "task-il",
                 class_order: Optional[list[int]] = None, shuffle_classes: bool = False, augment: Optional[bool] = None,
                 mean: Optional[list[float]] = None, std: Optional[list[float]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_setting(setting, ("task-il", "domain-il", "class-il"))
        if n_experiences < 1 or self.N_CLASSES % n_experiences:
            valid = [d for d in range(1, self.N_CLASSES + 1) if self.N_CLASSES % d == 0]
            raise ConfigError(f"n_experiences={n_experiences} does not divide the {self.N_CLASSES} classes of "
                              f"{type(self).__name__}; valid values: {valid}")
        if class_order is not None and sorted(class_order) != list(range(self.N_CLASSES)):
            raise ConfigError(f"class_order={class_order} is not a permutation of the classes 0..{self.N_CLASSES - 1}")
        self.n_experiences, self.setting = n_experiences, setting
        self.task_ids_at_test = setting == "task-il"
        self.class_order, self.shuffle_classes = class_order, shuffle_classes
        self.augment = augment if augment is not None else (self.CROP_PADDING > 0 or self.FLIP)
        self.mean = list(mean) if mean is not None else list(self.MEAN)
        self.std = list(std) if std is not None else list(self.STD)

    def load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``((x_train, y_train), (x_test, y_test))`` with x uint8 (N, C, H, W)."""
        raise NotImplementedError

    def benchmark(self) -> Any:
        from avalanche.benchmarks import nc_benchmark

        (xtr, ytr), (xte, yte) = self.load()
        order = class_order_for(self.N_CLASSES, self.class_order, self.shuffle_classes, self.seed)
        return nc_benchmark(tensor_dataset(xtr, ytr), tensor_dataset(xte, yte), n_experiences=self.n_experiences,
                            task_labels=self.setting == "task-il", fixed_class_order=order, shuffle=False,
                            class_ids_from_zero_in_each_exp=False)

    def build_experiences(self) -> list[Experience]:
        exps = experiences_from_benchmark(self.benchmark(), self)
        out = []
        for e in exps:
            if self.setting == "domain-il":  # shared head: classes are the shared label values, the name keeps ids
                e = map_parts(e, partial(relabel_local, classes=e.classes), classes=tuple(range(len(e.classes))))
            out.append(with_transforms(e, self.train_transform(e.index), self.eval_transform()))
        return out

    def eval_transform(self) -> ImageBatch:
        return ImageBatch(self.mean, self.std)

    def train_transform(self, index: int) -> ImageBatch:
        """Normalisation, plus augmentation seeded per experience (so a resumed run draws the same crops)."""
        if not self.augment:
            return self.eval_transform()
        return ImageBatch(self.mean, self.std, crop_padding=self.CROP_PADDING, flip=self.FLIP,
                          seed=self.seed * 1_000_003 + index)
