"""The rehearsal buffer: budget, reservoir uniformity, class balance, seeding and CL memory."""

from __future__ import annotations

import pytest
import torch

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError
from clkit.module import memory_bytes
from strategies.rehearsal import Rehearsal


def offer(buffer: Rehearsal, n: int, batch: int = 25) -> None:
    """Offer samples 0..n-1 (x = the sample's index) to the reservoir in batches."""
    buffer.on_experience_start(_experience(0, torch.zeros(1, dtype=torch.long)))
    for start in range(0, n, batch):
        idx = torch.arange(start, min(n, start + batch))
        buffer.buffer_observe(idx.float().unsqueeze(1), idx % 3, torch.zeros_like(idx))


def _experience(index: int, y: torch.Tensor, t: int | None = None) -> Experience:
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1) + 1000 * index
    tt = torch.full_like(y, index if t is None else t)
    data = TensorData(x, y, tt)
    return Experience(index, index, tuple(sorted(set(y.tolist()))), data, None, data)


def test_reservoir_keeps_the_budget_and_samples_uniformly() -> None:
    first_half = 0
    for seed in range(200):
        buffer = Rehearsal(buffer_size=20, seed=seed)
        offer(buffer, 400)
        x = buffer.buffer["x"].squeeze(1)
        assert buffer.buffer_len == 20 and buffer.buffer_seen == 400 and len(x.unique()) == 20
        first_half += int((x < 200).sum())
    # each sample is kept with probability 20/400: half of the 4,000 kept samples come from the first half
    assert abs(first_half / 4000 - 0.5) < 0.03, first_half


def test_reservoir_is_seeded_by_the_strategy_seed_only() -> None:
    a, b, c = Rehearsal(buffer_size=30, seed=1), Rehearsal(buffer_size=30, seed=1), Rehearsal(buffer_size=30, seed=2)
    torch.manual_seed(0)
    offer(a, 300)
    torch.manual_seed(1)
    offer(b, 300)
    offer(c, 300)
    assert torch.equal(a.buffer["x"], b.buffer["x"]) and not torch.equal(a.buffer["x"], c.buffer["x"])


def test_the_reservoir_stores_extra_fields_and_counts_them_as_memory() -> None:
    buffer = Rehearsal(buffer_size=5, seed=0)
    buffer.on_experience_start(_experience(0, torch.zeros(1, dtype=torch.long)))
    x = torch.arange(4.0).unsqueeze(1)
    buffer.buffer_observe(x, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), logits=x * 2)
    assert torch.equal(buffer.buffer["logits"], buffer.buffer["x"] * 2)
    assert memory_bytes(buffer.memory_state()) == buffer.strategy_state_bytes() == 4 * 4 + 4 * 8 + 4 * 8 + 4 * 4  # x, y, t, logits


def test_class_balanced_splits_the_budget_over_task_label_pairs() -> None:
    buffer = Rehearsal(buffer_size=10, buffer_policy="class_balanced", seed=0)
    buffer.buffer_rebalance(_experience(0, torch.tensor([0, 1] * 30)))
    assert sorted(torch.bincount(buffer.buffer["y"]).tolist()) == [5, 5]
    kept = {c: buffer.buffer["x"][buffer.buffer["y"] == c].squeeze(1).tolist() for c in (0, 1)}
    # the same labels in a second task are other classes (task-IL's local labels, domain-IL's shared ones)
    buffer.buffer_rebalance(_experience(1, torch.tensor([0, 1, 2] * 30)))
    counts = {key: len(idx) for key, idx in buffer.buffer_groups()}
    assert counts == {(0, 0): 2, (0, 1): 2, (1, 0): 2, (1, 1): 2, (1, 2): 2}
    for c in (0, 1):  # an old class keeps the first samples of its share
        old = buffer.buffer["x"][(buffer.buffer["y"] == c) & (buffer.buffer["t"] == 0)].squeeze(1).tolist()
        assert old == kept[c][:2]
    assert buffer.buffer_len == 10


def test_class_balanced_gives_the_remainder_to_the_first_classes_and_takes_a_selector() -> None:
    buffer = Rehearsal(buffer_size=7, buffer_policy="class_balanced", seed=0)
    buffer.buffer_rebalance(_experience(0, torch.tensor([0, 1, 2] * 10)),
                            select=lambda samples, n: torch.arange(n).flip(0))
    assert [len(idx) for _, idx in buffer.buffer_groups()] == [3, 2, 2]
    first = buffer.buffer["x"][buffer.buffer["y"] == 0].squeeze(1).tolist()
    assert first == [6.0, 3.0, 0.0]  # the selector's order: samples 2, 1, 0 of class 0 (rows 6, 3, 0)


@pytest.mark.parametrize("bad", [{"buffer_size": 0}, {"buffer_policy": "fifo"}])
def test_bad_buffer_arguments_are_one_line_errors(bad: dict) -> None:
    with pytest.raises(ConfigError, match="buffer_size|buffer_policy"):
        Rehearsal(**bad)
