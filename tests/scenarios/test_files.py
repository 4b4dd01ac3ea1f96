"""Local-file handling shared by every file-backed scenario: clear errors, ``$CLKIT_DATA_ROOT``, the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from clkit.errors import DataError
from scenarios import classic
from scenarios._files import ENV_ROOT, cache_key

MISSING = [  # (class, dataset named in the error, an expected file named in the error)
    ("SplitMNIST", "MNIST", "train-images-idx3-ubyte"),
    ("PermutedMNIST", "MNIST", "train-images-idx3-ubyte"),
    ("RotatedMNIST", "MNIST", "train-images-idx3-ubyte"),
    ("SplitCIFAR10", "CIFAR-10", "data_batch_1"),
    ("SplitCIFAR100", "CIFAR-100", "cifar-100-python/train"),
    ("SplitTinyImageNet", "Tiny ImageNet", "tiny-imagenet-200/wnids.txt"),
    ("CORe50", "CORe50", "core50_128x128"),
    ("FiveDatasets", "CIFAR-10 (5-Datasets)", "data_batch_1"),
    ("SplitMiniImageNet", "miniImageNet", "miniimagenet/train.pkl"),
    ("CelebAAttributes", "CelebA", "list_attr_celeba.txt"),
    ("CIFAR100Pairs", "CIFAR-100", "cifar-100-python/train"),
    ("NewsgroupPairs", "20 Newsgroups", "20news-bydate_py3.pkz"),
    ("TinyImageNetPairs", "Tiny ImageNet", "tiny-imagenet-200/wnids.txt"),
]


@pytest.mark.parametrize(("name", "dataset", "expected"), MISSING, ids=[m[0] for m in MISSING])
def test_missing_files_name_the_dataset_the_files_and_the_folder(name: str, dataset: str, expected: str,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        _ = getattr(classic, name)(dataset_root=str(tmp_path)).experiences
    msg = str(info.value)
    assert msg.startswith(f"{dataset} not found") and expected in msg and str(tmp_path) in msg
    assert "download" in msg  # says how to get the files
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or created


@pytest.mark.parametrize("name", classic.__all__)
def test_no_dataset_root_says_where_to_set_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ROOT, raising=False)
    with pytest.raises(DataError, match=f"no dataset_root given.*{ENV_ROOT}"):
        _ = getattr(classic, name)().experiences


def test_environment_variable_is_the_default_root(fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ROOT, str(fake_root))
    assert len(classic.SplitMNIST().experiences) == 5


def test_cache_round_trip(fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(**kw: Any) -> Any:
        return classic.SplitCIFAR10(dataset_root=str(fake_root), cache_dir=str(tmp_path), **kw)

    first = make().experiences
    assert [p.name for p in tmp_path.iterdir()] == [cache_key(make(), root=str(fake_root))]

    def fail(self: Any) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(classic.SplitCIFAR10, "build_experiences", fail)
    again = make(batch_size=7, task_order=[4, 3, 2, 1, 0]).experiences  # same cache: neither changes the data
    assert [e.classes for e in again] == [e.classes for e in reversed(first)]
    assert torch.equal(again[0].train.x, first[-1].train.x) and torch.equal(again[0].test.y, first[-1].test.y)
    assert torch.equal(again[0].train[torch.arange(4)][0], first[-1].train[torch.arange(4)][0])  # same augmentation
    with pytest.raises(AssertionError, match="cache"):
        _ = make(seed=1).experiences  # a different seed is a different stream


def test_unwritable_cache_only_warns(fake_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="could not write the scenario cache"):
        exps = classic.SplitMNIST(dataset_root=str(fake_root), cache_dir=str(blocker / "sub")).experiences
    assert len(exps) == 5
