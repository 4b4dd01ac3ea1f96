"""Feature files, FeatureStream, scripts/extract_features.py, and a feature stream trained with ``clkit fit``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError, DataError
from scenarios.classic import CelebAAttributes, CIFAR100Pairs
from scenarios.features import FeatureStream, load_feature_file, save_feature_file
from scenarios.toy import ToyPermuted, ToySplit
from tests.scenarios import fakes

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("extract_features", ROOT / "scripts" / "extract_features.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    toy = ToySplit(n_experiences=3, setting="task-il", val_fraction=0.2, seed=1)
    path = save_feature_file(tmp_path / f"f{suffix}", toy.experiences, setting="task-il", task_ids_at_test=True,
                             class_names=[f"c{i}" for i in range(6)])
    stream = FeatureStream(path=str(path))
    assert stream.setting == "task-il" and stream.task_ids_at_test and stream.class_names == [f"c{i}" for i in range(6)]
    assert stream.input_shape == toy.input_shape and stream.num_classes == 2
    for a, b in zip(stream.experiences, toy.experiences):
        assert (a.index, a.classes, a.name) == (b.index, b.classes, b.name)
        for pa, pb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
            assert torch.equal(pa.x, pb.x) and torch.equal(pa.y, pb.y) and torch.equal(pa.t, pb.t)  # type: ignore


def _shared(n: int = 3) -> list[Experience]:
    x = torch.randn(10, 4)
    return [Experience(i, i, (0, 1), TensorData(x, torch.arange(10) % 2, torch.full((10,), i)), None,
                       TensorData(x[:4], torch.arange(4) % 2, torch.full((4,), i)), f"task {i}") for i in range(n)]


def test_shared_inputs_are_stored_once_and_setting_comes_from_the_file(tmp_path: Path) -> None:
    for suffix in (".pt", ".npz"):
        path = save_feature_file(tmp_path / f"s{suffix}", _shared(), setting="domain-il", task_ids_at_test=False)
        stream = FeatureStream(path=str(path))
        assert stream.setting == "domain-il" and not stream.task_ids_at_test  # before .experiences was touched
        exps = stream.experiences
        assert all(e.train.x.data_ptr() == exps[0].train.x.data_ptr() for e in exps)
    with np.load(tmp_path / "s.npz") as z:
        assert "exp1_train_x_ref" in z.files and "exp1_train_x" not in z.files


def test_val_fraction_fills_only_missing_validation_parts(tmp_path: Path) -> None:
    path = save_feature_file(tmp_path / "s.pt", _shared(), setting="domain-il", task_ids_at_test=False)
    exps = FeatureStream(path=str(path), val_fraction=0.2, seed=4).experiences
    assert all(len(e.train) == 8 and e.val is not None and len(e.val) == 2 for e in exps)
    toy = ToyPermuted(n_experiences=2, val_fraction=0.25)
    path = save_feature_file(tmp_path / "v.pt", toy.experiences, setting="domain-il", task_ids_at_test=False)
    kept = FeatureStream(path=str(path), val_fraction=0.5).experiences
    assert torch.equal(kept[1].val.x, toy.experiences[1].val.x)  # type: ignore[union-attr]


def test_malformed_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found; write one with scripts/extract_features.py"):
        _ = FeatureStream(path=str(tmp_path / "none.pt")).experiences
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="is not a clkit feature file"):
        load_feature_file(tmp_path / "other.pt")
    torch.save({"format": "clkit.features", "setting": "open", "experiences": [{}]}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="setting='open'"):
        load_feature_file(tmp_path / "bad.pt")
    part = {"x": torch.zeros(5, 3), "y": torch.zeros(4, dtype=torch.long)}
    torch.save({"format": "clkit.features", "setting": "class-il", "experiences": [{"train": part, "test": part}]},
               tmp_path / "shape.pt")
    with pytest.raises(DataError, match=r"experience 0 train needs x \(N, D...\) and y \(N,\)"):
        _ = FeatureStream(path=str(tmp_path / "shape.pt")).experiences
    with pytest.raises(ConfigError, match=r"must end in .pt or .npz"):
        save_feature_file(tmp_path / "f.csv", _shared(), setting="class-il", task_ids_at_test=False)


def _resnet_weights(path: Path) -> torch.nn.Module:
    from torchvision.models import resnet18

    model = resnet18()
    torch.save(model.state_dict(), path)
    model.fc = torch.nn.Identity()  # type: ignore[assignment]
    return model.eval()


def test_extract_features_from_a_scenario(fake_root: Path, tmp_path: Path) -> None:
    backbone = _resnet_weights(tmp_path / "w.pth")
    out = _script().run(["--data", "scenarios.classic.CIFAR100Pairs", "--data.init_args.dataset_root", str(fake_root),
                         "--data.init_args.val_per_class", "1", "--weights", str(tmp_path / "w.pth"),
                         "--out", str(tmp_path / "pairs.pt")])
    stream, raw = FeatureStream(path=out), CIFAR100Pairs(dataset_root=str(fake_root), val_per_class=1)
    assert stream.setting == "domain-il" and stream.input_shape == (512,) and len(stream.experiences) == 10
    e, r = stream.experiences[3], raw.experiences[3]
    assert torch.equal(e.train.y, r.train.y) and torch.equal(e.test.y, r.test.y) and e.name == r.name
    with torch.no_grad():
        expected = backbone(r.test[torch.arange(2)][0])  # normalised images through the frozen net
    torch.testing.assert_close(e.test.x[:2], expected, rtol=1e-4, atol=1e-4)
    assert load_feature_file(out)["meta"]["backbone"] == "resnet18"


def test_extract_features_streams_celeba_from_disk(fake_root: Path, tmp_path: Path) -> None:
    backbone = _resnet_weights(tmp_path / "w.pth")
    out = _script().run(["--data", "scenarios.classic.CelebAAttributes", "--data.init_args.dataset_root",
                         str(fake_root), "--weights", str(tmp_path / "w.pth"), "--image_size", "32",
                         "--out", str(tmp_path / "celeba.npz")])
    exps = FeatureStream(path=out).experiences
    raw = CelebAAttributes(dataset_root=str(fake_root), image_size=32).experiences
    assert len(exps) == 15 and all(e.test.x.data_ptr() == exps[0].test.x.data_ptr() for e in exps)
    with torch.no_grad():
        expected = backbone(raw[0].test[torch.arange(3)][0])
    torch.testing.assert_close(exps[0].test.x, expected, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a.val.y, b.val.y) for a, b in zip(exps, raw))  # type: ignore[union-attr]


def test_missing_imagenet_weights_say_how_to_provide_them(fake_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SystemExit) as info:
        _script().main(["--data", "scenarios.ToySplit", "--out", str(tmp_path / "f.pt")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and not (tmp_path / "f.pt").exists()
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err and "--weights" in err


def test_feature_stream_trains_end_to_end_with_clkit_fit(tmp_path: Path) -> None:
    from clkit.cli import main

    toy = ToySplit(n_experiences=3, setting="task-il", val_fraction=0.2, seed=0)
    path = save_feature_file(tmp_path / "toy.pt", toy.experiences, setting="task-il", task_ids_at_test=True)
    main(["fit", "--data", "scenarios.features.FeatureStream", "--data.init_args.path", str(path),
          "--run_dir", str(tmp_path / "run"), "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    acc = torch.tensor(res["accuracy_matrix"])
    assert res["scenario"] == "FeatureStream" and res["setting"] == "task-il" and acc.shape == (3, 3)
    assert res["metrics"]["acc"] > 0.8  # separable toy blobs: the stream really trains


def test_fake_celeba_is_deterministic(tmp_path: Path) -> None:
    a, b = fakes.write_celeba(tmp_path / "a"), fakes.write_celeba(tmp_path / "b")
    assert np.array_equal(a, b)
