"""Behaviour of SupSup on toy streams: no forgetting by construction, packed masks, task inference, memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from clkit.errors import ConfigError
from clkit.loop import StreamRun, trainer_factory
from clkit.nets import MLP
from scenarios.toy import ToySplit
from strategies.supermask import MaskedMLP, SupSup
from strategies.supermask.layers import TaskBatchNorm
from strategies.supermask.masks import kept_count, unpack_bits
from tests.strategies.kwargs import adam


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is much faster than two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stream(**kwargs: Any) -> ToySplit:
    return ToySplit(n_experiences=3, classes_per_experience=2, setting="task-il", seed=0, **kwargs)


class _Spy(SupSup):
    """Records each task's eval-mode (cached) masks just before they are packed, and every inferred task."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cached: dict[int, list[torch.Tensor]] = {}
        self.inferred: list[tuple[int, list[int]]] = []

    def on_experience_end(self, experience: Any) -> None:
        self.eval()
        self.set_task(experience.task_id)
        with torch.no_grad():
            self.cached[experience.task_id] = [layer._mask().clone() for layer in self._masked()]
        self.train()
        super().on_experience_end(experience)

    def infer_task(self, x: torch.Tensor) -> int:
        task = super().infer_task(x)
        self.inferred.append((task, list(self.learned)))
        return task


def test_no_forgetting_fixed_weights_and_packed_masks() -> None:
    stream = _stream()
    strategy = _Spy(optimizer=adam(0.05, 1e-4), density=0.3)
    acc = StreamRun(strategy, stream, trainer_factory(max_epochs=3)).run().accuracy_matrix
    for j in range(3):
        for i in range(j, 3):
            assert acc[i, j] == acc[j, j], (i, j)  # exactly: masks, weights and BN of task j never change
    assert acc.diagonal().mean() > 0.8  # the masks did learn the tasks
    assert strategy.extra_results(acc)["max_forgetting"] == 0.0  # exactly zero

    reference = SupSup(optimizer=adam(0.05, 1e-4), density=0.3)
    reference.bind(stream.spec)
    for trained, fresh in zip(strategy._masked(), reference._masked()):
        assert torch.equal(trained.weight, fresh.weight)  # W is never trained
    for task, masks in strategy.cached.items():
        for layer, cached in zip(strategy._masked(), masks):
            packed = unpack_bits(layer.masks.get(task), layer.weight.shape)
            assert torch.equal(packed, cached.bool())  # bit for bit
            assert int(packed.sum()) == kept_count(layer.weight.numel(), 0.3)
        assert len(strategy._masked()[0].scores) == 0  # float scores dropped (keep_scores="bits")


