"""Averaged Gradient Episodic Memory (Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019)."""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clkit.errors import ConfigError
from strategies.rehearsal import Rehearsal

__all__ = ["AGEM", "flat_grad", "set_flat_grad"]


def flat_grad(params: list[nn.Parameter]) -> Tensor:
    """The gradients of ``params`` as one vector (zeros for a parameter without a gradient)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def set_flat_grad(params: list[nn.Parameter], flat: Tensor) -> None:
    """Write the vector ``flat`` back into the gradients of ``params``."""
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(flat[offset: offset + n].view_as(p))
        offset += n


class AGEM(Rehearsal):
    """A-GEM: if the step's gradient ``g`` would increase the loss on the episodic memory, i.e. ``g · g_ref < 0``
    with ``g_ref`` the gradient on ``sample_size`` samples drawn from the memory, it is projected to
    ``g − (g · g_ref / g_ref · g_ref) g_ref`` (the paper's Eq. 11).

    The memory holds samples of past experiences only (filled at each experience's end; class-balanced by default,
    as the paper's per-task memory, or reservoir), within a budget of ``buffer_size`` samples in all. Supports
    task-IL (memory samples use their own task's head), domain-IL and class-IL.

    Args:
        buffer_size: Memory budget, in samples.
        sample_size: Memory samples per reference gradient (the paper: 256, or the whole memory when smaller).
        buffer_policy: ``"class_balanced"`` (default) or ``"reservoir"``.
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    ONLINE = False

    def __init__(self, *, sample_size: int = 256,
                 buffer_policy: Literal["reservoir", "class_balanced"] = "class_balanced", **kwargs: Any) -> None:
        super().__init__(buffer_policy=buffer_policy, **kwargs)
        if int(sample_size) < 1:
            raise ConfigError(f"sample_size must be >= 1, got {sample_size}")
        self.sample_size = int(sample_size)
        self._g_ref: Optional[Tensor] = None
        self.projections = 0  # steps whose gradient was projected in the current experience (not CL memory)

    def constrained_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 0:
            self.projections = 0

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        self._g_ref = None
        memory = self.buffer_sample(self.sample_size)
        if memory is not None:
            params = self.constrained_parameters()
            ref_loss = F.cross_entropy(self(memory["x"], memory["t"]), memory["y"])
            grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
            self._g_ref = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                     for g, p in zip(grads, params)])
        loss = F.cross_entropy(self(x, t), y)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def transform_gradients(self) -> None:
        if self._g_ref is None:
            return
        params = self.constrained_parameters()
        g = flat_grad(params)
        dot = torch.dot(g, self._g_ref)
        if dot < 0:
            set_flat_grad(params, g - dot / torch.dot(self._g_ref, self._g_ref).clamp_min(1e-12) * self._g_ref)
            self.projections += 1
