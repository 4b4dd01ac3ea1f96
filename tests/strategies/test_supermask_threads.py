"""The supermask family gives the same run on any torch thread count (``num_threads`` pins the intra-op threads).

On this stream the first masked layer has fan-in 784, the size from which MKL splits a matmul and its gradients
across threads and rounds differently with 1 and 2 of them; unpinned, the scores (and, for ExSSNeT, the trained
weights) of these runs differ between the two thread counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.toy import ToySplit
from strategies.supermask import ExSSNeT, MaskedMLP, SupSup


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class _FloatSupSup(SupSup):
    """SupSup keeping every task's float scores, so the comparison sees more than the packed masks."""

    KEEP_SCORES = "float"


PATHS: dict[str, tuple[type, dict[str, Any], int]] = {
    "supsup": (_FloatSupSup, {"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}}}, 2),
    "supsup-exhaustive": (_FloatSupSup, {"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
                                         "task_inference": "exhaustive"}, 2),
    "exssnet": (ExSSNeT, {"mask_epochs": 1, "weight_epochs": 1, "mask_lr": 0.01, "keep_scores": "float"}, 2),
    "exssnet-kkt": (ExSSNeT, {"mask_epochs": 1, "weight_epochs": 1, "mask_lr": 0.01, "sim_init": "knn_always",
                              "knn_k": 5, "data_fraction": 0.5}, 2),
}


def _run(path: str, threads: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    torch.set_num_threads(threads)
    cls, kwargs, epochs = PATHS[path]
    stream = ToySplit(num_experiences=3, classes_per_experience=2, setting="task-il", seed=0, features=784,
                      samples_per_class=48, spread=6.0, batch_size=32, val_fraction=0.2)
    strategy = cls(backbone=MaskedMLP(hidden=[64, 32], norm=False), density=0.05, seed=0, **kwargs)
    result = fit_stream(strategy, stream, trainer_factory(max_epochs=epochs))
    assert torch.get_num_threads() == threads  # the process's setting is given back
    return result.accuracy_matrix, strategy.state_dict(), strategy


@pytest.mark.parametrize("path", sorted(PATHS))
def test_same_run_with_one_and_two_threads(path: str) -> None:
    acc1, state1, strategy = _run(path, 1)
    acc2, state2, _ = _run(path, 2)
    assert torch.equal(acc1, acc2)
    assert state1.keys() == state2.keys()
    changed = [k for k in state1 if not torch.equal(state1[k], state2[k])]
    assert not changed, changed  # scores, weights, packed masks, BN statistics: bit for bit
    assert any("kept_scores" in k for k in state1)  # the float state is part of the comparison
    if path == "supsup-exhaustive":
        assert strategy.task_id_accuracy()
