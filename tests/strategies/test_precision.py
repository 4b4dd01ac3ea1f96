"""Every strategy trains in ``64-true`` and ``bf16-mixed`` precision (or would refuse with one line)."""

from __future__ import annotations

import pytest
import torch

from clkit.errors import ConfigError
from clkit.loop import PRECISIONS, fit_stream, trainer_factory
from scenarios.toy import ToyPermuted, ToySplit
from strategies import STRATEGIES, ICaRL
from tests.strategies.kwargs import STRATEGY_KWARGS

ONE_SETTING = [(cls, next(s for s in ("task-il", "domain-il", "class-il") if s in cls.SUPPORTED_SCENARIOS))
               for cls in STRATEGIES]


def _stream(setting: str) -> ToySplit | ToyPermuted:
    if setting == "domain-il":
        return ToyPermuted(n_experiences=2, num_classes=2, seed=0, val_fraction=0.2)
    return ToySplit(n_experiences=2, classes_per_experience=2, setting=setting, seed=0,  # type: ignore[arg-type]
                    val_fraction=0.2)


@pytest.mark.parametrize("precision", ["64-true", "bf16-mixed"])
@pytest.mark.parametrize(("cls", "setting"), ONE_SETTING, ids=[c.__name__ for c, _ in ONE_SETTING])
def test_every_strategy_trains_in_the_tested_precisions(cls: type, setting: str, precision: str) -> None:
    assert precision in PRECISIONS
    strategy = cls(**{**STRATEGY_KWARGS.get(cls.__name__, {}), "seed": 0})
    result = fit_stream(strategy, _stream(setting), trainer_factory(max_epochs=2, precision=precision))
    acc = result.accuracy_matrix
    assert torch.isfinite(acc).all()
    trainable = [p for p in strategy.parameters() if p.is_floating_point()]
    assert trainable and all(p.dtype == (torch.float64 if precision == "64-true" else torch.float32)
                             for p in trainable)
    # it learned: the last task beats the untrained model on it (or both are perfect)
    assert float(acc[-1, -1]) >= min(float(result.random_init_accuracy[-1]) + 0.1, 1.0) - 1e-6, acc


def test_a_precision_an_operation_lacks_is_one_line_naming_the_valid_ones() -> None:
    stream = _stream("class-il")
    with pytest.raises(ConfigError, match=r"ICaRL does not run in trainer.precision=bf16-true .*valid: 32-true"):
        fit_stream(ICaRL(**STRATEGY_KWARGS.get("ICaRL", {})), stream,
                   trainer_factory(max_epochs=1, precision="bf16-true"))
