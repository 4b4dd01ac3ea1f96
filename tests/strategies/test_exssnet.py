"""Behaviour of ExSSNeT on toy streams: the exclusive-mask invariant, gradient masking, KKT, best-state restore."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Optional

import pytest
import torch

from clkit.data import ContinualDataModule, Experience, TensorData
from clkit.loop import StreamRun, trainer_factory
from scenarios.toy import ToySplit
from strategies.supermask.exssnet import BestState, ExSSNeT
from strategies.supermask.masks import topk_mask, unpack_bits

WEIGHT_LR = 0.01
FAST = {"density": 0.3, "mask_epochs": 2, "weight_epochs": 2, "mask_lr": 0.05, "seed": 0,
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": WEIGHT_LR}}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is much faster than two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stream(n: int = 3, **kwargs: Any) -> ToySplit:
    return ToySplit(n_experiences=n, classes_per_experience=2, setting="task-il", seed=0, **kwargs)


class _Spy(ExSSNeT):
    """After each experience: task 0's eval logits on a fixed batch and ``W * M_i`` of every learned task.

    Before each optimizer step of the weight phase: checks that gradients outside ``E_t`` are zero and that
    ``E_t`` is inside ``M_t`` and disjoint from the union ``U_t`` of earlier masks.
    """

    def __init__(self, probe: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probe = probe
        self.logits0: list[torch.Tensor] = []
        self.used: list[dict[int, list[torch.Tensor]]] = []
        self.checked_steps = 0
        self.inits: dict[int, list[torch.Tensor]] = {}
        self.val_after: dict[int, float] = {}

    def transform_gradients(self) -> None:
        super().transform_gradients()
        if self.phase != "weight" or not self.exclusive:
            return
        task = self.current_experience.task_id  # type: ignore[union-attr]
        for layer, keep in zip(self._masked(), self.exclusive_masks):
            union = unpack_bits(layer.union, layer.weight.shape)
            assert not (keep.bool() & union).any() and not (keep.bool() & ~layer.bool_mask(task)).any()
            assert layer.weight.grad is not None and not layer.weight.grad[~keep.bool()].any()
        self.checked_steps += 1

    def initial_scores(self, experience: Experience) -> Optional[list[torch.Tensor]]:
        inits = super().initial_scores(experience)
        if inits is not None:
            self.inits[experience.task_id] = inits
        return inits

    def on_experience_end(self, experience: Experience) -> None:
        super().on_experience_end(experience)
        self.eval()
        with torch.no_grad():
            self.logits0.append(self(self.probe, torch.zeros(len(self.probe), dtype=torch.long)).clone())
            self.used.append({t: [(l.weight * l.bool_mask(t)).clone() for l in self._masked()] for t in self.learned})
            if experience.val is not None:
                x, y, t = experience.val[torch.arange(len(experience.val))]
                self.val_after[experience.task_id] = float((self(x, t).argmax(-1) == y).float().mean())
        self.train()


def _run(stream: ContinualDataModule, **kwargs: Any) -> tuple[_Spy, torch.Tensor]:
    probe = stream.experiences[0].test.x[:16]
    strategy = _Spy(probe, **{**FAST, "debug_checks": True, **kwargs})
    return strategy, StreamRun(strategy, stream, trainer_factory(max_epochs=1)).run().accuracy_matrix


@pytest.mark.parametrize("opt", [{}, {"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": WEIGHT_LR, "weight_decay": 0.05}}},
                                 {"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": WEIGHT_LR, "momentum": 0.9, "weight_decay": 0.05}}}],
                         ids=["adam", "adam-wd-post-step", "sgd-momentum-post-step"])
def test_old_tasks_are_bit_identical(opt: dict[str, Any]) -> None:
    strategy, acc = _run(_stream(), **opt)
    assert strategy.post_step == bool(opt)
    for j in range(3):
        for i in range(j, 3):
            assert acc[i, j] == acc[j, j], (i, j)
    for later in strategy.logits0[1:]:
        assert torch.equal(later, strategy.logits0[0])  # task 0's logits never change
    for i, snapshot in enumerate(strategy.used):
        for task, tensors in snapshot.items():
            for before, after in zip(tensors, strategy.used[-1][task]):
                assert torch.equal(before, after), (i, task)  # no weight used by an earlier mask changes
    assert strategy.checked_steps > 0
    first = strategy.used[0][0]
    assert any(not torch.equal(a, b) for a, b in zip(first, strategy.used[-1][2]))  # later tasks did train weights
    assert acc.diagonal().mean() > 0.8


def test_ssnet_ablation_forgets() -> None:
    strategy, _ = _run(_stream(2), exclusive=False, debug_checks=False)
    assert not torch.equal(strategy.logits0[1], strategy.logits0[0])  # shared weights were overwritten


def test_best_validation_state_is_restored() -> None:
    strategy, _ = _run(_stream(2, val_fraction=0.3), mask_epochs=3, weight_epochs=3, select="val_acc")
    assert set(strategy.val_after) == {0, 1}
    for task, acc in strategy.val_after.items():
        kept = strategy.best_log[task]
        assert acc == pytest.approx(kept["val_acc"])  # the carried state is the best one
        assert kept["selected_on"] == "val_acc" and 0 <= kept["mask"] <= 3 and 0 <= kept["weight"] <= 3
        assert kept["weight"] == 0 or kept["mask"] == 3  # a weight epoch always ends the whole mask phase


def test_ties_go_to_the_later_epoch() -> None:
    module = ExSSNeT(**FAST)
    module.bind(_stream(1).spec)
    module.add_task(0)
    later, strict = BestState("val_acc"), BestState("val_acc", strict=True)
    for epoch in range(4):
        for best in (later, strict):
            best.offer(module, 0, 1.0, 0.5 - 0.1 * epoch, epoch)
    assert later.epoch == 3 and strict.epoch == 0  # the official strict '>' keeps the first of equal epochs
    by_loss = BestState("val_loss")
    for epoch, loss in enumerate([0.5, 0.3, 0.4, 0.3]):
        by_loss.offer(module, 0, 0.9, loss, epoch)
    assert by_loss.epoch == 3


@pytest.mark.parametrize("select", ["val_acc", "val_loss"])
def test_weight_phase_survives_a_saturated_validation_split(select: str) -> None:
    """Validation accuracy is 1.0 from the first epoch on (as on digits): the weight phase must still be kept."""
    stream = _stream(2, val_fraction=0.1)
    strategy, acc = _run(stream, mask_epochs=2, weight_epochs=3, select=select)
    assert all(a == 1.0 for a in strategy.val_after.values())  # saturated: every epoch ties on accuracy
    fresh = ExSSNeT(**FAST)
    fresh.bind(stream.spec)
    for exp in (0, 1):
        kept = strategy.best_log[exp]
        assert kept["selected_on"] == select and kept["mask"] == 2 and kept["weight"] >= 1, kept
    moved = [not torch.equal(a.weight * a.bool_mask(0), b.weight * a.bool_mask(0))
             for a, b in zip(strategy._masked(), fresh._masked())]
    assert any(moved)  # task 0's kept state includes trained weights
    results = StreamRun(ExSSNeT(**{**FAST, "select": select}), stream, trainer_factory()).run().results()
    assert set(results["kept_epochs"]) == {0, 1} and results["kept_epochs"][0]["selected_on"] == select


class _Repeat(ContinualDataModule):
    """Task 0: label = sign(x_1); tasks 1 and 2: label = sign(x_0), task 2 a fresh sample of task 1's problem."""

    setting = "task-il"
    task_ids_at_test = True

    def build(self) -> list[Experience]:
        g = torch.Generator().manual_seed(self.seed)
        out = []
        for i, dim in enumerate([1, 0, 0]):
            x = torch.randn(400, 16, generator=g)
            y = (x[:, dim] > 0).long()
            t = torch.full((400,), i)
            train, test = TensorData(x[:300], y[:300], t[:300]), TensorData(x[300:], y[300:], t[300:])
            out.append(self.make_experience(i, [2 * i, 2 * i + 1], train, test))
        return out


