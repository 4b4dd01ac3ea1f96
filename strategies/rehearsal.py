"""A rehearsal buffer: a fixed budget of past samples kept in a strategy's CL memory.

:class:`Rehearsal` is the base of the replay strategies (ER, DER++, A-GEM, GEM, iCaRL). Its buffer holds at most
``buffer_size`` samples (inputs as the network sees them, labels, task ids and any per-sample fields a strategy
adds, e.g. DER's logits) in the registered CL memory ``buffer``, so the loop checkpoints it, moves it with the
module and counts it in ``strategy_state_bytes``; every random choice comes from ``self.generator(...)`` of the
experience, so a resumed run refills it exactly as an uninterrupted one.

Two policies:

- ``reservoir`` (Vitter's algorithm R): every sample offered to the buffer ends up in it with probability
  ``buffer_size / seen``, so the buffer is a uniform sample of everything offered so far;
- ``class_balanced``: after each experience the budget is split evenly over the classes seen so far (a class is a
  ``(task id, label)`` pair, so task-IL's local labels and domain-IL's shared ones are kept apart), the remainder
  going to the first classes; old classes keep the first samples of their share, new ones get a random subset
  (or a strategy's own choice, e.g. iCaRL's herding order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from clkit.data import Experience, TensorData
from clkit.errors import ConfigError
from clkit.module import ContinualModule

__all__ = ["POLICIES", "Rehearsal", "Selector"]

POLICIES = ("reservoir", "class_balanced")

Selector = Callable[[TensorData, int], Tensor]
"""``select(samples of one new class, n) -> indices`` of the ``n`` samples to keep, in priority order."""


class Rehearsal(ContinualModule):
    """Base class of strategies that keep a fixed budget of past samples (the buffer) in their CL memory.

    Subclasses call :meth:`buffer_observe` from ``training_step`` (reservoir: each training sample is offered once,
    in the first epoch of its experience), or let :meth:`on_experience_end` fill the buffer from the experience
    (``class_balanced``, or strategies with ``ONLINE = False``), and draw replay batches with
    :meth:`buffer_sample`.

    Args:
        buffer_size: The budget, in samples (all experiences together).
        buffer_policy: ``"reservoir"`` or ``"class_balanced"`` (see the module docstring).
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    ONLINE = True  # reservoir insertion from training_step (ER, DER++); False: from the whole experience at its end
    buffer: dict[str, Tensor]  # CL memory: x, y, t and strategy fields, one row per slot
    buffer_seen: int  # CL memory: samples offered to the reservoir so far

    def __init__(self, *, buffer_size: int = 200, buffer_policy: Literal["reservoir", "class_balanced"] = "reservoir",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(buffer_size) < 1:
            raise ConfigError(f"buffer_size must be >= 1 sample, got {buffer_size}")
        if buffer_policy not in POLICIES:
            raise ConfigError(f"buffer_policy={buffer_policy!r} is not one of {list(POLICIES)}")
        self.buffer_size, self.buffer_policy = int(buffer_size), buffer_policy
        self.register_memory("buffer", {})
        self.register_memory("buffer_seen", 0)
        self._reservoir_rng: Optional[torch.Generator] = None
        self._replay_rng: Optional[torch.Generator] = None

    # -- reading --------------------------------------------------------------------------------------------------
    @property
    def buffer_len(self) -> int:
        """Samples in the buffer."""
        return 0 if not self.buffer else int(self.buffer["y"].shape[0])

    def buffer_data(self, transform: Optional[Callable[[Tensor], Tensor]] = None) -> Optional[TensorData]:
        """The buffer as :class:`TensorData` (``None`` when empty); its inputs are already transformed."""
        if not self.buffer:
            return None
        return TensorData(self.buffer["x"], self.buffer["y"], self.buffer["t"], transform)

    def buffer_sample(self, n: int) -> Optional[dict[str, Tensor]]:
        """``n`` samples drawn without replacement (all when fewer) with the experience's replay generator;
        ``None`` when the buffer is empty."""
        size = self.buffer_len
        if size == 0 or n < 1:
            return None
        if self._replay_rng is None:
            self._replay_rng = self.generator("replay", int(self.experiences_done))
        idx = torch.randperm(size, generator=self._replay_rng)[:n].to(self.buffer["y"].device)
        return {k: v[idx] for k, v in self.buffer.items()}

    def buffer_groups(self) -> list[tuple[tuple[int, int], Tensor]]:
        """``((task id, label), slot indices)`` of every class in the buffer, in key order."""
        if not self.buffer:
            return []
        keys = _keys(self.buffer["t"], self.buffer["y"])
        return [((int(k) >> 32, int(k) & 0xFFFFFFFF), (keys == k).nonzero().squeeze(1)) for k in keys.unique()]

    # -- the CL hooks ---------------------------------------------------------------------------------------------
    def on_experience_start(self, experience: Experience) -> None:
        super().on_experience_start(experience)
        self._reservoir_rng = self.generator("reservoir", experience.index)
        self._replay_rng = self.generator("replay", experience.index)

    def on_experience_end(self, experience: Experience) -> None:
        super().on_experience_end(experience)
        if self.buffer_policy == "class_balanced":
            self.buffer_rebalance(experience)
        elif not self.ONLINE:
            data = experience.train
            order = torch.randperm(len(data), generator=self.generator("reservoir-order", experience.index))
            for idx in order.split(256):
                x, y, t = data[idx]
                self._reservoir_add(x, y, t, self.buffer_fields(x, y, t))

    # -- writing --------------------------------------------------------------------------------------------------
    def buffer_fields(self, x: Tensor, y: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Extra per-sample fields to store beside ``x, y, t`` when the buffer is filled at an experience's end
        (e.g. DER's logits); default none."""
        return {}

    def buffer_observe(self, x: Tensor, y: Tensor, t: Tensor, **fields: Tensor) -> None:
        """Offer a training batch to the reservoir (first epoch of the experience only; a no-op for the
        class-balanced policy and for ``ONLINE = False`` strategies, whose buffers fill at the experience's end)."""
        if self.buffer_policy != "reservoir" or not self.ONLINE or self.current_epoch > 0:
            return
        self._reservoir_add(x, y, t, fields)

    def _reservoir_add(self, x: Tensor, y: Tensor, t: Tensor, fields: dict[str, Tensor]) -> None:
        if self._reservoir_rng is None:
            self._reservoir_rng = self.generator("reservoir", int(self.experiences_done))
        new = {"x": x.detach(), "y": y.detach(), "t": t.detach(), **{k: v.detach() for k, v in fields.items()}}
        n, seen, size = int(y.shape[0]), int(self.buffer_seen), self.buffer_len
        draws = torch.rand(n, generator=self._reservoir_rng, dtype=torch.float64)  # one draw per sample, always
        position = torch.arange(seen, seen + n, dtype=torch.float64)  # each sample's index in the stream
        slot = (draws * (position + 1)).long()  # uniform in [0, position]
        free = max(0, min(n, self.buffer_size - size))
        self.buffer_seen = seen + n
        if free:
            head = {k: v[:free] for k, v in new.items()}
            self.buffer = head if not self.buffer else {k: torch.cat([self.buffer[k], head[k]]) for k in self.buffer}
        replace: dict[int, int] = {}  # slot -> row of the batch; a later sample overwrites an earlier one
        for row in (slot[free:] < self.buffer_size).nonzero().squeeze(1).tolist():
            replace[int(slot[free + row])] = free + row
        if replace:
            slots = torch.tensor(list(replace), device=self.buffer["y"].device)
            rows = torch.tensor(list(replace.values()), device=y.device)
            self.buffer = {k: v.index_copy(0, slots, new[k][rows].to(v.device)) for k, v in self.buffer.items()}

    def buffer_rebalance(self, experience: Experience, select: Optional[Selector] = None) -> None:
        """Class-balanced update with ``experience``'s training data: every class seen gets an equal share.

        Old classes keep the first samples of their stored share; each new class gets ``select(its samples, n)``
        (default: a random subset drawn with the experience's ``"buffer"`` generator).
        """
        data = experience.train
        new_keys = _keys(data.t, data.y)
        new_classes = [int(k) for k in new_keys.unique()]
        old_groups = {(a << 32) | b: idx for (a, b), idx in self.buffer_groups()}
        classes = sorted(set(old_groups) | set(new_classes))
        quota = {k: self.buffer_size // len(classes) + (1 if i < self.buffer_size % len(classes) else 0)
                 for i, k in enumerate(classes)}
        rng = self.generator("buffer", experience.index)
        parts: list[dict[str, Tensor]] = []
        for key in classes:
            if key in old_groups and key not in new_classes:
                keep = old_groups[key][: quota[key]]
                parts.append({k: v[keep] for k, v in self.buffer.items()})
                continue
            rows = (new_keys == key).nonzero().squeeze(1)
            samples = data.subset(rows)
            n = min(quota[key], len(samples))
            chosen = select(samples, n) if select is not None else torch.randperm(len(samples), generator=rng)[:n]
            x, y, t = samples[chosen.cpu()]
            parts.append({"x": x, "y": y, "t": t, **self.buffer_fields(x, y, t)})
        device = next(iter(self.parameters()), torch.empty(0)).device
        self.buffer = {k: torch.cat([p[k].to(device) for p in parts]) for k in parts[0]}


def _keys(t: Tensor, y: Tensor) -> Tensor:
    """One integer per sample naming its class: ``(task id, label)``."""
    return (t.long() << 32) | y.long()

