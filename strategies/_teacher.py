"""A frozen copy of a strategy's network kept as CL memory (LwF's and iCaRL's previous model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["snapshot", "teacher_call"]


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    """Detached copies of ``module``'s parameters and buffers (a plain dict of tensors: checkpointable memory)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def teacher_call(module: nn.Module, state: dict[str, Tensor], *args: Any, prefix: str = "") -> Any:
    """``module(*args)`` computed with the weights in ``state`` (keys under ``prefix``), without gradients.

    The module's own weights are untouched; ``prefix`` selects a submodule's entries (e.g. ``"backbone."``).
    """
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if prefix else state
    with torch.no_grad():
        return functional_call(module, own, args, strict=False)
