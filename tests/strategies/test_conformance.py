"""The conformance battery: every strategy in ``strategies.STRATEGIES`` on a toy stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from clkit.loop import StreamRun, trainer_factory
from clkit.module import ContinualModule
from strategies import STRATEGIES
from tests.conftest import toy_stream_for
from tests.strategies.kwargs import STRATEGY_KWARGS

HOOKS = ("on_experience_start", "on_experience_end", "transform_gradients")


def _setting(cls: type[ContinualModule]) -> str:
    return next(s for s in ("task-il", "domain-il", "class-il") if s in cls.SUPPORTED_SCENARIOS)


def _make(cls: type[ContinualModule]) -> ContinualModule:
    pl.seed_everything(0, verbose=False)
    return cls(**STRATEGY_KWARGS.get(cls.__name__, {}))


def _record(strategy: ContinualModule) -> list[str]:
    calls: list[str] = []
    for name in HOOKS:
        original = getattr(strategy, name)

        def wrapper(*args: object, _name: str = name, _orig: object = original) -> object:
            calls.append(_name)
            return _orig(*args)  # type: ignore[operator]

        setattr(strategy, name, wrapper)
    return calls


class _Interrupt(Exception):
    pass


def _interrupting_factory(stop_at: int):  # type: ignore[no-untyped-def]
    make = trainer_factory(max_epochs=2)

    def factory(i: int, **overrides: object) -> pl.Trainer:
        if i == stop_at:
            raise _Interrupt
        return make(i, **overrides)

    return factory


def _logits(strategy: ContinualModule, stream: object) -> list[torch.Tensor]:
    strategy.eval()
    with torch.no_grad():
        return [strategy.predict(e.test.x, e.test.t) for e in stream.experiences]  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.__name__)
def test_conformance(cls: type[ContinualModule], tmp_path: Path) -> None:
    stream = toy_stream_for(_setting(cls))
    t = len(stream.experiences)

    strategy = _make(cls)
    calls = _record(strategy)
    full = StreamRun(strategy, stream, trainer_factory(max_epochs=2), run_dir=tmp_path / "full")
    acc = full.run()
    assert acc.shape == (t, t) and torch.isfinite(acc).all() and ((acc >= 0) & (acc <= 1)).all()
    assert torch.isfinite(full.random_init_accuracy).all()
    cl_calls = [c for c in calls if c != "transform_gradients"]
    assert cl_calls == ["on_experience_start", "on_experience_end"] * t, cl_calls
    assert calls.count("transform_gradients") >= t  # called from on_before_optimizer_step every step
    assert strategy.strategy_state_bytes() >= 0

    # Same seed, same config: the identical matrix.
    again = StreamRun(_make(cls), stream, trainer_factory(max_epochs=2)).run()
    assert torch.equal(again, acc)

    # Killed after experience 0, resumed by a fresh process-like instance: the same matrix.
    part = StreamRun(_make(cls), stream, _interrupting_factory(stop_at=1), run_dir=tmp_path / "resumed")
    with pytest.raises(_Interrupt):
        part.run()
    resumed = StreamRun(_make(cls), stream, trainer_factory(max_epochs=2), run_dir=tmp_path / "resumed")
    assert torch.equal(resumed.run(resume=True), acc)

    # Checkpoint round trip: a fresh instance restored from the last checkpoint holds the same CL state.
    restored = _make(cls)
    done = StreamRun(restored, stream, trainer_factory(max_epochs=2), run_dir=tmp_path / "full")
    assert torch.equal(done.run(resume=True), acc)
    assert restored.strategy_state_bytes() == strategy.strategy_state_bytes()
    for a, b in zip(_logits(strategy, stream), _logits(restored, stream)):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.__name__)
def test_runs_on_a_gpu_like_on_the_cpu(cls: type[ContinualModule]) -> None:
    """CL state built in the hooks lives on the training device (``python -m pytest -m gpu`` on a CUDA machine)."""
    stream = toy_stream_for(_setting(cls))
    cpu = StreamRun(_make(cls), stream, trainer_factory(max_epochs=2)).run()
    gpu = StreamRun(_make(cls), stream, trainer_factory(max_epochs=2, accelerator="gpu")).run()
    assert (gpu - cpu).abs().max() < 0.1  # same method, same data: only float rounding differs
