"""CORe50 through Avalanche's classic ``CORe50`` benchmark (its file lists define every experience).

Files (as Avalanche downloads them) under ``<dataset_root>``: ``core50_128x128/`` (or ``core50_32x32/`` with
``mini: true``), ``batches_filelists/`` (and ``NIC_v2_*`` for the NICv2 scenarios), ``paths.pkl``, ``LUP.pkl``,
``labels.pkl``, ``labels2names.pkl``. Avalanche writes category-level file lists (``*_cat``) next to them on first use.

Avalanche's CORe50 has one complete test set. clkit gives every experience the test images of the classes it trains
on: the whole test set for NI (every experience has all classes), the new classes' images for NC. Memory: the
128×128 images need about 8 GB as ``uint8``; ``mini: true`` (32×32) needs about 0.5 GB.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal, Optional

import torch

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError
from scenarios._base import FileScenario, with_transforms
from scenarios._files import downloading, require_files
from scenarios._transforms import ImageBatch
from scenarios.avalanche import materialise

__all__ = ["CORe50"]

Core50Scenario = Literal["ni", "nc", "nic", "nicv2_79", "nicv2_196", "nicv2_391"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class CORe50(FileScenario):
    """CORe50 (Lomonaco & Maltoni, 2017) in one of its standard scenarios.

    Args:
        scenario: ``"ni"`` (new instances: domain-IL, 8 experiences), ``"nc"`` (new classes: class-IL, 9
            experiences), ``"nic"`` / ``"nicv2_*"`` (new instances and classes: class-IL). Avalanche's default is
            ``"nicv2_391"``; clkit's is ``"nc"``.
        run: Which of the 10 official runs (orders) to use.
        object_level: 50 object classes (True) or 10 categories (False).
        mini: Use the 32×32 images instead of 128×128.
        augment: Horizontal flip of training batches (Avalanche's default train transform); ``None`` = on.
    """

    DATASET = "CORe50"
    EXPECTED = ("core50_128x128/", "batches_filelists/", "paths.pkl", "LUP.pkl", "labels.pkl", "labels2names.pkl")

    def __init__(self, *, scenario: Core50Scenario = "nc", run: int = 0, object_level: bool = True,
                 mini: bool = False, augment: Optional[bool] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if scenario not in ("ni", "nc", "nic", "nicv2_79", "nicv2_196", "nicv2_391"):
            raise ConfigError(f"scenario={scenario!r} is not one of 'ni', 'nc', 'nic', 'nicv2_79', 'nicv2_196', "
                              "'nicv2_391'")
        if not 0 <= run <= 9:
            raise ConfigError(f"run={run} is not one of the official runs 0..9")
        self.scenario, self.run, self.object_level, self.mini = scenario, run, object_level, mini
        self.augment = True if augment is None else augment
        self.setting = "domain-il" if scenario == "ni" else "class-il"

    def _expected(self) -> list[str]:
        images = "core50_32x32" if self.mini else "core50_128x128"
        lists = "batches_filelists" if self.scenario in ("ni", "nc", "nic") else f"NIC_v2_{self.scenario[6:]}"
        return [images, lists, "paths.pkl", "LUP.pkl", "labels.pkl", "labels2names.pkl"]

    def benchmark(self) -> Any:
        from avalanche.benchmarks.classic import CORe50 as AvalancheCORe50
        from torchvision.transforms import PILToTensor

        root = self.root
        if not self.download:
            require_files(self.DATASET, root, self._expected(), "Download the files listed at "
                          "https://vlomonaco.github.io/core50/ (as Avalanche does) there, or pass download: true.")
        with contextlib.redirect_stdout(io.StringIO()), downloading(self.DATASET, root):  # Avalanche prints progress
            return AvalancheCORe50(scenario=self.scenario, run=self.run, object_lvl=self.object_level, mini=self.mini,
                                   train_transform=PILToTensor(), eval_transform=PILToTensor(), dataset_root=root)

    def build_experiences(self) -> list[Experience]:
        bench = self.benchmark()
        test_all = materialise(bench.test_stream[0].dataset, 0)
        norm = ImageBatch(IMAGENET_MEAN, IMAGENET_STD)
        out = []
        for i, exp in enumerate(bench.train_stream):
            train = materialise(exp.dataset, i)
            classes = sorted(int(c) for c in train.y.unique())
            keep = torch.isin(test_all.y, torch.tensor(classes))
            if bool(keep.all()):  # share the one test tensor instead of copying it per experience
                test = TensorData(test_all.x, test_all.y, torch.full_like(test_all.y, i))
            else:
                test = test_all.subset(keep.nonzero().squeeze(1))
                test = TensorData(test.x, test.y, torch.full_like(test.y, i))
            e = self.make_experience(i, classes, train, test, f"{self.scenario} batch {i}")
            aug = ImageBatch(IMAGENET_MEAN, IMAGENET_STD, flip=True, seed=self.seed * 1_000_003 + i)
            out.append(with_transforms(e, aug if self.augment else norm, norm))
        return out