@pytest.mark.parametrize("keep", ["float", "bits"])
def test_kkt_picks_the_repeated_task(keep: str) -> None:
    stream = _Repeat(seed=0, val_fraction=0.0, batch_size=32)
    strategy, _ = _run(stream, sim_init="knn_best", knn_k=15, data_fraction=0.5, keep_scores=keep, mask_epochs=3,
                       weight_epochs=1)
    last = strategy.kkt_log[-1]
    assert last["task"] == 2 and last["sources"] == [1]
    assert last["knn_acc"][1] > last["knn_acc"][0]
    if keep == "bits":  # the mask-based init reproduces the source mask exactly
        for layer, init in zip(strategy._masked(), strategy.inits[2]):
            assert torch.equal(topk_mask(init, layer.density).bool(), layer.bool_mask(1))
    else:
        assert all(len(layer.kept_scores.tasks()) == 3 for layer in strategy._masked())


def test_faithful_rows_last_epoch_row_then_best_state_carried() -> None:
    stream = _stream(2, val_fraction=0.2)
    exps = stream.experiences
    strategy = ExSSNeT(faithful=True, **FAST)
    strategy.bind(stream.spec)
    assert strategy.val_data(exps[0]) is exps[0].test  # row 3: the official code validates on test
    strategy._enter_experience(exps[0])
    optimizers, _ = strategy.configure_optimizers()
    assert optimizers[0].param_groups[0]["lr"] == WEIGHT_LR  # row 1: mask lr replaced by the weight lr
    layers = strategy._masked()
    strategy.best.offer(strategy, 0, 0.9, 0.3, epoch=0)
    best = [(layer.bool_mask(0), layer.weight.clone()) for layer in layers]
    with torch.no_grad():  # later, worse epochs move scores and weights
        for layer in layers:
            layer.scores["0"].copy_(torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(1)))
            layer.weight.mul_(-1)
    last = [layer.bool_mask(0) for layer in layers]
    strategy._exit_experience(exps[0])
    for layer, mask in zip(layers, last):  # row 4: the accuracy row is computed from the last epoch's state
        assert torch.equal(unpack_bits(layer.masks.get(0), layer.weight.shape), mask)
    strategy._enter_experience(exps[1])
    for layer, (mask, weight) in zip(layers, best):  # ... and the next task starts from the best state
        assert torch.equal(unpack_bits(layer.masks.get(0), layer.weight.shape), mask)
        assert torch.equal(unpack_bits(layer.union, layer.weight.shape), mask)
        assert torch.equal(layer.weight, weight)
    assert not torch.equal(best[0][0], last[0])


