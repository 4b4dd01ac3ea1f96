"""The papers' own streams (5-Datasets, miniImageNet, CelebA, CIFAR-100 pairs, 20 Newsgroups) from fake files."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from clkit.errors import ConfigError, DataError
from scenarios.celeba import ATTRIBUTES
from scenarios.cifar_pairs import PAIRS
from scenarios.classic import (
    CelebAAttributes,
    CIFAR100Pairs,
    FiveDatasets,
    NewsgroupPairs,
    SplitMiniImageNet,
    TinyImageNetPairs,
)
from scenarios.five_datasets import NAMES, NORMS, load_notmnist
from scenarios.newsgroups import PAIRS as NEWS_PAIRS
from tests.scenarios import fakes
from tests.scenarios.conftest import assert_labels_match_images


def test_five_datasets_protocol(fake_root: Path) -> None:
    stream = FiveDatasets(dataset_root=str(fake_root), val_fraction=0.2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        exps = stream.experiences
    assert [e.name for e in exps] == list(NAMES) and stream.setting == "task-il" and stream.task_ids_at_test
    assert stream.input_shape == (3, 32, 32) and stream.num_classes == 10
    for e in exps:
        assert e.classes == tuple(range(10)) and e.train.x.shape[1:] == (3, 32, 32)
        grey = e.name in ("mnist", "fashion_mnist", "notmnist")
        # grey 28x28 images are padded by 2 on each side and repeated to 3 channels
        assert_labels_match_images(e, local=True, row=2 if grey else 0, col=2 if grey else 0)
        if grey:
            assert torch.equal(e.test.x[:, 0], e.test.x[:, 2]) and int(e.test.x[:, :, :2].max()) == 0
        mean, std = NORMS[e.name]
        x = e.test[torch.arange(len(e.test))][0]
        torch.testing.assert_close(x[:, 0, 0, 0], (e.test.x[:, 0, 0, 0].float() / 255 - mean[0]) / std[0])


def test_notmnist_layouts(tmp_path: Path) -> None:
    fakes.write_notmnist_folders(tmp_path / "flat", per_class=5, corrupt=None)
    (tr, te) = load_notmnist(tmp_path / "flat", test_fraction=0.2, seed=0)
    assert len(tr[1]) == 40 and len(te[1]) == 10 and torch.bincount(te[1]).tolist() == [1] * 10
    for split in ("train", "test"):
        fakes.write_notmnist_folders(tmp_path / "split" / split, per_class=2, corrupt=None)
    (tr, te) = load_notmnist(tmp_path / "split", test_fraction=0.5, seed=0)
    assert len(tr[1]) == len(te[1]) == 20 and torch.equal(tr[0][:, 0, 0, 0].long(), tr[1])
    y = fakes.balanced_labels(10, 2)
    for split in ("train", "test"):
        with open(tmp_path / f"notmnist_{split}.pkl", "wb") as f:
            pickle.dump({"features": fakes.images(y, (1, 32, 32), 0), "labels": y}, f)
    (tr, te) = load_notmnist(tmp_path, test_fraction=0.2, seed=0)
    assert tr[0].shape == (20, 1, 32, 32) and torch.equal(tr[1], torch.from_numpy(y))
    with pytest.raises(DataError, match="notmnist_train.pkl"):
        load_notmnist(tmp_path / "nothing", test_fraction=0.2, seed=0)


def test_miniimagenet_uses_the_trgp_class_split(fake_root: Path) -> None:
    stream = SplitMiniImageNet(dataset_root=str(fake_root), seed=37, val_fraction=0.0)
    perm = np.random.RandomState(37).permutation(100)
    assert len(stream.experiences) == 20 and stream.input_shape == (3, 84, 84) and stream.setting == "task-il"
    for i, e in enumerate(stream.experiences):
        assert e.classes == tuple(sorted(int(c) for c in perm[5 * i: 5 * i + 5]))
        assert_labels_match_images(e, local=True)


def test_celeba_tasks_share_images(fake_root: Path) -> None:
    attrs = fakes.write_celeba(fake_root / "again")  # same content as the session fake (same seed)
    stream = CelebAAttributes(dataset_root=str(fake_root), image_size=None)
    exps = stream.experiences
    assert [e.name for e in exps] == list(ATTRIBUTES) and stream.setting == "domain-il"
    assert stream.input_shape == (3, 218, 178) and stream.num_classes == 2
    for t, e in enumerate(exps):
        assert e.train.x is exps[0].train.x and e.test.x is exps[0].test.x  # stored once
        assert (len(e.train), len(e.val), len(e.test)) == (6, 3, 3)  # type: ignore[arg-type]
        index = torch.cat([e.train.x, e.val.x, e.test.x])[:, 0, 0, 0].long()  # type: ignore[union-attr]
        assert torch.equal(torch.cat([e.train.y, e.val.y, e.test.y]), torch.from_numpy(attrs[index.numpy(), t]))
    small = CelebAAttributes(dataset_root=str(fake_root), image_size=16, attributes=["Bald", "Young"], max_per_split=2)
    assert small.input_shape == (3, 16, 16) and [len(e.train) for e in small.experiences] == [2, 2]
    with pytest.raises(ConfigError, match="unknown CelebA attributes"):
        _ = CelebAAttributes(dataset_root=str(fake_root), attributes=["Wings"]).experiences


def test_cifar_pairs_protocol(fake_root: Path) -> None:
    stream = CIFAR100Pairs(dataset_root=str(fake_root), val_per_class=1)
    exps = stream.experiences
    assert len(exps) == 10 and stream.setting == "domain-il" and not stream.task_ids_at_test
    for e, (a, b) in zip(exps, PAIRS):
        assert e.classes == (0, 1) and f"({a}) vs" in e.name and f"({b})" in e.name
        for part, per_class in ((e.train, 2), (e.val, 1), (e.test, 1)):
            pixel = part.x[:, 0, 0, 0].long()  # type: ignore[union-attr]
            assert torch.equal(pixel, torch.where(part.y == 0, a, b))  # type: ignore[union-attr]
            assert torch.bincount(part.y).tolist() == [per_class, per_class]  # type: ignore[union-attr]
    assert not set(exps[0].val.x[:, 0, 0, 1].tolist()) & set(exps[0].train.x[:, 0, 0, 1].tolist())  # type: ignore
    with pytest.raises(DataError, match="val_per_class=3"):
        _ = CIFAR100Pairs(dataset_root=str(fake_root), val_per_class=3).experiences


def test_tinyimagenet_pairs_protocol(fake_root: Path) -> None:
    wnids = (fake_root / "tiny-imagenet-200" / "wnids.txt").read_text().split()  # class id = position
    pairs = [(wnids[3], wnids[150]), (wnids[42], wnids[7])]
    stream = TinyImageNetPairs(dataset_root=str(fake_root), pairs=pairs, val_per_class=1)
    exps = stream.experiences
    assert len(exps) == 2 and stream.setting == "domain-il" and not stream.task_ids_at_test
    assert stream.input_shape == (3, 64, 64)
    for e, (a, b) in zip(exps, [(3, 150), (42, 7)]):
        assert e.classes == (0, 1) and e.name == f"{wnids[a]} vs {wnids[b]}"  # no words.txt: ids only
        for part in (e.train, e.val, e.test):  # the fake has 2 training images and 1 test image per class
            pixel = part.x[:, 0, 0, 0].long()  # type: ignore[union-attr]
            assert torch.equal(pixel, torch.where(part.y == 0, a, b))  # type: ignore[union-attr]
            assert torch.bincount(part.y).tolist() == [1, 1]  # type: ignore[union-attr]
    x = exps[0].train[torch.arange(2)][0]  # ImageNet mean/std at batch time
    assert x.dtype == torch.float32 and x.shape == (2, 3, 64, 64)
    with pytest.raises(ConfigError, match="not Tiny ImageNet classes"):
        _ = TinyImageNetPairs(dataset_root=str(fake_root), val_per_class=1).experiences  # real wnids, fake files
    with pytest.raises(DataError, match="val_per_class=2"):
        _ = TinyImageNetPairs(dataset_root=str(fake_root), pairs=pairs, val_per_class=2).experiences


def _nearest_centroid_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    centroids = torch.stack([train_x[train_y == c].mean(0) for c in (0, 1)])  # (2, D)
    pred = torch.cdist(x, centroids).argmin(1)  # (N, 2) -> (N,)
    return float((pred == y).float().mean())


def test_newsgroup_pairs_features(fake_root: Path, tmp_path: Path) -> None:
    stream = NewsgroupPairs(dataset_root=str(fake_root), n_components=8, val_per_class=3)
    exps = stream.experiences
    assert [e.name for e in exps] == [f"{a} vs {b}" for a, b in NEWS_PAIRS] and stream.input_shape == (8,)
    for e in exps:
        assert (len(e.train), len(e.val), len(e.test)) == (18, 6, 8)  # type: ignore[arg-type]
        assert _nearest_centroid_accuracy(e.train.x, e.train.y, e.test.x, e.test.y) >= 0.85
    # scikit-learn's own cache file gives the same stream as the extracted folders
    from sklearn.datasets import load_files

    cache = {s: load_files(str(fake_root / f"20news-bydate-{s}"), encoding="latin1") for s in ("train", "test")}
    (tmp_path / "20news-bydate_py3.pkz").write_bytes(codecs.encode(pickle.dumps(cache), "zlib_codec"))
    again = NewsgroupPairs(dataset_root=str(tmp_path), n_components=8, val_per_class=3).experiences
    torch.testing.assert_close(again[2].test.x, exps[2].test.x)
