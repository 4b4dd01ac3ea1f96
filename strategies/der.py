"""Dark Experience Replay, DER and DER++ (Buzzega et al., "Dark Experience for General Continual Learning: a Strong,
Simple Baseline", NeurIPS 2020)."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from clkit.errors import ConfigError
from strategies.rehearsal import Rehearsal

__all__ = ["DER"]


class DER(Rehearsal):
    """DER / DER++: replay with the network's own past logits.

    The buffer is a reservoir sample of the stream that stores, with every sample, the logits the network gave it in
    the step that saw it (the optimisation trajectory's logits). Each step minimises
    ``CE(f(x), y) + alpha · MSE(f(x'), z') + beta · CE(f(x''), y'')`` with ``(x', z')`` and ``(x'', y'')`` two
    independent draws from the buffer (the paper's Eq. 6; ``beta = 0`` is DER). The MSE is the mean over logits, as
    in the authors' code (so ``alpha`` is on their scale); in task-IL a narrower head's padding is left out of it.
    ``buffer_policy: class_balanced`` stores the logits of the network at each experience's end instead (not the
    paper). The three batches go through the network in one forward pass. Supports task-IL, domain-IL and class-IL.

    Args:
        buffer_size: Samples in the buffer.
        alpha: Weight of the logit-matching term.
        beta: Weight of the replayed cross-entropy (0: DER, > 0: DER++).
        replay_batch_size: Samples per buffer draw; default: the stream's batch size.
        buffer_policy: ``"reservoir"`` (the paper) or ``"class_balanced"``.
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    def __init__(self, *, alpha: float = 0.3, beta: float = 0.5, replay_batch_size: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if alpha < 0 or beta < 0:
            raise ConfigError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if replay_batch_size is not None and int(replay_batch_size) < 1:
            raise ConfigError(f"replay_batch_size must be >= 1, got {replay_batch_size}")
        self.alpha, self.beta, self.replay_batch_size = float(alpha), float(beta), replay_batch_size

    @property
    def label(self) -> str:
        return "DER++" if self.beta > 0 else "DER"

    @property
    def replay_n(self) -> int:
        return int(self.replay_batch_size or (self.spec.batch_size if self.spec is not None else 32))

    def buffer_fields(self, x: Tensor, y: Tensor, t: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return {"logits": self(x.to(self.device), t.to(self.device)).detach()}

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        n = len(y)
        first = self.buffer_sample(self.replay_n) if self.alpha > 0 else None
        second = self.buffer_sample(self.replay_n) if self.beta > 0 else None
        parts = [p for p in (first, second) if p is not None]
        logits = self(torch.cat([x, *(p["x"] for p in parts)]), torch.cat([t, *(p["t"] for p in parts)]))
        loss = F.cross_entropy(logits[:n], y)
        offset = n
        if first is not None:
            out, target = logits[offset: offset + len(first["y"])], first["logits"]
            keep = torch.isfinite(target)
            mse = F.mse_loss(out[keep], target[keep])
            loss = loss + self.alpha * mse
            self.log_epoch_mean("train/der_mse", mse, n, prog_bar=False)
            offset += len(first["y"])
        if second is not None:
            loss = loss + self.beta * F.cross_entropy(logits[offset:], second["y"])
        self.buffer_observe(x, y, t, logits=logits[:n].detach())
        self.log_epoch_mean("train/loss", loss, n)
        return loss
