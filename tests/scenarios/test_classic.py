"""Classic Avalanche streams built from fake local files: sizes, classes, shapes, task ids, settings, protocol."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clkit.errors import ConfigError, DataError
from scenarios.classic import (
    CORe50,
    PermutedMNIST,
    RotatedMNIST,
    SplitCIFAR10,
    SplitCIFAR100,
    SplitMNIST,
    SplitTinyImageNet,
)
from tests.scenarios.conftest import assert_labels_match_images

SPLITS = [  # (class, kwargs, experiences, classes per experience, input shape)
    (SplitMNIST, {}, 5, 2, (1, 28, 28)),
    (SplitMNIST, {"n_experiences": 2, "setting": "class-il"}, 2, 5, (1, 28, 28)),
    (SplitCIFAR10, {}, 5, 2, (3, 32, 32)),
    (SplitCIFAR100, {"n_experiences": 10}, 10, 10, (3, 32, 32)),
    (SplitCIFAR100, {"n_experiences": 20, "class_order": list(range(99, -1, -1))}, 20, 5, (3, 32, 32)),
    (SplitTinyImageNet, {}, 10, 20, (3, 64, 64)),
]


@pytest.mark.parametrize(("cls", "kwargs", "n_exp", "per_exp", "shape"), SPLITS,
                         ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(SPLITS)])
def test_split_stream_structure(fake_root: Path, cls: Any, kwargs: dict, n_exp: int, per_exp: int,
                                shape: tuple[int, ...]) -> None:
    stream = cls(dataset_root=str(fake_root), seed=1, **kwargs)
    exps = stream.experiences
    order = kwargs.get("class_order", list(range(n_exp * per_exp)))
    setting = kwargs.get("setting", "task-il")
    assert len(exps) == n_exp and stream.setting == setting
    assert stream.task_ids_at_test == (setting == "task-il")
    assert stream.input_shape == shape
    assert stream.num_classes == (per_exp if setting == "task-il" else n_exp * per_exp)
    for i, e in enumerate(exps):
        assert e.index == e.task_id == i
        assert e.classes == tuple(sorted(order[i * per_exp:(i + 1) * per_exp]))
        assert_labels_match_images(e, local=setting == "task-il")
        assert e.train.x.dtype == torch.uint8  # stored compactly, normalised per batch
        x, _, t = e.test[torch.arange(2)]
        assert x.dtype == torch.float32 and x.shape == (2, *shape) and bool((t == i).all())


def test_domain_il_split_uses_local_labels_and_names_the_classes(fake_root: Path) -> None:
    exps = SplitMNIST(dataset_root=str(fake_root), setting="domain-il").experiences
    for e in exps:
        assert e.classes == (0, 1)
        original = [int(c) for c in e.name.split()[-1].split(",")]
        assert_labels_match_images(e.__class__(e.index, e.task_id, tuple(original), e.train, e.val, e.test), local=True)


def _avalanche(fn: Any, **kwargs: Any) -> Any:
    with torch.random.fork_rng(), contextlib.redirect_stdout(io.StringIO()):  # Avalanche may reseed globally
        return fn(**kwargs)


def test_shuffled_class_order_equals_avalanches(fake_root: Path) -> None:
    from avalanche.benchmarks.classic import SplitMNIST as AvalancheSplitMNIST

    ours = SplitMNIST(dataset_root=str(fake_root), shuffle_classes=True, seed=3).experiences
    theirs = _avalanche(AvalancheSplitMNIST, n_experiences=5, seed=3, dataset_root=fake_root)
    assert [e.classes for e in ours] == [tuple(sorted(x.classes_in_this_experience)) for x in theirs.train_stream]
    assert [e.classes for e in ours] != [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def _sorted_rows(x: torch.Tensor) -> np.ndarray:
    flat = x.reshape(len(x), -1).numpy()
    return flat[np.lexsort(flat.T[::-1])]


@pytest.mark.parametrize("cls", [PermutedMNIST, RotatedMNIST], ids=lambda c: c.__name__)
def test_transformed_mnist_equals_avalanches_images(fake_root: Path, cls: Any) -> None:
    from avalanche.benchmarks import classic

    from scenarios.avalanche import materialise

    ours = cls(dataset_root=str(fake_root), n_experiences=2, seed=5).experiences
    theirs = _avalanche(getattr(classic, cls.__name__), n_experiences=2, seed=5, dataset_root=fake_root,
                        train_transform=None, eval_transform=None)
    for e, exp in zip(ours, theirs.test_stream):
        ref = (materialise(exp.dataset, 0).x * 255).round().to(torch.uint8)
        np.testing.assert_array_equal(_sorted_rows(e.test.x), _sorted_rows(ref))
        assert e.classes == tuple(range(10))
    assert not torch.equal(ours[0].test.x, ours[1].test.x)


def test_permuted_mnist_permutes_every_experience_and_keeps_labels(fake_root: Path) -> None:
    from scenarios.mnist import load_mnist

    stream = PermutedMNIST(dataset_root=str(fake_root), n_experiences=3, seed=0, val_fraction=0.0)
    (_, _), (x_test, _) = load_mnist(fake_root, False)
    for e, perm in zip(stream.experiences, stream.permutations()):
        assert not torch.equal(perm, torch.arange(784))
        restored = torch.empty_like(e.test.x.flatten(1))
        restored[:, perm] = e.test.x.flatten(1)  # undo x_perm = x[:, perm]
        np.testing.assert_array_equal(_sorted_rows(restored), _sorted_rows(x_test))  # Avalanche sorts by class
        assert torch.equal(restored[:, 0].long(), e.test.y)  # the fake's label pixel is back in place
    assert stream.setting == "domain-il" and stream.num_classes == 10


def test_cifar_augmentation_is_seeded_and_train_only(fake_root: Path) -> None:
    def first_batch(**kw: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = SplitCIFAR100(dataset_root=str(fake_root), n_experiences=10, seed=2, **kw).experiences[0]
        return e.train[torch.arange(8)][0], e.val[torch.arange(2)][0], e.test[torch.arange(4)][0]  # type: ignore[index]

    a, b, plain = first_batch(), first_batch(), first_batch(augment=False)
    assert torch.equal(a[0], b[0])  # same seed -> same crops and flips
    assert not torch.equal(a[0], plain[0])  # augmented vs not
    assert torch.equal(a[1], plain[1]) and torch.equal(a[2], plain[2])  # val and test never augmented
    e = SplitCIFAR100(dataset_root=str(fake_root), n_experiences=10, augment=False).experiences[0]
    mean, std = torch.tensor(SplitCIFAR100.MEAN).view(1, 3, 1, 1), torch.tensor(SplitCIFAR100.STD).view(1, 3, 1, 1)
    torch.testing.assert_close(e.test[torch.arange(3)][0], (e.test.x[:3].float() / 255 - mean) / std)


def test_core50_scenarios_follow_the_file_lists(fake_root: Path) -> None:
    nc = CORe50(dataset_root=str(fake_root), mini=True, scenario="nc", val_fraction=0.0)
    assert nc.setting == "class-il" and len(nc.experiences) == 9 and nc.num_classes == 50
    assert nc.experiences[0].classes == tuple(range(10))
    assert nc.experiences[3].classes == tuple(range(20, 25))
    for e in nc.experiences:
        assert_labels_match_images(e, local=False)
        assert set(e.test.y.tolist()) == set(e.classes)  # each experience tests its own classes
    ni = CORe50(dataset_root=str(fake_root), mini=True, scenario="ni")
    assert ni.setting == "domain-il" and len(ni.experiences) == 8
    assert all(e.classes == tuple(range(50)) and e.test.x is ni.experiences[0].test.x for e in ni.experiences)
    cat = CORe50(dataset_root=str(fake_root), mini=True, scenario="nc", object_level=False, val_fraction=0.0)
    for e in cat.experiences:
        assert torch.equal(e.train.y, e.train.x[:, 0, 0, 0].long() // 5)  # fake object o is in category o // 5
    assert ni.input_shape == (3, 32, 32)


def test_split_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"n_experiences=3 .* valid values: \[1, 2, 4, 5, 10, 20, 25, 50, 100\]"):
        SplitCIFAR100(n_experiences=3)
    with pytest.raises(ConfigError, match="class_order"):
        SplitMNIST(class_order=[0, 1, 2])
    with pytest.raises(ConfigError, match="setting='open-world'"):
        SplitMNIST(setting="open-world")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rotations_list"):
        RotatedMNIST(n_experiences=2, rotations_list=[10])
    with pytest.raises(ConfigError, match="run=12"):
        CORe50(run=12)


def test_download_flag_asks_torchvision(fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls: list[dict] = []

    class Recorder:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append({"root": root, "train": train, "download": download})

    monkeypatch.setattr(torchvision.datasets, "MNIST", Recorder)
    assert len(SplitMNIST(dataset_root=str(fake_root)).experiences) == 5 and calls == []
    assert len(SplitMNIST(dataset_root=str(fake_root), download=True).experiences) == 5
    assert calls == []  # the files are there: read as they are, nothing fetched
    empty = tmp_path / "empty"
    with pytest.raises(DataError, match="MNIST not found"):  # the stub fetches nothing, so the read still fails
        _ = SplitMNIST(dataset_root=str(empty), download=True).experiences
    assert calls == [{"root": str(empty), "train": True, "download": True},
                     {"root": str(empty), "train": False, "download": True}]


def test_a_damaged_file_is_one_clear_error(fake_root: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(fake_root / "MNIST", tmp_path / "MNIST")
    images = next((tmp_path / "MNIST" / "raw").glob("train-images-idx3-ubyte*"))
    images.write_bytes(images.read_bytes()[:100])  # an interrupted copy
    for download in (False, True):  # with download: true the damaged file is reported too, not blamed on a fetch
        with pytest.raises(DataError, match="truncated or corrupt") as err:
            _ = SplitMNIST(dataset_root=str(tmp_path), download=download).experiences
        assert images.name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("cls", [SplitMNIST, SplitCIFAR100])
def test_a_failed_download_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: Any) -> None:
    """Offline, torchvision's download raises deep inside urllib; the user gets the data set and where files go."""
    import urllib.error

    import torchvision.datasets

    class Offline:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise urllib.error.URLError("[Errno -2] Name or service not known")

    for name in ("MNIST", "CIFAR100"):
        monkeypatch.setattr(torchvision.datasets, name, Offline)
    with pytest.raises(DataError) as err:
        cls(dataset_root=str(tmp_path), download=True).experiences  # noqa: B018
    text = str(err.value)
    assert "\n" not in text and cls.DATASET in text and str(tmp_path) in text and "URLError" in text, text


def test_supermask_protocol_net_on_tiny_imagenet_images_forgets_nothing(fake_root: Path) -> None:
    """configs/*_splittinyimagenet.yaml: the masked GEMResNet18 runs on 64x64 images (640-d features), task-IL."""
    from clkit.loop import StreamRun, trainer_factory
    from strategies import ExSSNeT
    from strategies.supermask import MaskedGEMResNet18

    stream = SplitTinyImageNet(dataset_root=str(fake_root), n_experiences=2, batch_size=16)
    backbone = MaskedGEMResNet18(nf=4)
    strategy = ExSSNeT(backbone=backbone, density=0.1, mask_epochs=1, weight_epochs=1)
    acc = StreamRun(strategy, stream, trainer_factory(max_epochs=2)).run().accuracy_matrix
    assert backbone.out_features == 8 * 4 * 2 * 2  # avg_pool2d(4) leaves 2x2 cells of 8 nf channels at 64x64
    assert acc.shape == (2, 2) and acc[1, 0] == acc[0, 0]
