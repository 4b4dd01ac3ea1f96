"""scripts/mnist_pairs_features.py (binary digit pairs over PCA features) and the per-class feature reader."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from clkit.errors import ConfigError, DataError
from scenarios.features import FeatureStream, PerClassFeatures

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_mnist(root: Path, per_class_train: int = 12, per_class_test: int = 4, seed: int = 0) -> None:
    """A tiny MNIST whose class c lights a class-specific block of pixels, plus noise."""
    rng = np.random.RandomState(seed)
    write_idx = _script("mnist_subset").write_idx
    for split, n in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.repeat(np.arange(10), n)
        rng.shuffle(labels)
        images = rng.randint(0, 40, size=(len(labels), 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 3, 5:20] = 250
        write_idx(root / "MNIST" / "raw", split, images, labels)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    _fake_mnist(root)
    return root


def test_pairs_split_labels_and_pca_fitted_on_training_images_only(fake_root: Path, tmp_path: Path) -> None:
    script = _script("mnist_pairs_features")
    path = script.main(["--root", str(fake_root), "--out", str(tmp_path / "f.pt"), "--train_per_class", "8",
                        "--components", "6"])
    stream = FeatureStream(path=str(path))
    exps = stream.experiences
    assert stream.setting == "domain-il" and not stream.task_ids_at_test and len(exps) == 5
    assert [e.name for e in exps] == ["0 vs 1", "2 vs 3", "4 vs 5", "6 vs 7", "8 vs 9"]
    for e in exps:
        assert e.train.x.shape == (16, 6) and len(e.val) == 8 and len(e.test) == 8  # 8 / 4 / 4 per class
        assert e.train.y.tolist() == [0] * 8 + [1] * 8  # first digit of the pair is label 0
    # the projection is fitted on the training rows of all classes: the training features are centred
    train = torch.cat([e.train.x for e in exps]).double()
    assert torch.allclose(train.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-4)
    assert not torch.allclose(torch.cat([e.test.x for e in exps]).double().mean(0), torch.zeros(6, dtype=torch.float64),
                              atol=1e-4)
    # validation or test pixels do not change the features: rebuild with other test images
    other = tmp_path / "other"
    _fake_mnist(other)
    (other / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    _script("mnist_subset").write_idx(other / "MNIST" / "raw", "t10k", np.zeros((40, 28, 28)), np.repeat(np.arange(10), 4))
    again = FeatureStream(path=str(script.main(["--root", str(other), "--out", str(tmp_path / "g.pt"),
                                                "--train_per_class", "8", "--components", "6"]))).experiences
    assert all(torch.equal(a.train.x, b.train.x) for a, b in zip(exps, again))
    with pytest.raises(SystemExit, match="train_per_class"):
        script.main(["--root", str(fake_root), "--out", str(tmp_path / "h.pt"), "--train_per_class", "12"])


def test_official_per_class_layout_reads_back_the_same_stream(fake_root: Path, tmp_path: Path) -> None:
    script = _script("mnist_pairs_features")
    clkit_file = script.main(["--root", str(fake_root), "--out", str(tmp_path / "f.pt"), "--train_per_class", "8",
                              "--components", "6"])
    folder = script.main(["--root", str(fake_root), "--out", str(tmp_path / "official"), "--layout", "official",
                          "--train_per_class", "8", "--components", "6"])
    assert sorted(p.name for p in folder.glob("mnist_train_*.npz")) == [f"mnist_train_{c}.npz" for c in range(10)]
    with np.load(folder / "mnist_train_3.npz") as z:
        assert z["features"].shape == (12, 6) and (z["labels"] == 3).all()
    ours = FeatureStream(path=str(clkit_file)).experiences
    theirs = PerClassFeatures(root=str(folder), prefix="mnist", pairs=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
                              train_per_class=8).experiences
    for a, b in zip(ours, theirs):
        assert a.name == b.name
        for pa, pb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
            assert pa is not None and pb is not None
            assert torch.equal(pa.x, pb.x) and torch.equal(pa.y, pb.y) and torch.equal(pa.t, pb.t)


def test_per_class_reader_squeezes_official_shapes_and_reports_bad_input(tmp_path: Path) -> None:
    for c in (4, 9):
        np.savez(tmp_path / f"cifar100_train_{c}.npz", features=np.random.rand(5, 3, 1, 1), labels=np.full(5, c))
        np.savez(tmp_path / f"cifar100_test_{c}.npz", features=np.random.rand(2, 3, 1, 1), labels=np.full(2, c))
    stream = PerClassFeatures(root=str(tmp_path), prefix="cifar100", pairs=[[4, 9]], train_per_class=3)
    (exp,) = stream.experiences
    assert exp.train.x.shape == (6, 3) and len(exp.val) == 4 and exp.test.y.tolist() == [0, 0, 1, 1]
    assert stream.setting == "domain-il" and stream.input_shape == (3,)
    with pytest.raises(DataError, match="cifar100_train_5.npz"):
        PerClassFeatures(root=str(tmp_path), prefix="cifar100", pairs=[[4, 5]]).experiences
    with pytest.raises(DataError, match="train_per_class=5"):
        PerClassFeatures(root=str(tmp_path), prefix="cifar100", pairs=[[4, 9]], train_per_class=5).experiences
    with pytest.raises(ConfigError, match="pairs"):
        PerClassFeatures(root=str(tmp_path), prefix="cifar100", pairs=[[4, 4]])
    seeded = PerClassFeatures(root=str(tmp_path), prefix="cifar100", pairs=[[4, 9]], val_fraction=0.2)
    assert len(seeded.experiences[0].train) == 8 and len(seeded.experiences[0].val) == 2
