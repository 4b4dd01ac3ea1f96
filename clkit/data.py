"""Experiences and scenarios: the data contract between streams and strategies.

Strategies never see Avalanche types: every experience holds :class:`TensorData`, plain tensors that are batched
by indexing (no per-sample Python work). Scenarios subclass :class:`ContinualDataModule`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from clkit.errors import ConfigError, DataError, check_finite

__all__ = [
    "SETTINGS",
    "BatchIndexSampler",
    "ContinualDataModule",
    "DatasetData",
    "EvalBatches",
    "Experience",
    "Setting",
    "StreamSpec",
    "TensorData",
    "make_loader",
    "split_train_val",
]

Setting = Literal["task-il", "domain-il", "class-il"]
SETTINGS: tuple[str, ...] = ("task-il", "domain-il", "class-il")

Batch = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True, eq=False)
class TensorData(Dataset):
    """Samples ``x`` with labels ``y`` and task ids ``t``, indexed a whole batch at a time.

    ``data[idx]`` with an int, a list or a tensor of indices returns ``(x[idx], y[idx], t[idx])``; ``transform``
    (optional) is applied to the batch of inputs, e.g. ``uint8 -> float`` normalisation.
    """

    x: Tensor
    y: Tensor
    t: Tensor
    transform: Optional[Callable[[Tensor], Tensor]] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.y.shape != (n,) or self.t.shape != (n,):
            raise DataError(f"TensorData needs y and t of shape ({n},), got {tuple(self.y.shape)} and "
                            f"{tuple(self.t.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, idx: Any) -> Batch:
        if isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)  # (a tensor from BatchIndexSampler passes straight through)
        x = self.x[idx]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.y[idx], self.t[idx]

    def subset(self, idx: Tensor) -> TensorData:
        """The samples at ``idx`` (a new object sharing nothing mutable with this one)."""
        return TensorData(self.x[idx], self.y[idx], self.t[idx], self.transform)

    def with_task_id(self, task: int) -> TensorData:
        """The same samples, every task id set to ``task``."""
        return TensorData(self.x, self.y, torch.full_like(self.t, task), self.transform)

    @staticmethod
    def concat(parts: Sequence[TensorData]) -> TensorData:
        """Concatenate several parts; they must share their ``transform``."""
        if not parts:
            raise DataError("cannot concatenate zero TensorData parts")
        if len(parts) == 1:
            return parts[0]
        return TensorData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                          torch.cat([p.t for p in parts]), parts[0].transform)


class DatasetData(TensorData):
    """Samples read one at a time through a torch (or Avalanche) dataset, with labels and task ids held as tensors.

    The dataset's own transforms run at every read, so random train-time augmentations differ from epoch to epoch
    (they draw from torch's generator, which the stream loop seeds per experience: a run stays reproducible). It is
    the stand-in for data that should not, or cannot, be materialised as :class:`TensorData`; ``x`` materialises it
    on demand (for strategies that keep raw inputs).

    Args:
        dataset: Items ``(x, y, ...)``; only ``x`` is read.
        y: Labels (N,), in the order of ``indices``.
        t: Task ids (N,).
        indices: Rows of ``dataset`` (default: all).
    """

    dataset: Dataset
    indices: Tensor

    def __init__(self, dataset: Dataset, y: Tensor, t: Tensor, indices: Optional[Tensor] = None) -> None:
        rows = torch.arange(len(y)) if indices is None else indices.long()
        if y.shape != (len(rows),) or t.shape != (len(rows),):
            raise DataError(f"DatasetData needs y and t of shape ({len(rows)},), got {tuple(y.shape)} and "
                            f"{tuple(t.shape)}")
        for name, value in (("dataset", dataset), ("y", y), ("t", t), ("indices", rows), ("transform", None)):
            object.__setattr__(self, name, value)

    @property
    def x(self) -> Tensor:  # type: ignore[override]
        return self[torch.arange(len(self))][0]

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, idx: Any) -> Batch:
        single = isinstance(idx, int) or (isinstance(idx, Tensor) and idx.ndim == 0)
        rows = self.indices[torch.as_tensor(idx, dtype=torch.long).reshape(-1)]
        x = torch.stack([torch.as_tensor(self.dataset[int(r)][0]) for r in rows])
        y, t = self.y[torch.as_tensor(idx, dtype=torch.long)], self.t[torch.as_tensor(idx, dtype=torch.long)]
        return (x[0], y, t) if single else (x, y, t)

    def subset(self, idx: Tensor) -> DatasetData:
        return DatasetData(self.dataset, self.y[idx], self.t[idx], self.indices[idx])

    def with_task_id(self, task: int) -> DatasetData:
        return DatasetData(self.dataset, self.y, torch.full_like(self.t, task), self.indices)


@dataclass(frozen=True, eq=False)
class Experience:
    """One step of a stream: a task for task-IL, a domain or a set of new classes otherwise.

    Attributes:
        index: Position in the stream (0-based).
        task_id: Task label; equals ``index`` in clkit streams (the head used in task-IL).
        classes: Original class ids present in this experience, sorted.
        train: Training samples; in task-IL the labels are local, ``0..len(classes)-1``.
        val: Held-out validation samples carved from the training data (``None`` when ``val_fraction == 0``).
        test: Test samples.
        name: Human-readable description, e.g. ``"classes 0,1"``.
    """

    index: int
    task_id: int
    classes: tuple[int, ...]
    train: TensorData
    val: Optional[TensorData]
    test: TensorData
    name: str = ""


@dataclass(frozen=True)
class StreamSpec:
    """What a strategy may know about a stream before it sees any data: what :meth:`ContinualModule.bind` receives.

    Attributes:
        setting: ``"task-il"``, ``"domain-il"`` or ``"class-il"``.
        input_shape: Shape of one input, without the batch dimension.
        num_classes: Width of a shared head (class-IL, domain-IL) or of the widest task (task-IL).
        classes: Per experience, its class ids (task-IL labels are their ranks ``0..len-1``; class-IL labels are the
            ids themselves; domain-IL ids are the shared label values).
        task_ids_at_test: Whether test batches carry their task ids in the scenario's protocol.
        name: The scenario's name (for messages and results).
        batch_size: The training batch size (a protocol that counts data in batches needs it).
    """

    setting: Setting
    input_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[tuple[int, ...], ...]
    task_ids_at_test: bool
    name: str = ""
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ConfigError(f"setting={self.setting!r} is not one of {', '.join(SETTINGS)}")
        if not self.classes:
            raise ConfigError("a stream needs at least one experience")

    @property
    def n_experiences(self) -> int:
        return len(self.classes)

    @property
    def classes_per_experience(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (checkpoints store the spec so a strategy can be rebuilt without its stream)."""
        return {"setting": self.setting, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "classes": [list(c) for c in self.classes], "task_ids_at_test": self.task_ids_at_test,
                "name": self.name, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamSpec:
        return cls(setting=data["setting"], input_shape=tuple(int(s) for s in data["input_shape"]),
                   num_classes=int(data["num_classes"]), classes=tuple(tuple(int(c) for c in cs)
                                                                      for cs in data["classes"]),
                   task_ids_at_test=bool(data["task_ids_at_test"]), name=str(data.get("name", "")),
                   batch_size=int(data.get("batch_size", 64)))


class BatchIndexSampler(Sampler[Tensor]):
    """Yields one index tensor per batch: a seeded permutation (or ``arange``) split into batches.

    Each pass draws a new permutation from its own generator, so epochs differ but the whole sequence is fixed by
    ``seed``. Being a plain sampler, Lightning can still shard it across DDP ranks (whole batches per rank).
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0) -> None:
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        return iter(order.split(self.batch_size))


def make_loader(data: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader that fetches each batch with one indexing call (no per-sample Python work).

    The sampler yields index tensors (``batch_size=None`` turns off the DataLoader's own batching); shuffling uses its
    own generator seeded with ``seed``, so the order does not depend on the global random state.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    sampler = BatchIndexSampler(len(data), batch_size, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
    return DataLoader(data, sampler=sampler, batch_size=None)


class EvalBatches:
    """Evaluation batches as a plain iterable (not a DataLoader), so Lightning does not shard it across DDP ranks.

    A distributed sampler pads the batches to a multiple of the world size and so counts some samples twice;
    instead every rank iterates over all of the data, so the summed counts are ``world_size`` times the exact ones
    and every ratio is exact.
    """

    def __init__(self, data: TensorData, batch_size: int, seed: int = 0) -> None:
        self._data = data  # (no ``sampler``/``dataset`` attributes: Lightning would treat it as a DataLoader)
        self._order = BatchIndexSampler(len(data), batch_size, shuffle=True, seed=seed)

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Batch]:
        return (self._data[idx] for idx in self._order)


def split_train_val(data: TensorData, val_fraction: float, seed: int,
                    first: bool = False) -> tuple[TensorData, Optional[TensorData]]:
    """Split at random (seeded; ``first=True``: the first samples) into train and validation parts;
    ``val_fraction == 0`` gives no validation part.

    Raises:
        DataError: If the fraction is outside [0, 1) or leaves an empty part.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return data, None
    n = len(data)
    n_val = int(round(val_fraction * n))
    if n_val == 0 or n_val == n:
        raise DataError(f"val_fraction={val_fraction} of {n} samples leaves an empty train or validation split")
    perm = torch.arange(n) if first else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[n_val:]), data.subset(perm[:n_val])


class ContinualDataModule(pl.LightningDataModule):
    """Base class of every scenario (``data`` in a config).

    Subclasses implement :meth:`build` (experiences in their natural order, already materialised as tensors) and set
    ``setting`` / ``task_ids_at_test``. This class adds the seeded validation split helpers, task reordering
    (``task_order`` or a seeded shuffle) and the loaders the stream loop uses.

    Args:
        seed: Seed of every random choice of the scenario (class order, permutations, validation split).
        val_fraction: Fraction of each experience's training data held out for validation.
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation and test.
        task_order: Explicit order of the experiences (a permutation of ``range(n)``).
        shuffle_tasks: Shuffle the experience order with ``seed`` (ignored when ``task_order`` is given).
        val_split: ``"random"`` (seeded) or ``"first"`` (the first ``val_fraction`` of each experience's training
            data, as the GPM permuted-MNIST protocol).
    """

    setting: Setting = "class-il"
    task_ids_at_test: bool = False

    def __init__(self, *, seed: int = 0, val_fraction: float = 0.1, batch_size: int = 64, eval_batch_size: int = 256,
                 task_order: Optional[list[int]] = None, shuffle_tasks: bool = False,
                 val_split: Literal["random", "first"] = "random") -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # every constructor argument of the scenario's class chain
        check_finite(type(self).__name__, self.hparams)
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"batch sizes must be >= 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        if val_split not in ("random", "first"):
            raise ConfigError(f"val_split={val_split!r} is not one of ['random', 'first']")
        self.seed = seed
        self.val_fraction = val_fraction
        self.val_split = val_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.task_order = task_order
        self.shuffle_tasks = shuffle_tasks
        self._experiences: Optional[list[Experience]] = None

    # -- to implement --------------------------------------------------------------------------------------------------
    def build(self) -> list[Experience]:
        """Return the experiences in their natural order (called once, lazily)."""
        raise NotImplementedError

    # -- public contract -----------------------------------------------------------------------------------------------
    @property
    def experiences(self) -> list[Experience]:
        if self._experiences is None:
            _check_memory(self)
            exps = self._reorder(self.build())
            _check_splits(self.name, exps)
            self._experiences = exps
        return self._experiences

    def estimated_bytes(self) -> Optional[int]:
        """Roughly how much memory the materialised stream takes (``None``: unknown); checked before building, so a
        stream far larger than the machine's memory is a one-line error instead of a swapping machine."""
        return None

    def __len__(self) -> int:
        return len(self.experiences)

    @property
    def num_classes(self) -> int:
        """Output width of a shared head: all classes (class-IL, domain-IL) or the largest task (task-IL)."""
        if self.setting == "task-il":
            return max(len(e.classes) for e in self.experiences)
        return 1 + max(int(e.train.y.max()) for e in self.experiences)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.experiences[0].train.x.shape[1:])

    @property
    def name(self) -> str:  # type: ignore[override]  # (LightningDataModule's writable ``name``: the class name here)
        return type(self).__name__

    @property
    def spec(self) -> StreamSpec:
        """The :class:`StreamSpec` strategies are bound to (builds the experiences if needed)."""
        return StreamSpec(self.setting, self.input_shape, self.num_classes,
                          tuple(tuple(e.classes) for e in self.experiences), self.task_ids_at_test, self.name,
                          self.batch_size)

    def setup(self, stage: Optional[str] = None) -> None:
        self.experiences

    def train_loader(self, data: TensorData, experience_index: int) -> DataLoader:
        return make_loader(data, self.batch_size, shuffle=True, seed=self.seed * 100_003 + experience_index)

    def eval_loader(self, data: TensorData, seed: int = 0) -> EvalBatches:
        """Validation/test batches in a seeded shuffled order; under DDP every rank sees all of them.

        Accuracy does not depend on the order, except for networks that normalise with the test batch's own
        statistics (BatchNorm without running statistics, as in the GPM protocols): there, class-sorted batches
        would distort it, so batches are mixed, reproducibly.
        """
        return EvalBatches(data, self.eval_batch_size, seed=seed)

    def test_dataloader(self, seed: int = 0) -> list[EvalBatches]:  # type: ignore[override]
        return [self.eval_loader(e.test, seed=seed) for e in self.experiences]

    # -- helpers for subclasses ----------------------------------------------------------------------------------------
    def make_experience(self, index: int, classes: Sequence[int], train: TensorData, test: TensorData,
                        name: str = "") -> Experience:
        """An experience with the seeded validation split carved from ``train``."""
        tr, val = split_train_val(train, self.val_fraction, seed=self.seed * 7919 + index,
                                  first=self.val_split == "first")
        return Experience(index, index, tuple(int(c) for c in classes), tr, val, test, name)

    def _reorder(self, exps: list[Experience]) -> list[Experience]:
        n = len(exps)
        if self.task_order is not None:
            order = list(self.task_order)
            if sorted(order) != list(range(n)):
                raise ConfigError(f"task_order={order} is not a permutation of range({n})")
        elif self.shuffle_tasks:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        else:
            return exps
        return [_with_position(exps[old], new) for new, old in enumerate(order)]


