"""The Avalanche adapter with both generator families, (x, y) and (x, y, t) samples, set and list classes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from scenarios.avalanche import AvalancheScenario
from scenarios.digits import PermutedDigits, SplitDigits


def _xy(n: int = 60, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.arange(n) % classes


class _Wrapped(AvalancheScenario):
    def __init__(self, make: Any, setting: str, **kwargs: Any) -> None:
        super().__init__(val_fraction=0.0, **kwargs)
        self.make, self.setting = make, setting

    def benchmark(self) -> Any:
        return self.make()


def _new_family() -> Any:  # class_incremental_benchmark: (x, y) samples, classes as a set
    from avalanche.benchmarks import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset

    x, y = _xy()
    ds = TensorDataset(x, y)
    ds.targets = y  # type: ignore[attr-defined]
    cds = as_classification_dataset(ds)
    return class_incremental_benchmark({"train": cds, "test": cds}, class_order=list(range(6)), num_experiences=3)


def _old_family() -> Any:  # nc_benchmark with task labels: (x, y, t) samples, classes as a list
    from avalanche.benchmarks import nc_benchmark

    x, y = _xy()
    ds = TensorDataset(x, y)
    ds.targets = y  # type: ignore[attr-defined]
    return nc_benchmark(ds, ds, n_experiences=3, task_labels=True, fixed_class_order=[4, 5, 0, 1, 2, 3])


def _from_datasets() -> Any:  # benchmark_from_datasets: no classes attribute at all
    from avalanche.benchmarks import benchmark_from_datasets
    from avalanche.benchmarks.utils import as_classification_dataset

    x, y = _xy()
    parts = []
    for c in range(3):
        rows = (y // 2) == c
        ds = TensorDataset(x[rows], y[rows])
        ds.targets = y[rows]  # type: ignore[attr-defined]
        parts.append(as_classification_dataset(ds))
    return benchmark_from_datasets(train=parts, test=parts)


@pytest.mark.parametrize("make", [_new_family, _old_family, _from_datasets], ids=["new", "old", "from_datasets"])
@pytest.mark.parametrize("setting", ["class-il", "task-il"])
def test_adapter_builds_experiences(make: Any, setting: str) -> None:
    exps = _Wrapped(make, setting).experiences
    assert len(exps) == 3
    for i, e in enumerate(exps):
        assert e.index == e.task_id == i and len(e.classes) == 2
        assert e.train.x.shape[1:] == (3,) and len(e.train) == 20 and e.val is None
        assert bool((e.train.t == i).all())
        if setting == "task-il":
            assert sorted(e.train.y.unique().tolist()) == [0, 1]
        else:
            assert sorted(e.train.y.unique().tolist()) == list(e.classes)
    if make is _old_family and setting == "class-il":
        assert [e.classes for e in exps] == [(4, 5), (0, 1), (2, 3)]


def test_digits_streams() -> None:
    split = SplitDigits(n_experiences=5, setting="class-il", seed=0, val_fraction=0.1)
    assert [e.classes for e in split.experiences] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert split.input_shape == (1, 8, 8) and split.num_classes == 10
    e = split.experiences[0]
    assert e.val is not None and len(e.val) > 0
    assert sorted(torch.cat([e.train.y, e.val.y]).unique().tolist()) == [0, 1]
    perm = PermutedDigits(n_experiences=3, seed=0)
    a, b = perm.experiences[0], perm.experiences[1]
    assert perm.setting == "domain-il" and perm.num_classes == 10
    assert torch.equal(a.test.y, b.test.y) and not torch.equal(a.test.x, b.test.x)
    assert torch.equal(a.test.x.flatten(1).sort(dim=1).values, b.test.x.flatten(1).sort(dim=1).values)