class _ProbeSpy(ExSSNeT):
    """Records how many training examples every KKT probe saw."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probed: list[int] = []

    def _penultimate(self, task: int, data: TensorData, rows: Optional[torch.Tensor],
                     batches: int) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = super()._penultimate(task, data, rows, batches)
        self.probed.append(len(labels))
        return feats, labels


@pytest.mark.parametrize("batch_size", [8, 16])
def test_faithful_kkt_subset_is_counted_in_the_runs_batches(batch_size: int) -> None:
    """Official subset: the first ``ceil(f * batches) + 1`` training batches, batches of the run's size."""
    stream = _stream(2, samples_per_class=64, batch_size=batch_size)
    strategy = _ProbeSpy(**{**FAST, "faithful": True, "sim_init": "knn_always", "knn_k": 5, "data_fraction": 0.2})
    StreamRun(strategy, stream, trainer_factory(max_epochs=1)).run()
    n = len(stream.experiences[1].train)
    batches = math.ceil(0.2 * math.ceil(n / batch_size)) + 1
    assert strategy.spec is not None and strategy.spec.batch_size == batch_size
    assert strategy.probed == [min(n, batches * batch_size)]  # one probe (task 0) on task 1's data
    assert strategy.probed[0] != min(n, (math.ceil(0.2 * math.ceil(n / 64)) + 1) * 64)  # not batches of 64
