"""The one adapter between Avalanche benchmarks and clkit experiences.

Works with both Avalanche generator families: the 0.6 ones (``class_incremental_benchmark``,
``task_incremental_benchmark``, ``benchmark_from_datasets``) and the older ones (``nc_benchmark``,
``ni_benchmark``, ``dataset_benchmark``, ``tensors_benchmark``). Samples may be ``(x, y)`` or ``(x, y, t)``;
classes may come as a set, a list, or not at all (then they are read from the labels). Every experience is
materialised once into tensors, so training batches are plain tensor indexing.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Literal, Optional, cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clkit.data import SETTINGS, ContinualDataModule, DatasetData, Experience, Setting, TensorData
from clkit.errors import ConfigError, DataError

__all__ = ["AvalancheScenario", "FromAvalanche", "experiences_from_benchmark", "materialise"]


def materialise(dataset: Dataset, task_id: int, batch_size: int = 1024) -> TensorData:
    """Read a whole (Avalanche or torch) dataset into tensors; transforms run once, here.

    The task id of every sample is set to ``task_id`` (clkit's task id is the experience's position).
    """
    # a private generator: a DataLoader iterator otherwise draws its base seed from the global RNG
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, generator=torch.Generator())
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    for batch in loader:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise DataError(f"expected samples (x, y) or (x, y, t), got a batch of type {type(batch).__name__}")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]).long())
    if not xs:
        raise DataError("an experience has no samples")
    y = torch.cat(ys)
    return TensorData(torch.cat(xs), y, torch.full_like(y, task_id))


def _classes(exp: Any, data: TensorData) -> list[int]:
    found = getattr(exp, "classes_in_this_experience", None)
    if found is None:
        return sorted(int(c) for c in data.y.unique())
    return sorted(int(c) for c in found)


def _local_labels(data: TensorData, classes: list[int]) -> TensorData:
    """Map labels to 0..C-1 within the experience (task-IL heads), unless they already are."""
    if classes == list(range(len(classes))) and int(data.y.max()) < len(classes):
        return data
    lookup = torch.full((max(max(classes), int(data.y.max())) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    y = lookup[data.y]
    if bool((y < 0).any()):
        raise DataError(f"labels outside the experience's classes {classes}")
    return TensorData(data.x, y, data.t, data.transform)


def experiences_from_benchmark(benchmark: Any, scenario: ContinualDataModule,
                               names: Optional[list[str]] = None) -> list[Experience]:
    """Turn an Avalanche benchmark's train/test streams into clkit experiences.

    Args:
        benchmark: Any Avalanche benchmark with ``train_stream`` and ``test_stream`` of equal length.
        scenario: The clkit scenario; gives the setting (task-IL relabels per task), the seed and ``val_fraction``.
        names: Optional display names, one per experience.
    """
    train_stream, test_stream = list(benchmark.train_stream), list(benchmark.test_stream)
    if len(train_stream) != len(test_stream):
        raise DataError(f"benchmark has {len(train_stream)} train but {len(test_stream)} test experiences")
    out = []
    for i, (tr_exp, te_exp) in enumerate(zip(train_stream, test_stream)):
        train, test = materialise(tr_exp.dataset, i), materialise(te_exp.dataset, i)
        classes = _classes(tr_exp, train)
        if scenario.setting == "task-il":
            train, test = _local_labels(train, classes), _local_labels(test, classes)
        name = names[i] if names else "classes " + ",".join(map(str, classes))
        out.append(scenario.make_experience(i, classes, train, test, name))
    return out


class AvalancheScenario(ContinualDataModule):
    """A scenario defined by an Avalanche benchmark: subclasses implement :meth:`benchmark`."""

    def benchmark(self) -> Any:
        """Build and return the Avalanche benchmark (called once)."""
        raise NotImplementedError

    def experience_names(self) -> Optional[list[str]]:
        return None

    def build(self) -> list[Experience]:
        return experiences_from_benchmark(self.benchmark(), self, self.experience_names())


class FromAvalanche(ContinualDataModule):
    """Any Avalanche benchmark as a clkit scenario: a benchmark object (Python) or a factory path plus its arguments
    (YAML), e.g. ``factory: mypkg.streams.make_benchmark, factory_args: {n_experiences: 5}``.

    - **Test streams**: one test experience per training experience, or a single test stream (new-instance and domain
      benchmarks), which then serves as every column of the accuracy matrix.
    - **Validation**: the benchmark's ``valid_stream`` when it has one (``benchmark_with_validation_stream``), else a
      seeded ``val_fraction`` of each training experience.
    - **Task labels** are the benchmark's own; the setting is ``setting`` when given, else inferred: distinct task
      labels per experience -> task-IL (labels must then be 0..T-1 in stream order, and class labels become ranks
      within the experience), the same label with disjoint classes -> class-IL, else domain-IL.
    - **Train-time transforms** stay random: a training set whose transform draws differently on two reads is read
      through its dataset at every batch (``augment: auto``; ``every_epoch`` forces it, ``never`` reads the eval
      transforms once). Reading per item costs ~0.3 ms; everything else is materialised into tensors once, as long
      as it fits in ``memory_budget_mb``, and read through the dataset beyond it.

    Args:
        benchmark: An Avalanche benchmark (anything with ``train_stream`` and ``test_stream``).
        factory: Dotted path of a callable returning a benchmark (used when ``benchmark`` is not given).
        factory_args: Keyword arguments of ``factory``.
        setting: ``"task-il"``, ``"domain-il"`` or ``"class-il"``; default inferred.
        augment: ``"auto"``, ``"every_epoch"`` or ``"never"``.
        memory_budget_mb: How much of the stream may be materialised as tensors.
        names: Display names of the experiences.
        **kwargs: :class:`clkit.data.ContinualDataModule` arguments (``seed``, ``val_fraction``, ``batch_size``, ...).
    """

    def __init__(self, *, benchmark: Any = None, factory: Optional[str] = None,
                 factory_args: Optional[dict[str, Any]] = None, setting: Optional[str] = None,
                 augment: Literal["auto", "every_epoch", "never"] = "auto", memory_budget_mb: float = 4096.0,
                 names: Optional[list[str]] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if benchmark is None and factory is None:
            raise ConfigError("FromAvalanche needs a benchmark (Python) or a factory path (YAML)")
        if setting is not None and setting not in SETTINGS:
            raise ConfigError(f"setting={setting!r} is not one of {', '.join(SETTINGS)}")
        if augment not in ("auto", "every_epoch", "never"):
            raise ConfigError(f"augment={augment!r} is not one of 'auto', 'every_epoch', 'never'")
        if memory_budget_mb < 0:
            raise ConfigError(f"memory_budget_mb must be >= 0, got {memory_budget_mb}")
        self._benchmark, self.factory, self.factory_args = benchmark, factory, dict(factory_args or {})
        self.declared_setting, self.augment, self.names = setting, augment, names
        self.budget = int(memory_budget_mb * 2**20)
        self.setting = cast(Setting, setting or "class-il")  # the inferred setting once the stream is built

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"FromAvalanche({self.factory.rsplit('.', 1)[-1] if self.factory else type(self._benchmark).__name__})"

    def benchmark(self) -> Any:
        """The Avalanche benchmark (built from ``factory`` on first use)."""
        if self._benchmark is None:
            assert self.factory is not None
            module, _, attr = self.factory.rpartition(".")
            try:
                make = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError, ValueError):
                raise ConfigError(f"factory={self.factory!r} cannot be imported (a dotted path to a callable that "
                                  "returns an Avalanche benchmark)") from None
            try:
                self._benchmark = make(**self.factory_args)
            except TypeError as err:
                raise ConfigError(f"factory {self.factory}: {err}") from None
        return self._benchmark

    def build(self) -> list[Experience]:
        bench = self.benchmark()
        trains, tests = list(bench.train_stream), list(bench.test_stream)
        streams = getattr(bench, "streams", {})
        valids = list(bench.valid_stream) if "valid" in streams or "valid_stream" in streams else None
        if len(tests) == 1 and len(trains) > 1:
            tests = tests * len(trains)  # one test set for the whole stream (NI, domain): every column
        if len(tests) != len(trains) or (valids is not None and len(valids) != len(trains)):
            raise DataError(f"{self.name}: {len(trains)} train, {len(tests)} test and "
                            f"{'no' if valids is None else len(valids)} validation experiences do not pair up")
        labels = [_task_labels(e) for e in trains]
        classes = [sorted(_targets(e.dataset).unique().tolist()) for e in trains]
        self.setting = cast(Setting, self._setting(labels, classes))
        self.task_ids_at_test = self.setting == "task-il"
        self._spent = 0
        out = []
        for i, (tr, te) in enumerate(zip(trains, tests)):
            task = labels[i][0] if self.setting == "task-il" else 0
            train = self._data(tr.dataset, classes[i], task, train=True)
            test = self._data(te.dataset, classes[i], task, train=False)
            name = self.names[i] if self.names else f"experience {i} (classes {','.join(map(str, classes[i][:8]))}"\
                f"{',...' if len(classes[i]) > 8 else ''})"
            if valids is not None:
                val = self._data(valids[i].dataset, classes[i], task, train=False)
                out.append(Experience(i, task, tuple(classes[i]), train, val, test, name))
            else:
                out.append(dataclasses.replace(self.make_experience(i, classes[i], train, test, name), task_id=task))
        return out

    def _setting(self, labels: list[list[int]], classes: list[list[int]]) -> str:
        distinct = len({tuple(ls) for ls in labels}) == len(labels) and all(len(ls) == 1 for ls in labels)
        disjoint = sum(len(c) for c in classes) == len({c for cs in classes for c in cs})
        inferred = "task-il" if distinct and len(labels) > 1 else ("class-il" if disjoint else "domain-il")
        setting = self.declared_setting or inferred
        if setting == "task-il" and [ls[0] for ls in labels] != list(range(len(labels))):
            raise ConfigError(f"{self.name}: task-IL needs task labels 0..{len(labels) - 1} in stream order, got "
                              f"{[ls if len(ls) > 1 else ls[0] for ls in labels]}")
        return setting

    def _data(self, dataset: Any, classes: list[int], task: int, *, train: bool) -> TensorData:
        """One split: read through the dataset (random train transforms, or over budget) or materialised once."""
        if train and self.augment == "never" or not train:
            dataset = _eval_view(dataset)
        y = _targets(dataset)
        if self.setting == "task-il":
            lookup = torch.full((max(classes) + 1,), -1, dtype=torch.long)
            lookup[torch.tensor(classes)] = torch.arange(len(classes))
            y = lookup[y]
        t = torch.full_like(y, task)
        streamed = train and (self.augment == "every_epoch" or self.augment == "auto" and _random_transform(dataset))
        size = len(dataset) * _item_bytes(dataset)
        if streamed or self._spent + size > self.budget:
            return DatasetData(dataset, y, t)
        self._spent += size
        data = materialise(dataset, task)
        return TensorData(data.x, y, t)


def _task_labels(exp: Any) -> list[int]:
    found = getattr(exp.dataset, "targets_task_labels", None)
    if found is not None:
        return sorted({int(v) for v in found})
    return [int(getattr(exp, "task_label", 0) or 0)]


def _targets(dataset: Any) -> Tensor:
    found = getattr(dataset, "targets", None)
    if found is None:
        return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)
    return torch.as_tensor([int(v) for v in found], dtype=torch.long)


def _eval_view(dataset: Any) -> Any:
    """The dataset with its eval-time (deterministic) transforms, where it has transform groups."""
    view = getattr(dataset, "eval", None)
    return view() if callable(view) else dataset


def _item_bytes(dataset: Any) -> int:
    if len(dataset) == 0:
        return 0
    x = torch.as_tensor(dataset[0][0])
    return int(x.numel() * x.element_size())


def _random_transform(dataset: Any, probes: int = 8) -> bool:
    """Whether reading the same items twice under different seeds gives different inputs (a random transform)."""
    from clkit.rng import forked_rng

    rows = range(min(probes, len(dataset)))
    draws = []
    for seed in (0, 1):
        with forked_rng(seed):
            draws.append(torch.stack([torch.as_tensor(dataset[i][0]) for i in rows]))
    return not torch.equal(*draws)
