"""Every scenario config under configs/ parses into its scenario with the protocol's values (no data is read)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "data").glob("*.yaml")) + sorted((ROOT / "configs" / "scenarios").glob("*.yaml"))

PROTOCOLS: dict[str, dict[str, Any]] = {  # file -> (class name, init args the protocol fixes)
    "data/pmnist.yaml": {"cls": "PermutedMNIST", "n_experiences": 10, "setting": "domain-il", "val_fraction": 0.1,
                         "val_split": "first", "batch_size": 10},
    "data/cifar100_10split.yaml": {"cls": "SplitCIFAR100", "n_experiences": 10, "setting": "task-il", "augment": False,
                                   "shuffle_classes": False, "val_fraction": 0.05},
    "data/five_datasets.yaml": {"cls": "FiveDatasets", "val_fraction": 0.05, "setting": "task-il"},
    "data/miniimagenet.yaml": {"cls": "SplitMiniImageNet", "n_experiences": 20, "val_fraction": 0.02},
    "data/splitmnist.yaml": {"cls": "SplitMNIST", "n_experiences": 5, "setting": "task-il"},
    "data/splitcifar100_5.yaml": {"cls": "SplitCIFAR100", "n_experiences": 5, "augment": True, "setting": "task-il"},
    "data/splitcifar100_20.yaml": {"cls": "SplitCIFAR100", "n_experiences": 20, "augment": True},
    "data/splittinyimagenet.yaml": {"cls": "SplitTinyImageNet", "n_experiences": 10, "setting": "task-il"},
    "data/celeba_features.yaml": {"cls": "FeatureStream"},
    "data/cifar100_pairs_features.yaml": {"cls": "FeatureStream", "batch_size": 32},
    "data/tinyimagenet_pairs_features.yaml": {"cls": "FeatureStream", "batch_size": 32},
    "scenarios/tinyimagenet_pairs.yaml": {"cls": "TinyImageNetPairs", "val_per_class": 50},
    "data/20news_features.yaml": {"cls": "NewsgroupPairs", "n_components": 512, "val_per_class": 50},
}


def _parser() -> Any:
    spec = importlib.util.spec_from_file_location("extract_features", ROOT / "scripts" / "extract_features.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._parser()


def test_every_paper_protocol_has_a_config() -> None:
    assert set(PROTOCOLS) <= {str(p.relative_to(ROOT / "configs")) for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_instantiates_its_scenario(path: Path) -> None:
    parser = _parser()
    cfg = parser.parse_args(["--config", str(path), "--seed_everything", "7", "--out", "unused.pt"])
    scenario = parser.instantiate(cfg).data
    expected = dict(PROTOCOLS.get(str(path.relative_to(ROOT / "configs")), {}))
    if "cls" in expected:
        assert type(scenario).__name__ == expected.pop("cls")
    for key, value in expected.items():
        assert getattr(scenario, key) == value, key
    if "${seed_everything}" in path.read_text():
        assert scenario.seed == 7
