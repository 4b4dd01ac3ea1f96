"""Experience Replay with a reservoir buffer (Chaudhry et al., "On Tiny Episodic Memories in Continual Learning",
arXiv 1902.10486, 2019)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clkit.errors import ConfigError
from strategies.rehearsal import Rehearsal

__all__ = ["ER"]


class ER(Rehearsal):
    """Experience Replay (ER-reservoir): each training batch is concatenated with a batch drawn from the buffer and
    the network minimises the cross-entropy over both; the buffer is a reservoir sample of the stream.

    Every training sample is offered to the reservoir once (in the first epoch of its experience), after the step
    that used it, as in the paper's Algorithm 1; the replay batch is drawn before, from everything stored so far (the
    current experience included). ``buffer_policy: class_balanced`` fills the buffer at each experience's end
    instead (then only past experiences are replayed). Supports task-IL (a replayed sample uses its own task's head),
    domain-IL and class-IL.

    Args:
        buffer_size: Samples in the buffer (all experiences together).
        replay_batch_size: Samples drawn from the buffer per step; default: the stream's batch size.
        buffer_policy: ``"reservoir"`` (the paper) or ``"class_balanced"``.
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    def __init__(self, *, replay_batch_size: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if replay_batch_size is not None and int(replay_batch_size) < 1:
            raise ConfigError(f"replay_batch_size must be >= 1, got {replay_batch_size}")
        self.replay_batch_size = replay_batch_size

    @property
    def replay_n(self) -> int:
        return int(self.replay_batch_size or (self.spec.batch_size if self.spec is not None else 32))

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        replay = self.buffer_sample(self.replay_n)
        if replay is not None:
            xs, ys, ts = (torch.cat([x, replay["x"]]), torch.cat([y, replay["y"]]), torch.cat([t, replay["t"]]))
        else:
            xs, ys, ts = x, y, t
        loss = F.cross_entropy(self(xs, ts), ys)
        self.buffer_observe(x, y, t)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss
