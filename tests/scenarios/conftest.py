"""A session-wide folder of tiny fake data sets in their on-disk formats (see ``fakes.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clkit.data import Experience, TensorData
from tests.scenarios import fakes


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    fakes.write_mnist(root, per_class=4, test_per_class=2)
    fakes.write_mnist(root, folder="FashionMNIST", gz=True, seed=5)
    fakes.write_cifar(root, "cifar10", per_class=3)
    fakes.write_cifar(root, "cifar100", per_class=3)
    fakes.write_svhn(root)
    fakes.write_notmnist_folders(root / "notMNIST")
    fakes.write_tinyimagenet(root)
    fakes.write_core50(root)
    fakes.write_miniimagenet(root)
    fakes.write_celeba(root)
    fakes.write_newsgroups(root)
    return root


def label_pixels(data: TensorData, row: int = 0, col: int = 0) -> torch.Tensor:
    """The original class ids the fake images carry in pixel [0, row, col]."""
    return data.x[:, 0, row, col].long()


def assert_labels_match_images(exp: Experience, *, local: bool, row: int = 0, col: int = 0) -> None:
    """Every sample's label is its image's class: ``classes[y]`` (local labels) or ``y`` itself (global labels)."""
    for part in (exp.train, exp.val, exp.test):
        if part is None:
            continue
        expected = label_pixels(part, row, col)
        got = torch.tensor(exp.classes)[part.y] if local else part.y
        assert torch.equal(got, expected), f"labels do not match images in {exp.name}"
        assert bool((part.t == exp.index).all())
