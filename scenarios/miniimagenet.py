"""Split miniImageNet (GPM/TRGP/CUBER protocol): 100 classes in 20 tasks of 5, 84×84, from user-supplied pickles.

Avalanche's miniImageNet needs the full ImageNet; the GPM/TRGP papers use pre-built pickles instead:
``<dataset_root>/miniimagenet/train.pkl`` and ``test.pkl``, each a dict with ``images`` (uint8 (N, 84, 84, 3)) and
``labels`` (N,) in 0..99 (500 train / 100 test images per class). Never downloaded.

Tasks follow the TRGP code: ``numpy.random.RandomState(seed).permutation(100)`` split into ``n_experiences``
consecutive groups; task-IL; ImageNet mean/std; no augmentation. The stream is built with Avalanche's
``nc_benchmark`` with that class order. Labels within a task are ranked by class id (the TRGP code ranks them by
position in the permutation; with a freshly initialised head per task the two are equivalent).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from clkit.data import Experience
from clkit.errors import ConfigError, DataError
from scenarios._base import FileScenario, check_setting, tensor_dataset, with_transforms
from scenarios._files import require_files
from scenarios._readers import read_pickle
from scenarios._transforms import ImageBatch
from scenarios.avalanche import experiences_from_benchmark

__all__ = ["SplitMiniImageNet"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SplitMiniImageNet(FileScenario):
    """miniImageNet split into ``n_experiences`` tasks of ``100 / n_experiences`` classes.

    Args:
        n_experiences: Must divide 100 (the protocol: 20).
        setting: ``"task-il"`` (the protocol) or ``"class-il"``.
    """

    DATASET = "miniImageNet"
    DOWNLOADABLE = False
    EXPECTED = ("miniimagenet/train.pkl", "miniimagenet/test.pkl")

    def __init__(self, *, n_experiences: int = 20, setting: Literal["task-il", "class-il"] = "task-il",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_setting(setting, ("task-il", "class-il"))
        if n_experiences < 1 or 100 % n_experiences:
            raise ConfigError(f"n_experiences={n_experiences} does not divide the 100 classes of miniImageNet")
        self.n_experiences, self.setting = n_experiences, setting
        self.task_ids_at_test = setting == "task-il"

    def class_order(self) -> list[int]:
        """The TRGP split: a seeded permutation of the 100 classes, cut into consecutive tasks."""
        return [int(c) for c in np.random.RandomState(self.seed).permutation(100)]

    def _load(self, split: str) -> tuple[Tensor, Tensor]:
        d = read_pickle(self.root / "miniimagenet" / f"{split}.pkl")
        imgs, labels = d.get(b"images", d.get("images")), d.get(b"labels", d.get("labels"))
        if imgs is None or labels is None:
            raise DataError(f"miniImageNet: {self.root / 'miniimagenet' / split}.pkl needs keys 'images' and 'labels'")
        x = np.asarray(imgs, dtype=np.uint8)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise DataError(f"miniImageNet: 'images' in {split}.pkl should be (N, H, W, 3) uint8, got {x.shape}")
        x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, H, W, 3) -> (N, 3, H, W)
        return x_t, torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def benchmark(self) -> Any:
        from avalanche.benchmarks import nc_benchmark

        require_files(self.DATASET, self.root, list(self.EXPECTED), "Build the pickles as in the GPM/TRGP "
                      "instructions (dict with 'images' (N, 84, 84, 3) uint8 and 'labels') and put them there; "
                      "miniImageNet is never downloaded.")
        train, test = self._load("train"), self._load("test")
        return nc_benchmark(tensor_dataset(*train), tensor_dataset(*test), n_experiences=self.n_experiences,
                            task_labels=self.setting == "task-il", fixed_class_order=self.class_order(),
                            shuffle=False, class_ids_from_zero_in_each_exp=False)

    def build_experiences(self) -> list[Experience]:
        norm = ImageBatch(IMAGENET_MEAN, IMAGENET_STD)
        return [with_transforms(e, norm, norm) for e in experiences_from_benchmark(self.benchmark(), self)]
