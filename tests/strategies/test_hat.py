"""HAT: old tasks' units are protected by the cumulative mask, so old tasks are (nearly) not forgotten."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from clkit.errors import ConfigError
from clkit.loop import fit_stream, trainer_factory
from clkit.metrics import backward_transfer
from clkit.nets import MLP
from scenarios.toy import ToySplit
from strategies.hat import HAT
from strategies.naive import Naive
from tests.strategies.kwargs import sgd


def test_hat_forgets_far_less_than_fine_tuning_and_keeps_masked_weights() -> None:
    stream = ToySplit(n_experiences=3, classes_per_experience=2, setting="task-il", seed=0, spread=1.0)
    bwts = {}
    for name, make in (("hat", lambda: HAT(optimizer=sgd(0.1), backbone=MLP(hidden=[64, 64]), s_max=400.0)),
                       ("naive", lambda: Naive(optimizer=sgd(0.1), backbone=MLP(hidden=[64, 64])))):
        pl.seed_everything(0, verbose=False)
        result = fit_stream(make(), stream, trainer_factory(max_epochs=10))
        bwts[name] = float(backward_transfer(result.accuracy_matrix))
        if name == "hat":
            hat = result.strategy
    assert bwts["hat"] > -0.02 and bwts["hat"] > bwts["naive"], bwts
    masks = [m for m in hat.mask_cumulative]
    assert all(((m > 0.99) | (m < 0.01)).float().mean() > 0.9 for m in masks)  # nearly binary at s_max
    assert all(0 < float(m.mean()) < 1 for m in masks)  # some units used, some left free


def test_hat_needs_task_ids_and_an_mlp() -> None:
    with pytest.raises(ConfigError, match="MLP"):
        HAT(backbone=torch.nn.Linear(8, 4)).bind(ToySplit(setting="task-il").spec)
    assert HAT.SUPPORTED_SCENARIOS == frozenset({"task-il"})
