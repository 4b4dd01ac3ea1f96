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
import torch.nn.functional as F
from torch import Tensor, nn

from clkit.errors import ConfigError

__all__ = ["BN_TYPES", "InputSideProjection", "LayerRef", "PlateauDecay", "find_projected_layers", "resolve_per_layer",
           "sample_rows"]

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


class _ProjectedLinear(torch.autograd.Function):
    """``y = x W^T`` whose weight gradient is ``g^T P(x)``: the input rows projected out of ``span(M)`` first."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, factor: Tensor, complement: bool) -> Tensor:
        ctx.save_for_backward(x, weight, factor)
        ctx.complement = complement
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight, factor = ctx.saved_tensors
        # under autocast the forward ran in a lower dtype and grad_out has it; each gradient takes its input's dtype
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_out @ weight.to(grad_out.dtype)).to(x.dtype)  # (N, c_out)(c_out, d) -> (N, d)
        grad_w = None
        if ctx.needs_input_grad[1]:
            rows = x.reshape(-1, x.shape[-1]).to(weight.dtype)  # (N, d)
            g = grad_out.reshape(-1, grad_out.shape[-1]).to(weight.dtype)  # (N, c_out)
            coeffs = rows @ factor  # (N, d)(d, r) -> (N, r)
            proj = coeffs @ factor.T if ctx.complement else rows - coeffs @ factor.T  # (N, r)(r, d) -> (N, d)
            grad_w = g.T @ proj  # (c_out, N)(N, d) -> (c_out, d)
        return grad_x, grad_w, None, None


class InputSideProjection:
    """A bias-free ``nn.Linear``'s forward while an experience trains, giving its weight an already projected gradient.

    GPM's ``G - (G M) M^T`` with ``G = g^T X`` (``g`` the output gradients, ``X`` the layer's ``N`` input rows)
    equals ``g^T (X - (X M) M^T)``: projecting the inputs costs ``2 N d r`` instead of ``2 c_out d r`` (``r`` the
    columns of the factor), much less for a batch smaller than the layer (permuted MNIST: batch 10 or 32 against
    ``c_out = 100``), and the weight gradient ``g^T X`` is computed once either way. Equal to projecting the
    gradient up to rounding (not bit for bit). Only training-mode forwards with gradients through the layer's own
    weight, with fewer rows than ``c_out``, take this route; every other call (evaluation, a swapped-in ``W_eff``)
    is a plain ``F.linear`` and marks the layer for projection of its gradient instead (:attr:`pending`).

    Args:
        module: The layer (``bias=None``).
        factor: ``M`` or its complement ``N`` (:func:`strategies.projection.basis.projection_factor`), on the
            weight's device and dtype.
        complement: Whether ``factor`` is the complement.
    """

    def __init__(self, module: nn.Linear, factor: Tensor, complement: bool) -> None:
        self.module, self.factor, self.complement = module, factor, complement
        self.weight = module.weight
        self.pending = False  # a forward since the last optimizer step left the gradient unprojected

    def __call__(self, x: Tensor) -> Tensor:
        w = self.module.weight
        if (self.module.training and w is self.weight and torch.is_grad_enabled() and w.requires_grad
                and x.numel() // x.shape[-1] < w.shape[0]):
            return _ProjectedLinear.apply(x, w, self.factor, self.complement)
        if torch.is_grad_enabled() and w.requires_grad:
            self.pending = True
        return F.linear(x, w)

    def install(self) -> None:
        # an instance attribute shadows Linear.forward
        self.module.forward = self  # type: ignore[method-assign,assignment]

    def remove(self) -> None:
        if self.module.__dict__.get("forward") is self:
            del self.module.forward
