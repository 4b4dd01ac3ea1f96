"""scenarios.FromAvalanche: any Avalanche benchmark, from Python or from YAML, with every generator family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clkit.data import DatasetData, TensorData
from clkit.errors import ConfigError
from clkit.loop import fit_stream, trainer_factory
from scenarios import FromAvalanche
from strategies import Naive
from tests.scenarios import avalanche_streams

FACTORY = "tests.scenarios.avalanche_streams."


def _stream(name: str, **kwargs: object) -> FromAvalanche:
    args = kwargs.pop("factory_args", {})
    return FromAvalanche(factory=FACTORY + name, factory_args=args, seed=0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "args", "setting", "n"), [
    ("ni", {}, "domain-il", 3), ("nc", {}, "class-il", 5), ("nc", {"task_labels": True}, "task-il", 5),
    ("tensors", {}, "domain-il", 3), ("class_incremental", {}, "class-il", 5), ("from_datasets", {}, "domain-il", 3),
])
def test_every_generator_family_builds_with_its_setting(name: str, args: dict, setting: str, n: int) -> None:
    stream = _stream(name, factory_args=args)
    exps = stream.experiences
    assert stream.setting == setting and len(exps) == n and stream.spec.setting == setting
    for i, e in enumerate(exps):
        assert len(e.train) > 0 and len(e.test) > 0 and e.val is not None and len(e.val) > 0
        if setting == "task-il":  # the benchmark's own task labels, class labels local to the task
            assert e.task_id == i and bool((e.train.t == i).all()) and e.train.y.max() < len(e.classes)
        else:
            assert e.task_id == 0 and bool((e.test.t == 0).all())  # no task ids in the benchmark: none invented
    if setting == "class-il":
        assert sorted(c for e in exps for c in e.classes) == list(range(10))


def test_a_single_test_stream_serves_every_column() -> None:
    exps = _stream("ni").experiences  # ni_benchmark: 3 training experiences, one test experience
    assert all(torch.equal(e.test.x, exps[0].test.x) for e in exps)
    assert len({len(e.train) for e in exps}) <= 2  # the instances are split, the classes are not
    assert all(e.classes == tuple(range(10)) for e in exps)


def test_the_benchmarks_validation_stream_is_the_one_used() -> None:
    bench = avalanche_streams.nc_with_validation()
    stream = FromAvalanche(benchmark=bench, seed=0, val_fraction=0.5)  # (val_fraction does not apply here)
    for e, valid, train in zip(stream.experiences, bench.valid_stream, bench.train_stream):
        assert len(e.val) == len(valid.dataset) and len(e.train) == len(train.dataset)  # type: ignore[arg-type]
        xs = torch.stack([torch.as_tensor(valid.dataset[i][0]) for i in range(len(valid.dataset))])
        assert torch.equal(e.val.x, xs)  # type: ignore[union-attr]


def test_train_time_augmentations_vary_across_reads_and_runs_stay_reproducible() -> None:
    stream = _stream("nc", factory_args={"augmented": True})
    train, test = stream.experiences[0].train, stream.experiences[0].test
    assert isinstance(train, DatasetData) and isinstance(test, TensorData)  # augmented: read every epoch; eval: once
    rows = torch.arange(32)
    first, second = train[rows][0], train[rows][0]
    assert not torch.equal(first, second)  # a new draw at every read, so at every epoch
    plain = _stream("nc").experiences[0].train
    assert isinstance(plain, TensorData) and not isinstance(plain, DatasetData)
    runs = [fit_stream(Naive(seed=0), _stream("nc", factory_args={"augmented": True}), trainer_factory(max_epochs=2))
            for _ in range(2)]
    assert torch.equal(runs[0].accuracy_matrix, runs[1].accuracy_matrix)  # draws come from the seeded generator


def test_a_memory_budget_streams_what_does_not_fit() -> None:
    small = _stream("nc", memory_budget_mb=0.05)  # room for about one split
    kinds = [type(d) for e in small.experiences for d in (e.train, e.test)]
    assert DatasetData in kinds and TensorData in kinds
    a = fit_stream(Naive(seed=0), small, trainer_factory(max_epochs=1)).accuracy_matrix
    b = fit_stream(Naive(seed=0), _stream("nc"), trainer_factory(max_epochs=1)).accuracy_matrix
    assert torch.equal(a, b)  # the same numbers whether materialised or read through the datasets


def test_bad_arguments_are_one_line() -> None:
    with pytest.raises(ConfigError, match="needs a benchmark"):
        FromAvalanche()
    with pytest.raises(ConfigError, match="cannot be imported"):
        FromAvalanche(factory="tests.nope.make").experiences
    with pytest.raises(ConfigError, match="setting='task'"):
        FromAvalanche(factory=FACTORY + "ni", setting="task")
    with pytest.raises(ConfigError, match="task-IL needs task labels"):
        _stream("ni", setting="task-il").experiences


@pytest.mark.parametrize(("name", "args"), [("ni", {}), ("nc_with_validation", {}), ("nc", {"augmented": True})])
def test_clkit_fit_runs_an_avalanche_benchmark_from_yaml(name: str, args: dict, tmp_path: Path) -> None:
    from clkit.cli import main

    config = tmp_path / "bench.yaml"
    config.write_text(f"""model: {{class_path: strategies.Naive}}
data:
  class_path: scenarios.FromAvalanche
  init_args: {{factory: {FACTORY}{name}, factory_args: {json.dumps(args)}, seed: 0}}
trainer: {{max_epochs: 1, enable_progress_bar: false}}
""")
    main(["fit", "--config", str(config), "--run_dir", str(tmp_path / "run")])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["scenario"] == f"FromAvalanche({name})" and results["val_accuracy_matrix"] is not None
