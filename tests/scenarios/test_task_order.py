"""Every scenario takes an explicit experience order (``task_order``) or a seeded shuffle (``shuffle_tasks``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import scenarios
from clkit.data import ContinualDataModule, Experience
from clkit.errors import ConfigError
from scenarios.features import save_feature_file

SCENARIOS: list[tuple[str, dict[str, Any]]] = [  # (class in `scenarios`, kwargs besides dataset_root)
    ("SplitMNIST", {}), ("PermutedMNIST", {"n_experiences": 3}), ("RotatedMNIST", {"n_experiences": 3}),
    ("SplitCIFAR10", {}), ("SplitCIFAR100", {"n_experiences": 4}), ("SplitTinyImageNet", {"n_experiences": 4}),
    ("CORe50", {"mini": True, "val_fraction": 0.0}), ("FiveDatasets", {}), ("SplitMiniImageNet", {"n_experiences": 4}),
    ("CelebAAttributes", {"image_size": 8, "attributes": ["Bald", "Bangs", "Young"]}),
    ("CIFAR100Pairs", {"val_per_class": 1}), ("NewsgroupPairs", {"n_components": 4, "val_per_class": 2}),
    ("ToySplit", {}), ("FeatureStream", {}),
]


def _make(name: str, root: Path, tmp: Path, **kw: Any) -> ContinualDataModule:
    cls = getattr(scenarios, name)
    if name == "FeatureStream":
        toy = scenarios.ToySplit(n_experiences=4, setting="task-il", val_fraction=0.2)
        path = tmp / "toy.pt"
        if not path.exists():
            save_feature_file(path, toy.experiences, setting="task-il", task_ids_at_test=True)
        return cls(path=str(path), **kw)
    if name.startswith("Toy"):
        return cls(**kw)
    return cls(dataset_root=str(root), cache_dir=str(tmp / "cache"), **kw)  # rebuilt from the cache after the first


def _same(a: Experience, b: Experience) -> bool:
    return a.name == b.name and a.classes == b.classes and torch.equal(a.test.y, b.test.y) and \
        torch.equal(a.train.x, b.train.x)


@pytest.mark.filterwarnings("ignore:notMNIST")
@pytest.mark.parametrize(("name", "kwargs"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_task_order_and_shuffle_pass_through(name: str, kwargs: dict[str, Any], fake_root: Path,
                                             tmp_path: Path) -> None:
    natural = _make(name, fake_root, tmp_path, seed=3, **kwargs).experiences
    n = len(natural)
    order = [n - 1, *range(n - 1)]  # last experience first
    reordered = _make(name, fake_root, tmp_path, seed=3, task_order=order, **kwargs).experiences
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(3)).tolist()
    shuffled = _make(name, fake_root, tmp_path, seed=3, shuffle_tasks=True, **kwargs).experiences
    for got, old in ((reordered, order), (shuffled, expected)):
        for pos, (e, src) in enumerate(zip(got, old)):
            assert _same(e, natural[src])
            assert e.index == e.task_id == pos
            assert all(bool((d.t == pos).all()) for d in (e.train, e.val, e.test) if d is not None)
    with pytest.raises(ConfigError, match="not a permutation"):
        _make(name, fake_root, tmp_path, seed=3, task_order=[0] * n, **kwargs)._reorder(natural)
