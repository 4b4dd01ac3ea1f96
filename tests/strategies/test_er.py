"""ER: replay batches join every step, the reservoir fills from the stream, and a killed run resumes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from clkit.loop import StreamRun, trainer_factory
from scenarios.digits import SplitDigits
from strategies.er import ER
from tests.strategies.kwargs import sgd


class _Killed(Exception):
    pass


def _stream() -> SplitDigits:
    return SplitDigits(setting="class-il", seed=0, val_fraction=0.1, batch_size=32)


def test_a_killed_and_resumed_er_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    full = StreamRun(ER(optimizer=sgd(0.05), buffer_size=50), _stream(), trainer_factory(max_epochs=1),
                     run_dir=tmp_path / "full").run()
    make = trainer_factory(max_epochs=1)

    def dies_at_3(i: int, **overrides: Any) -> pl.Trainer:
        if i == 3:
            raise _Killed
        return make(i, **overrides)

    pl.seed_everything(0, verbose=False)
    with pytest.raises(_Killed):
        StreamRun(ER(optimizer=sgd(0.05), buffer_size=50), _stream(), dies_at_3, run_dir=tmp_path / "cut").run()
    pl.seed_everything(1, verbose=False)  # another global seed: the run depends on its own seeds only
    resumed_strategy = ER(optimizer=sgd(0.05), buffer_size=50, seed=full.strategy.seed)
    resumed = StreamRun(resumed_strategy, _stream(), make, run_dir=tmp_path / "cut").run(resume=True)
    assert torch.equal(resumed.accuracy_matrix, full.accuracy_matrix)
    assert torch.equal(resumed.val_accuracy_matrix, full.val_accuracy_matrix)
    for key in ("x", "y", "t"):
        assert torch.equal(resumed_strategy.buffer[key], full.strategy.buffer[key])
    assert resumed_strategy.buffer_seen == full.strategy.buffer_seen == sum(len(e.train) for e in _stream().experiences)


def test_every_step_trains_on_the_batch_and_a_replay_batch() -> None:
    pl.seed_everything(0, verbose=False)
    stream = _stream()
    seen: list[tuple[int, int]] = []
    strategy = ER(optimizer=sgd(0.05), buffer_size=40, replay_batch_size=8)
    original = strategy.forward

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if strategy.training:
            seen.append((int(strategy.experiences_done), x.shape[0]))
        return original(x, t)

    strategy.forward = forward  # type: ignore[method-assign]
    StreamRun(strategy, stream, trainer_factory(max_epochs=1)).run()
    sizes = [n for exp, n in seen if exp > 0]
    assert sizes and all(n == 32 + 8 or n < 32 + 8 for n in sizes)  # (the last batch of an epoch may be short)
    assert max(sizes) == 40 and seen[0][1] == 32  # the very first step has an empty buffer
    assert strategy.buffer_len == 40
    assert set(strategy.buffer["y"].tolist()) == set(range(10))  # the reservoir spans the whole stream
