"""The conformance battery: every strategy in ``strategies.STRATEGIES``, in every setting it supports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from clkit.data import ContinualDataModule
from clkit.errors import ConfigError
from clkit.loop import StreamRun, fit_stream, trainer_factory
from clkit.module import ContinualModule, memory_bytes
from scenarios.toy import ToyPermuted, ToySplit
from strategies import STRATEGIES
from tests.strategies.kwargs import STRATEGY_KWARGS

CASES = [(cls, setting) for cls in STRATEGIES for setting in ("task-il", "domain-il", "class-il")
         if setting in cls.SUPPORTED_SCENARIOS]
HOOKS = ("on_experience_start", "on_experience_end", "transform_gradients")


def stream_for(setting: str) -> ContinualDataModule:
    """3 experiences x 2 classes x 8 features, with validation splits."""
    if setting == "domain-il":
        return ToyPermuted(n_experiences=3, num_classes=2, seed=0, val_fraction=0.2)
    return ToySplit(n_experiences=3, classes_per_experience=2, setting=setting, seed=0,  # type: ignore[arg-type]
                    val_fraction=0.2)


def make(cls: type[ContinualModule], **extra: Any) -> ContinualModule:
    return cls(**{**STRATEGY_KWARGS.get(cls.__name__, {}), **extra})


def record(strategy: ContinualModule) -> list[tuple[str, str]]:
    """Wrap the CL hooks; each call records (hook, where the module's first parameter lives)."""
    calls: list[tuple[str, str]] = []
    for name in HOOKS:
        original = getattr(strategy, name)

        def wrapper(*args: object, _name: str = name, _orig: Any = original) -> object:
            attached = strategy._trainer is not None and strategy.trainer.state.fn is not None
            calls.append((_name, "in fit" if attached and strategy.trainer.training else "loop"))
            return _orig(*args)

        setattr(strategy, name, wrapper)
    return calls


class _Interrupt(Exception):
    pass


def interrupting(stop_at: int) -> Any:
    make_trainer = trainer_factory(max_epochs=2)

    def factory(i: int, **overrides: object) -> pl.Trainer:
        if i == stop_at:
            raise _Interrupt
        return make_trainer(i, **overrides)

    return factory


def predictions(strategy: ContinualModule, stream: ContinualDataModule) -> list[torch.Tensor]:
    strategy.eval()
    with torch.no_grad():
        return [strategy.predict(e.test.x, e.test.t) for e in stream.experiences]


@pytest.mark.parametrize(("cls", "setting"), CASES, ids=[f"{c.__name__}-{s}" for c, s in CASES])
def test_conformance(cls: type[ContinualModule], setting: str, tmp_path: Path) -> None:
    stream = stream_for(setting)
    t = len(stream.experiences)

    pl.seed_everything(0, verbose=False)
    strategy = make(cls)
    calls = record(strategy)
    full = StreamRun(strategy, stream, trainer_factory(max_epochs=2), run_dir=tmp_path / "full")
    result = full.run()
    acc, val = result.accuracy_matrix, result.val_accuracy_matrix
    assert acc.shape == (t, t) and torch.isfinite(acc).all() and ((acc >= 0) & (acc <= 1)).all()
    assert val is not None and val.shape == (t, t) and torch.isfinite(val).all()
    assert torch.isfinite(result.random_init_accuracy).all()
    # The loop calls the experience hooks itself, outside Lightning's fit, in order; the gradient hook runs in fit.
    cl_calls = [c for c in calls if c[0] != "transform_gradients"]
    assert cl_calls == [("on_experience_start", "loop"), ("on_experience_end", "loop")] * t, cl_calls
    steps = [c for c in calls if c[0] == "transform_gradients"]
    assert len(steps) >= t and all(where == "in fit" for _, where in steps)
    assert strategy.strategy_state_bytes() == memory_bytes(strategy.memory_state()) >= 0
    assert result.evaluation["mode"] in ("task-aware", "task-agnostic")

    # The same seed gives the same matrices whether or not the stream was built and the global RNG used before.
    stream.setup()
    pl.seed_everything(0, verbose=False)
    torch.rand(1000)
    _ = [b for b in stream.train_loader(stream.experiences[0].train, 0)]
    again = fit_stream(make(cls), stream, trainer_factory(max_epochs=2))
    assert torch.equal(again.accuracy_matrix, acc) and torch.equal(again.val_accuracy_matrix, val)
    with pytest.raises(ConfigError, match="already been trained"):
        fit_stream(again.strategy, stream, trainer_factory(max_epochs=2))

    # Killed after experience 0, resumed by a fresh instance: the same matrices.
    pl.seed_everything(0, verbose=False)
    part = StreamRun(make(cls), stream, interrupting(stop_at=1), run_dir=tmp_path / "resumed")
    with pytest.raises(_Interrupt):
        part.run()
    pl.seed_everything(0, verbose=False)
    resumed = StreamRun(make(cls), stream, trainer_factory(max_epochs=2), run_dir=tmp_path / "resumed").run(True)
    assert torch.equal(resumed.accuracy_matrix, acc) and torch.equal(resumed.val_accuracy_matrix, val)

    # The last checkpoint describes itself: the strategy is rebuilt without its stream, with the same CL state.
    restored = cls.from_checkpoint(tmp_path / "full")
    assert type(restored) is cls and restored.strategy_state_bytes() == strategy.strategy_state_bytes()
    for a, b in zip(predictions(strategy, stream), predictions(restored, stream)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.__name__)
def test_an_explicit_seed_makes_the_global_rng_irrelevant(cls: type[ContinualModule]) -> None:
    setting = next(s for s in ("task-il", "domain-il", "class-il") if s in cls.SUPPORTED_SCENARIOS)
    matrices = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        matrices.append(fit_stream(make(cls, seed=7), stream_for(setting), trainer_factory(max_epochs=1))
                        .accuracy_matrix)
    assert torch.equal(*matrices)
    before = torch.get_rng_state()
    fit_stream(make(cls, seed=7), stream_for(setting), trainer_factory(max_epochs=1))
    assert torch.equal(torch.get_rng_state(), before)  # the library consumed none of the caller's random state


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.__name__)
def test_unsupported_settings_are_refused_before_training(cls: type[ContinualModule]) -> None:
    for setting in {"task-il", "domain-il", "class-il"} - set(cls.SUPPORTED_SCENARIOS):
        with pytest.raises(ConfigError, match=f"supports settings.*{setting}"):
            fit_stream(make(cls), stream_for(setting), trainer_factory(max_epochs=1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.__name__)
def test_runs_on_a_gpu_like_on_the_cpu(cls: type[ContinualModule]) -> None:
    """CL state built in the hooks lives on the training device (``python -m pytest -m gpu`` on a CUDA machine)."""
    setting = next(s for s in ("task-il", "domain-il", "class-il") if s in cls.SUPPORTED_SCENARIOS)
    cpu = fit_stream(make(cls, seed=0), stream_for(setting), trainer_factory(max_epochs=2)).accuracy_matrix
    gpu = fit_stream(make(cls, seed=0), stream_for(setting), trainer_factory(max_epochs=2, accelerator="gpu"))
    assert (gpu.accuracy_matrix - cpu).abs().max() < 0.1  # same method, same data: only float rounding differs
