"""Network plumbing for the gradient-projection strategies: projected layers, BN freezing, sampling, LR plateaus.

Kept apart from the math (:mod:`strategies.projection.basis`) and from the strategies themselves, so that GPM, TRGP and
CUBER share one implementation of the protocol details (docs/methods/projection.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from clkit.errors import ConfigError

__all__ = ["BN_TYPES", "LayerRef", "PlateauDecay", "find_projected_layers", "resolve_per_layer", "sample_rows"]

log = logging.getLogger(__name__)

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class LayerRef:
    """A projected layer: its qualified parameter name (``<module>.weight``) and the module."""

    name: str
    module: nn.Module

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight  # type: ignore[return-value]


def find_projected_layers(root: nn.Module, prefixes: Sequence[str], *, owner: str) -> list[LayerRef]:
    """Every ``nn.Linear``/``nn.Conv2d`` under the submodules ``prefixes`` of ``root``, in registration order.

    Raises:
        ConfigError: If a projected layer has a bias, or a parameterised module other than Linear, Conv2d or BatchNorm
            is found (its parameters would not be protected by input-space projection).
    """
    found: list[LayerRef] = []
    for prefix in prefixes:
        sub = root.get_submodule(prefix)
        for name, mod in sub.named_modules(prefix=prefix):
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                if mod.bias is not None:
                    raise ConfigError(f"{owner} projects layer {name!r}, which has a bias; a bias is not protected by "
                                      "input-space projection. Build the network with bias=False")
                found.append(LayerRef(name, mod))
            elif not isinstance(mod, BN_TYPES) and any(True for _ in mod.parameters(recurse=False)):
                raise ConfigError(f"{owner} cannot protect the parameters of {name!r} ({type(mod).__name__}); "
                                  "valid layer types: nn.Linear, nn.Conv2d (bias=False) and BatchNorm")
    if not found:
        raise ConfigError(f"{owner} found no nn.Linear/nn.Conv2d layer to project")
    return found


def resolve_per_layer(value: float | Sequence[float] | Sequence[int], n_layers: int, what: str) -> list[float]:
    """Broadcast a scalar to ``n_layers`` values, or check a list has one value per projected layer."""
    if isinstance(value, (int, float)):
        return [float(value)] * n_layers
    values = [float(v) for v in value]
    if len(values) != n_layers:
        raise ConfigError(f"{what} has {len(values)} values but the network has {n_layers} projected layers; give one "
                          "value or one per projected layer (forward/registration order)")
    return values


def sample_rows(n_total: int, n: int, generator: torch.Generator) -> Tensor:
    """``min(n, n_total)`` distinct row indices drawn with ``generator`` (never the global RNG)."""
    return torch.randperm(n_total, generator=generator)[: min(n, n_total)]


@dataclass
class PlateauDecay:
    """Early stopping with LR decay on the validation loss (the official GPM/TRGP schedule).

    After each epoch: if the loss improved, keep a copy of the state and reset the patience; otherwise decrement it,
    and at 0 divide the LR by ``factor`` and reset it; stop once the LR falls below ``lr_min``.
    """

    lr: float
    patience: int
    factor: float
    lr_min: float
    best_loss: float = math.inf
    best_state: dict[str, Tensor] | None = None
    left: int = field(init=False)
    stopped: bool = False

    def __post_init__(self) -> None:
        if self.patience < 1 or self.factor <= 1.0 or self.lr_min < 0:
            raise ConfigError(f"need lr_patience >= 1, lr_factor > 1 and lr_min >= 0; got {self.patience}, "
                              f"{self.factor}, {self.lr_min}")
        self.left = self.patience

    def step(self, loss: float, state: dict[str, Any]) -> float:
        """Record one epoch's validation ``loss``; ``state`` is copied when it is the best. Returns the new LR."""
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
            self.left = self.patience
            return self.lr
        self.left -= 1
        if self.left <= 0:
            self.lr /= self.factor
            self.left = self.patience
            self.stopped = self.lr < self.lr_min
        return self.lr
