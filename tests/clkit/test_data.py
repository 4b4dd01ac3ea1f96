"""Experiences, loaders, validation splits and task reordering."""

from __future__ import annotations

import pytest
import torch

from clkit.data import TensorData, make_loader, split_train_val
from clkit.errors import ConfigError, DataError
from scenarios.toy import ToySplit


def _data(n: int = 10) -> TensorData:
    return TensorData(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 3, torch.zeros(n, dtype=torch.long))


def test_loader_yields_whole_batches_by_indexing_and_is_seeded() -> None:
    data = _data(10)
    batches = list(make_loader(data, 4, shuffle=True, seed=3))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[0].squeeze(1) for b in batches]).long()
    assert sorted(seen.tolist()) == list(range(10))
    again = torch.cat([b[0].squeeze(1) for b in make_loader(data, 4, shuffle=True, seed=3)]).long()
    assert torch.equal(seen, again)
    other = torch.cat([b[0].squeeze(1) for b in make_loader(data, 4, shuffle=True, seed=4)]).long()
    assert not torch.equal(seen, other)
    for x, y, t in batches:  # labels stay attached to their inputs
        assert torch.equal(y, x.squeeze(1).long() % 3)


def test_validation_split_is_random_seeded_and_disjoint() -> None:
    data = TensorData(torch.arange(100.0).unsqueeze(1), torch.arange(100) // 10, torch.zeros(100, dtype=torch.long))
    train, val = split_train_val(data, 0.2, seed=0)
    assert val is not None and len(val) == 20 and len(train) == 80
    ids = torch.cat([train.x, val.x]).squeeze(1)
    assert sorted(ids.tolist()) == list(range(100))
    assert len(val.y.unique()) > 2  # not "the first 20 %", which would hold only classes 0 and 1
    train2, val2 = split_train_val(data, 0.2, seed=0)
    assert torch.equal(val.x, val2.x)
    with pytest.raises(DataError, match="val_fraction"):
        split_train_val(data, 1.0, seed=0)
    with pytest.raises(DataError, match="empty"):
        split_train_val(_data(3), 0.01, seed=0)


def test_task_order_and_seeded_shuffle() -> None:
    base = ToySplit(n_experiences=4, setting="task-il", seed=1).experiences
    ordered = ToySplit(n_experiences=4, setting="task-il", seed=1, task_order=[2, 0, 3, 1]).experiences
    assert [e.classes for e in ordered] == [base[i].classes for i in (2, 0, 3, 1)]
    assert [e.index for e in ordered] == [0, 1, 2, 3]
    assert all(bool((e.train.t == e.index).all()) and bool((e.test.t == e.index).all()) for e in ordered)
    assert torch.equal(ordered[0].test.x, base[2].test.x)
    shuffled = ToySplit(n_experiences=4, setting="task-il", seed=1, shuffle_tasks=True).experiences
    again = ToySplit(n_experiences=4, setting="task-il", seed=1, shuffle_tasks=True).experiences
    assert [e.classes for e in shuffled] == [e.classes for e in again]
    with pytest.raises(ConfigError, match="permutation"):
        ToySplit(n_experiences=4, task_order=[0, 1, 1, 2]).experiences


def test_test_passes_add_up_and_reshuffle() -> None:
    import pytorch_lightning as pl

    from clkit.loop import StreamRun, trainer_factory
    from strategies import Naive

    stream = ToySplit(n_experiences=2, setting="task-il", seed=0, eval_batch_size=5)
    orders = [[int(x[0, 0] * 1e4) for x, _, _ in stream.test_dataloader(seed=p)[0]] for p in (0, 1)]
    assert orders[0] != orders[1]  # each pass sees other batches
    pl.seed_everything(0, verbose=False)
    run = StreamRun(Naive(), stream, trainer_factory(max_epochs=1), test_passes=3)
    run.run()
    n_test = torch.tensor([len(e.test) for e in stream.experiences], dtype=torch.float64)
    assert run._test is not None and torch.equal(run._test.total, 3 * n_test.expand(2, 2))


def test_single_experience_stream() -> None:
    import pytorch_lightning as pl

    from clkit.loop import StreamRun, trainer_factory
    from strategies import Naive

    pl.seed_everything(0, verbose=False)
    naive = Naive(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}})
    result = StreamRun(naive, ToySplit(n_experiences=1, setting="class-il", seed=0), trainer_factory(max_epochs=3)).run()
    acc = result.accuracy_matrix
    assert acc.shape == (1, 1) and result.random_init_accuracy.shape == (1,) and float(acc[0, 0]) > 0.6


def test_val_split_first_holds_out_the_first_samples() -> None:
    from scenarios.toy import ToySplit

    whole = ToySplit(n_experiences=2, val_fraction=0.0).experiences
    first = ToySplit(n_experiences=2, val_fraction=0.25, val_split="first").experiences
    rand = ToySplit(n_experiences=2, val_fraction=0.25).experiences
    for w, f, r in zip(whole, first, rand):
        n_val = len(f.val)  # type: ignore[arg-type]
        assert torch.equal(f.val.x, w.train.x[:n_val]) and torch.equal(f.train.x, w.train.x[n_val:])  # type: ignore
        assert len(r.val) == n_val and not torch.equal(r.val.x, f.val.x)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="val_split='last'"):
        ToySplit(val_split="last")  # type: ignore[arg-type]
