"""Shared fixtures: tiny seeded toy streams and a quiet CPU trainer factory."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from clkit.loop import TrainerFactory, trainer_factory
from scenarios.toy import ToyPermuted, ToySplit

torch.set_num_threads(1)  # tiny models: threading overhead dominates, and the suite may run two workers at once
for _name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*val_dataloader.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def toy_stream_for(setting: str, seed: int = 0) -> ToySplit | ToyPermuted:
    """3 experiences × 64 samples per class × 8 features, in the given setting."""
    if setting == "domain-il":
        return ToyPermuted(n_experiences=3, num_classes=2, seed=seed)
    return ToySplit(n_experiences=3, classes_per_experience=2, setting=setting, seed=seed)  # type: ignore[arg-type]


@pytest.fixture
def toy_stream() -> ToySplit:
    """Task-IL: 3 experiences × 2 classes."""
    return ToySplit(n_experiences=3, classes_per_experience=2, setting="task-il", seed=0)


@pytest.fixture
def cpu_trainer() -> TrainerFactory:
    """Trainer factory: CPU, 2 epochs per experience, quiet."""
    return trainer_factory(max_epochs=2)
