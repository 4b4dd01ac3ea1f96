"""Pure supermask math: top-k selection with a straight-through estimator, densities, init, bit packing.

Shared by :mod:`strategies.supermask.supsup` and :mod:`strategies.supermask.exssnet` (docs/methods/supermask.md).
Everything here is a typed function of tensors; the masked layers live in :mod:`strategies.supermask.layers`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "DensityMode",
    "count_bits",
    "exclusive_bits",
    "fan_in",
    "kept_count",
    "layer_density",
    "overlap_bits",
    "pack_bits",
    "score_init_",
    "signed_constant_",
    "topk_mask",
    "union_bits",
    "unpack_bits",
]

DensityMode = Literal["uniform", "erdos_renyi"]
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_POPCOUNT = torch.tensor([(i).bit_count() for i in range(256)], dtype=torch.int64)


def kept_count(n: int, density: float) -> int:
    """Number of entries a top-k mask keeps: ``n - floor((1 - density) * n)``, as the official ``GetSubnet``.

    Args:
        n: Number of entries in the tensor.
        density: Fraction of entries kept, in (0, 1].

    Raises:
        ValueError: If ``density`` is outside (0, 1].
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    return n - math.floor((1.0 - density) * n)


class _TopKSTE(torch.autograd.Function):
    """Binary top-k mask of ``|S|`` forward (``k`` per row when ``rows > 1``); identity (straight-through) backward."""

    @staticmethod
    def forward(ctx: Any, magnitude: Tensor, k: int, rows: int = 1) -> Tensor:
        flat = magnitude.detach().reshape(rows, -1)  # (rows, n): one row per output unit, or the whole layer
        n = flat.shape[1]
        if k >= n:
            return torch.ones_like(magnitude)
        if k <= n // 2:  # pick the k largest
            mask = torch.zeros_like(flat)
            mask.scatter_(1, torch.topk(flat, k, dim=1, largest=True, sorted=False).indices, 1.0)
        else:  # cheaper: drop the n - k smallest
            mask = torch.ones_like(flat)
            mask.scatter_(1, torch.topk(flat, n - k, dim=1, largest=False, sorted=False).indices, 0.0)
        return mask.view_as(magnitude)  # (rows, n) -> weight shape

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


def topk_mask(scores: Tensor, density: float, per_row: bool = False) -> Tensor:
    """Top-k mask of ``|scores|`` keeping exactly :func:`kept_count` entries, with the straight-through estimator.

    The backward pass treats the mask as the identity of ``|S|``, so autograd yields
    ``dL/dS = sign(S) * dL/dM``; for ``W_eff = W * M`` that is ``sign(S) * dL/dW_eff * W``.

    Args:
        scores: Real-valued score tensor of any shape (``(c_out, ...)`` when ``per_row``).
        density: Fraction kept, in (0, 1].
        per_row: Keep :func:`kept_count` of every row ``scores[i]`` (each output unit's fan-in) instead of one
            top-k over the whole tensor, so no output unit is left without inputs.

    Returns:
        A float mask of ``scores``' shape and dtype with values in {0, 1}.
    """
    if per_row and scores.dim() > 1:
        rows = scores.shape[0]
        return _TopKSTE.apply(scores.abs(), kept_count(scores[0].numel(), density), rows)
    return _TopKSTE.apply(scores.abs(), kept_count(scores.numel(), density), 1)


def layer_density(shape: torch.Size | tuple[int, ...], mode: DensityMode, density: float, er_scale: float) -> float:
    """Density of one layer: uniform ``density``, or Erdős–Rényi ``min(0.5, s (c_out + c_in) / n)``.

    Args:
        shape: Weight shape ``(c_out, c_in, *kernel)`` (a linear layer is ``(out, in)``).
        mode: ``"uniform"`` or ``"erdos_renyi"``.
        density: Density used in uniform mode.
        er_scale: The Erdős–Rényi scale ``s`` (higher = denser).

    Raises:
        ValueError: On an unknown mode or a non-positive scale.
    """
    if mode == "uniform":
        return density
    if mode != "erdos_renyi":
        raise ValueError(f"density mode must be 'uniform' or 'erdos_renyi', got {mode!r}")
    if er_scale <= 0:
        raise ValueError(f"er_scale must be > 0, got {er_scale!r}")
    c_out, c_in = shape[0], shape[1]
    return min(0.5, er_scale * (c_out + c_in) / math.prod(shape))


def fan_in(weight: Tensor) -> int:
    """``c_in * kh * kw`` of a conv weight (``in`` of a linear weight)."""
    return weight[0].numel()


def signed_constant_(weight: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Signed Kaiming constant init in place: ``W = sign(W0) * sqrt(2 / fan_in)`` with ``W0`` symmetric random.

    Signs are drawn as fair coins from ``generator`` (equivalent to the sign of PyTorch's symmetric default init).
    """
    coin = torch.rand(weight.shape, generator=generator) < 0.5
    magnitude = math.sqrt(2.0) / math.sqrt(fan_in(weight))
    with torch.no_grad():
        weight.copy_(torch.where(coin, magnitude, -magnitude))
    return weight


def score_init_(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``kaiming_uniform_(S, a=sqrt(5))`` in place, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, from ``generator``."""
    bound = 1.0 / math.sqrt(fan_in(scores))
    with torch.no_grad():
        scores.copy_((torch.rand(scores.shape, generator=generator) * 2.0 - 1.0) * bound)
    return scores


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a boolean (or 0/1) tensor into uint8, 8 entries per byte, most significant bit first.

    Args:
        mask: Any shape; flattened in row-major order.

    Returns:
        uint8 tensor of shape ``(ceil(n / 8),)``; padding bits are 0.
    """
    flat = mask.detach().flatten().to(torch.bool)  # (n,)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8)  # (n/8, 8)
    return (bits * _BIT_WEIGHTS.to(bits.device)).sum(dim=1, dtype=torch.uint8)  # (n/8,)


def unpack_bits(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_bits`: a boolean tensor of ``shape``."""
    n = math.prod(shape)
    bits = packed.unsqueeze(1) & _BIT_WEIGHTS.to(packed.device)  # (n/8, 1) & (8,) -> (n/8, 8)
    return bits.ne(0).flatten()[:n].view(shape)  # (n/8 * 8,) -> shape


def count_bits(packed: Tensor) -> int:
    """Number of set bits in a packed mask."""
    return int(_POPCOUNT.to(packed.device)[packed.long()].sum())


def overlap_bits(a: Tensor, b: Tensor) -> int:
    """``|A & B|`` of two packed masks."""
    return count_bits(a & b)


def union_bits(masks: list[Tensor], nbytes: int) -> Tensor:
    """Bitwise OR of packed masks; an all-zero buffer of ``nbytes`` when ``masks`` is empty."""
    out = torch.zeros(nbytes, dtype=torch.uint8)
    for m in masks:
        out = out | m.to(out.device)
    return out


def exclusive_bits(mask: Tensor, union: Tensor) -> Tensor:
    """Packed exclusive mask ``E = M & ~U``: entries of ``mask`` used by no earlier task."""
    return mask & ~union
