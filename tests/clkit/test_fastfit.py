"""The fast training path (clkit.fastfit) against Lightning's own step loop: bit-identical matrices, weights, CL
memory, steps, logged losses and LR schedules; the settings that keep the slow path; resume; non-finite losses."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch

import strategies
from clkit.errors import NonFiniteLossError
from clkit.fastfit import FastFit
from clkit.loop import StreamRun, trainer_factory
from scenarios.toy import ToySplit
from tests.strategies.kwargs import STRATEGY_KWARGS


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """12 batches per epoch in chunks of 5, 5 and 2: chunk boundaries and a partial chunk inside every epoch."""
    monkeypatch.setattr(FastFit, "CHUNK", 5)


class Record(pl.Callback):
    """What epoch-boundary callbacks see: the learning rate and validation loss of every epoch, the logged
    training loss at the end of each fit."""

    def __init__(self, seen: list[tuple[int, float, float]]) -> None:
        self.seen = seen

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.val = float(trainer.callback_metrics.get("val/loss", float("nan")))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append((trainer.current_epoch, self.lr, getattr(self, "val", 0.0)))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen.append((-1, float(trainer.callback_metrics["train/loss"]), 0.0))  # the last logged epoch loss


def stream(setting: str = "task-il", val: float = 0.0) -> ToySplit:
    return ToySplit(n_experiences=3, classes_per_experience=2, setting=setting, seed=0,  # type: ignore[arg-type]
                    batch_size=8, val_fraction=val)


def run(name: str, fast: bool, setting: str = "task-il", val: float = 0.0, epochs: int = 2,
        **kwargs: Any) -> tuple[StreamRun, list[tuple[int, float, float]], Any]:
    seen: list[tuple[int, float, float]] = []
    make = trainer_factory(max_epochs=epochs)
    strategy = getattr(strategies, name)(seed=3, **{**STRATEGY_KWARGS[name], **kwargs})
    loop = StreamRun(strategy, stream(setting, val), lambda i, **kw: make(i, callbacks=[Record(seen)], **kw),
                     fast_training=fast)
    return loop, seen, loop.run()


def assert_identical(a: StreamRun, b: StreamRun) -> None:
    assert torch.equal(a.accuracy_matrix, b.accuracy_matrix)
    torch.testing.assert_close(a._val.accuracy(), b._val.accuracy(), rtol=0, atol=0, equal_nan=True)  # type: ignore[union-attr]
    wa, wb = a.strategy.state_dict(), b.strategy.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    flat_a, flat_b = _tensors(a.strategy.memory_state()), _tensors(b.strategy.memory_state())
    assert len(flat_a) == len(flat_b) and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b))
    assert [p["steps"] for p in a.per_experience] == [p["steps"] for p in b.per_experience]
    assert [p["epochs"] for p in a.per_experience] == [p["epochs"] for p in b.per_experience]


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value, key=str) for t in _tensors(value[k])]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


@pytest.mark.parametrize("name", ["Naive", "EWC", "SI", "ER", "DER", "AGEM", "OGD", "LwF", "GPM", "SupSup"])
def test_the_fast_path_is_bit_identical_to_lightnings_step_loop(name: str) -> None:
    slow, seen_slow, _ = run(name, fast=False)
    fast, seen_fast, _ = run(name, fast=True)
    assert slow.fast_path_refusal == "turned off" and fast.fast_path_refusal is None
    assert_identical(slow, fast)
    assert fast.per_experience[0]["steps"] == 2 * 12  # every batch is an optimizer step
    assert seen_fast == seen_slow and len(seen_fast) == 3 * 3  # logged losses and SupSup's cosine LR


@pytest.mark.parametrize("scheduler", [
    {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}},
    {"class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau", "init_args": {"patience": 0, "factor": 0.5, "mode": "max"}},
])
def test_schedulers_validation_and_early_stopping_match(scheduler: dict[str, Any]) -> None:
    from pytorch_lightning.callbacks import EarlyStopping

    results = []
    for fast in (False, True):
        seen: list[tuple[int, float, float]] = []
        make = trainer_factory(max_epochs=6)
        strategy = strategies.Naive(seed=1, optimizer=STRATEGY_KWARGS["Naive"]["optimizer"], lr_scheduler=scheduler)
        loop = StreamRun(strategy, stream(val=0.25), lambda i, **kw: make(i, callbacks=[
            Record(seen), EarlyStopping("val/acc", mode="max", patience=2)], **kw), fast_training=fast)
        loop.run()
        results.append((loop, seen))
    (slow, seen_slow), (fast, seen_fast) = results
    assert fast.fast_path_refusal is None
    assert_identical(slow, fast)
    assert seen_fast == seen_slow
    assert len({lr for e, lr, _ in seen_fast if e >= 0}) > 1, seen_fast  # the schedule changed the learning rate
    assert any(p["epochs"] < 6 for p in fast.per_experience), fast.per_experience  # and early stopping stopped


def test_a_resumed_fast_run_reproduces_the_uninterrupted_matrix(tmp_path: Any) -> None:
    class Stop(Exception):
        pass

    make = trainer_factory(max_epochs=2)

    def stop_at_2(i: int, **kw: Any) -> pl.Trainer:
        if i == 2:
            raise Stop
        return make(i, **kw)

    def gpm() -> Any:
        return strategies.GPM(seed=2, **STRATEGY_KWARGS["GPM"])

    whole = StreamRun(gpm(), stream(), make)
    whole.run()
    with pytest.raises(Stop):
        StreamRun(gpm(), stream(), stop_at_2, run_dir=tmp_path).run()
    resumed = StreamRun(gpm(), stream(), make, run_dir=tmp_path)
    resumed.run(resume=True)
    assert whole.fast_path_refusal is None and resumed.fast_path_refusal is None
    assert_identical(whole, resumed)


@pytest.mark.parametrize(("trainer_kwargs", "reason"), [
    ({"gradient_clip_val": 1.0}, "clipping"), ({"accumulate_grad_batches": 2}, "accumulation"),
    ({"max_steps": 30}, "max_steps"), ({"limit_train_batches": 0.5}, "partial epochs"),
    ({"callbacks": [type("PerBatch", (pl.Callback,), {"on_train_batch_end": lambda *a: None})()]}, "per-batch"),
])
def test_settings_that_need_lightnings_step_loop_keep_it(trainer_kwargs: dict[str, Any], reason: str) -> None:
    loop = StreamRun(strategies.Naive(seed=0, **STRATEGY_KWARGS["Naive"]), stream(),
                     trainer_factory(max_epochs=1, **trainer_kwargs))
    loop.run()
    assert loop.fast_path_refusal is not None and reason in loop.fast_path_refusal


def test_a_strategy_declares_that_it_needs_the_slow_path() -> None:
    assert strategies.HAT.FAST_TRAINING is False  # it anneals over trainer.num_training_batches
    loop, _, _ = run("HAT", fast=True)
    assert loop.fast_path_refusal == "HAT declares FAST_TRAINING = False"


def test_a_non_finite_loss_names_the_same_batch_on_both_paths() -> None:
    errors = []
    for fast in (False, True):
        strategy = strategies.Naive(seed=0, optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 1e6}})
        with pytest.raises(NonFiniteLossError) as err:
            StreamRun(strategy, stream(), trainer_factory(max_epochs=3), fast_training=fast).run()
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "batch" in errors[0]


class Calls(pl.Callback):
    """Every gradient-path callback hook, in order."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def on_before_zero_grad(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.calls.append("zero_grad")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        self.calls.append(f"backward {float(loss):.6f}")

    def on_after_backward(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.calls.append("after_backward")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.calls.append(f"optimizer_step {type(optimizer).__name__} {trainer.global_step}")


def test_callbacks_see_every_gradient_hook_of_every_step_in_order() -> None:
    seen = []
    for fast in (False, True):
        calls: list[str] = []
        make = trainer_factory(max_epochs=2)
        loop = StreamRun(strategies.GPM(seed=0, **STRATEGY_KWARGS["GPM"]), stream(),
                         lambda i, **kw: make(i, callbacks=[Calls(calls)], **kw), fast_training=fast)
        loop.run()
        seen.append((loop.fast_path_refusal, calls))
    assert seen[1][0] is None and seen[1][1] == seen[0][1]
    assert len(seen[1][1]) == 3 * 2 * 12 * 4 and seen[1][1][-1] == "optimizer_step SGD 23"


@pytest.mark.parametrize("precision", ["bf16-mixed", "64-true"])
@pytest.mark.parametrize("name", ["Naive", "GPM"])
def test_other_precisions_are_bit_identical_too(name: str, precision: str) -> None:
    loops = []
    for fast in (False, True):
        loop = StreamRun(getattr(strategies, name)(seed=1, **STRATEGY_KWARGS[name]), stream(),
                         trainer_factory(max_epochs=2, precision=precision), fast_training=fast)
        loop.run()
        loops.append(loop)
    assert loops[1].fast_path_refusal is None  # (the step context is left around backward and optimizer step)
    assert_identical(*loops)