def _available_memory() -> Optional[int]:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with Lightning
        return None


def _check_memory(stream: ContinualDataModule) -> None:
    need, have = stream.estimated_bytes(), _available_memory()
    if need is not None and have is not None and need > 0.8 * have:
        raise DataError(f"{stream.name} would take about {need / 2**30:.1f} GiB in memory, more than the "
                        f"{have / 2**30:.1f} GiB available: choose fewer experiences or samples")


def _check_splits(name: str, exps: Sequence[Experience]) -> None:
    """Every experience needs training and test samples (and validation samples when it has a validation split)."""
    if not exps:
        raise DataError(f"{name} built no experiences")
    for e in exps:
        for split, data in (("train", e.train), ("test", e.test), ("validation", e.val)):
            if data is not None and len(data) == 0:
                raise DataError(f"{name}: experience {e.index} ({e.name}) has an empty {split} split; choose a larger "
                                "test_fraction / val_fraction or more samples")


def _with_position(exp: Experience, pos: int) -> Experience:
    """The same experience moved to position ``pos`` (its task ids follow the position)."""
    def retag(d: Optional[TensorData]) -> Optional[TensorData]:
        return None if d is None else d.with_task_id(pos)

    train, test = retag(exp.train), retag(exp.test)
    assert train is not None and test is not None
    return Experience(pos, pos, exp.classes, train, retag(exp.val), test, exp.name)
