"""Representation matrices of the gradient-projection family (docs/methods/projection.md).

A representation matrix ``R`` is ``(d, n)``: its columns are input vectors of a layer, so that ``W R`` (the weight
viewed as ``(c_out, d)``) reproduces the layer's pre-activations. Linear layers use their inputs; conv layers the
``unfold``ed patches, with the convolution's own padding, stride and dilation (strided 1x1 shortcuts included).
Re-exported by :mod:`strategies.projection.basis`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["capture_inputs", "conv_representation", "linear_representation", "representation"]


def linear_representation(x: Tensor, n: int) -> Tensor:
    """Representation of a linear layer's input: the first ``n`` captured rows as columns.

    Args:
        x: Captured input, ``(batch, ..., d)``; leading dimensions are flattened.
        n: Number of rows to keep.

    Returns:
        ``R`` of shape ``(d, min(n, rows))``.
    """
    rows = x.reshape(-1, x.shape[-1])  # (batch, ..., d) -> (rows, d)
    return rows[:n].T  # (n, d) -> (d, n)


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The conv's padding as two ints (``"valid"`` -> 0, ``"same"`` only when symmetric)."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported; valid: 'zeros'")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError(f"padding='same' with kernel {conv.kernel_size} is asymmetric; use explicit padding")
        return (total[0] // 2, total[1] // 2)
    return (int(conv.padding[0]), int(conv.padding[1]))  # type: ignore[index]


def conv_representation(x: Tensor, conv: nn.Conv2d, n: int) -> Tensor:
    """Representation of a Conv2d's input: unfolded patches (the layer's own kernel/stride/padding/dilation).

    ``weight.view(c_out, -1) @ R`` reproduces the convolution output of the first ``n`` images.

    Args:
        x: Captured input, ``(batch, C_in, H, W)``.
        conv: The layer (``groups`` must be 1).
        n: Number of images to keep.

    Returns:
        ``R`` of shape ``(d, n * L)`` with ``d = C_in * kh * kw`` and ``L`` output positions per image.
    """
    if conv.groups != 1:
        raise ValueError(f"grouped convolutions (groups={conv.groups}) are not supported; valid: groups=1")
    cols = F.unfold(x[:n], conv.kernel_size, conv.dilation, _conv_padding(conv), conv.stride)  # (n, d, L)
    d = cols.shape[1]
    return cols.permute(1, 0, 2).reshape(d, -1)  # (n, d, L) -> (d, n, L) -> (d, n*L)


def representation(module: nn.Module, x: Tensor, n: int) -> Tensor:
    """Dispatch to :func:`linear_representation` or :func:`conv_representation`.

    Raises:
        ValueError: If ``module`` is neither ``nn.Linear`` nor ``nn.Conv2d``.
    """
    if isinstance(module, nn.Conv2d):
        return conv_representation(x, module, n)
    if isinstance(module, nn.Linear):
        return linear_representation(x, n)
    raise ValueError(f"cannot build a representation for {type(module).__name__}; valid: nn.Linear, nn.Conv2d")


@contextmanager
def capture_inputs(modules: Sequence[nn.Module]) -> Iterator[list[Tensor | None]]:
    """Capture the (first) input of every module during the forward passes run inside the block.

    Forward pre-hooks are registered on entry and removed on exit. If a module runs several times, the first
    call's input is kept.

    Example:
        >>> lin = nn.Linear(3, 2, bias=False)
        >>> with capture_inputs([lin]) as captured:
        ...     _ = lin(torch.ones(4, 3))
        >>> captured[0].shape
        torch.Size([4, 3])
    """
    captured: list[Tensor | None] = [None] * len(modules)

    def make_hook(i: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if captured[i] is None:
                captured[i] = args[0].detach()

        return hook

    handles = [m.register_forward_pre_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------- basis update