def test_state_bytes_count_masks_union_and_bn() -> None:
    stream = ToySplit(n_experiences=2, classes_per_experience=2, setting="task-il", seed=0)
    strategy = SupSup(optimizer=adam(0.05, 1e-4), density=0.3, backbone=MaskedMLP(hidden=[32, 16]))
    StreamRun(strategy, stream, trainer_factory(max_epochs=1)).run()
    per_task_bits = sum((n + 7) // 8 for n in (8 * 32, 32 * 16, 16 * 2))  # two hidden layers + masked head
    assert strategy.mask_bytes_per_task() == per_task_bits
    bn_bytes = 2 * ((32 + 16) * 2 * 4 + 2 * 8)  # 2 tasks x (mean, var float32 + num_batches_tracked int64)
    assert strategy.strategy_state_bytes() == 2 * per_task_bits + per_task_bits + bn_bytes  # masks + union + BN


@pytest.mark.parametrize("mode,bn_infer,superfluous", [("oneshot", "batch", 0), ("binary", "batch", 0),
                                                       ("oneshot", "mixture", 0), ("exhaustive", "batch", 0),
                                                       ("exhaustive", "batch", 4)])
def test_task_inference_finds_the_task(mode: str, bn_infer: str, superfluous: int) -> None:
    # Seeded: unseeded, the strategy took torch's per-process seed and the one-shot cases failed now and then (a
    # first-order guess over three 2-output toy tasks: seed 3 misses one of three batches). One-shot with
    # superfluous outputs is not reliable on this toy stream (4 of seeds 0-5 miss a batch); its gain is measured on
    # split MNIST-5k (docs/results/supermask.md), its mechanics in test_superfluous_outputs_are_trained_low_*.
    stream = _stream()
    strategy = _Spy(optimizer=adam(0.05, 1e-4), density=0.3, task_inference=mode, bn_infer=bn_infer,
                    superfluous=superfluous, seed=0)
    acc = StreamRun(strategy, stream, trainer_factory(max_epochs=3)).run().accuracy_matrix
    ids = strategy.task_id_accuracy()
    assert sorted(ids) == [0, 1, 2] and min(ids.values()) >= 0.9
    assert acc[-1].mean() > 0.8  # classification with the inferred masks
    assert strategy.inferred and all(task in learned for task, learned in strategy.inferred)  # never unlearned slots
    assert any(len(learned) == 1 for _, learned in strategy.inferred)  # row 0 had a single candidate


def test_task_inference_on_a_one_example_batch() -> None:
    """``bn_infer="batch"`` cannot normalise one example: such a batch (a test set's last) uses the stored statistics."""
    stream = _stream()
    strategy = _Spy(optimizer=adam(0.05, 1e-4), density=0.3, task_inference="oneshot", bn_infer="batch")
    StreamRun(strategy, stream, trainer_factory(max_epochs=3)).run()
    strategy.eval()
    hits = 0
    for exp in stream.experiences:
        x, _, t = exp.test[torch.arange(4)]
        for row in range(4):
            hits += int(strategy.infer_task(x[row: row + 1]) == int(t[row]))
    assert hits >= 8  # one example carries far less evidence than a batch, but well above chance (4 of 12)


def test_erdos_renyi_density_per_layer() -> None:
    strategy = SupSup(density_mode="erdos_renyi", er_scale=2.0, backbone=MaskedMLP(hidden=[32, 16]))
    strategy.bind(_stream().spec)
    for layer in strategy._masked():
        c_out, c_in = layer.weight.shape
        assert layer.density == pytest.approx(min(0.5, 2.0 * (c_out + c_in) / (c_out * c_in)))
    assert len([m for m in strategy.modules() if isinstance(m, TaskBatchNorm)]) == 2


def test_rejects_bad_config_and_settings() -> None:
    with pytest.raises(ConfigError, match="masked backbone"):
        SupSup(backbone=MLP())
    with pytest.raises(ConfigError, match="task_inference"):
        SupSup(task_inference="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="task-il"):
        SupSup().bind(ToySplit(n_experiences=2, setting="class-il", seed=0).spec)
    with pytest.raises(ConfigError, match="density"):
        SupSup(density=0.0)


def test_mask_overlap_diagnostic() -> None:
    strategy = SupSup(optimizer=adam(0.05, 1e-4), density=0.3, backbone=MaskedMLP(hidden=[32, 16]))
    acc = StreamRun(strategy, _stream(), trainer_factory(max_epochs=1)).run().accuracy_matrix
    overlap = strategy.extra_results(acc)["mask_overlap"]
    assert [overlap[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    layers = strategy._masked()
    both = sum(int((layer.bool_mask(0) & layer.bool_mask(2)).sum()) for layer in layers)
    assert overlap[0][2] == both / sum(int(layer.bool_mask(0).sum()) for layer in layers)
    assert 0.0 < overlap[0][2] < 1.0


def test_superfluous_outputs_are_trained_low_and_never_predicted() -> None:
    stream = _stream()
    strategy = SupSup(optimizer=adam(0.05, 1e-4), density=0.3, superfluous=3, backbone=MaskedMLP(hidden=[32, 16]))
    StreamRun(strategy, stream, trainer_factory(max_epochs=3)).run()
    assert strategy.heads[0].weight.shape[0] == 2 + 3
    strategy.eval()
    x, y, t = stream.experiences[1].test[torch.arange(16)]
    with torch.no_grad():
        logits = strategy(x, t)
    assert logits.shape == (16, 5)
    assert (logits[:, 2:].max(dim=1).values < logits[:, :2].max(dim=1).values).float().mean() > 0.9
    assert int(strategy.predict(x, t).max()) < 2  # predictions range over the classes only
