"""Backbones: feature extractors built lazily from the scenario's input shape.

A backbone is configured without knowing the data (``MLP(hidden=[256, 256])`` in YAML); the strategy calls
``build(input_shape)`` when it is bound to a scenario. After that, ``out_features`` is the feature width the heads use.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from clkit.errors import ConfigError

__all__ = ["MLP", "Backbone", "SmallCNN", "backbone_config", "count_parameters", "default_backbone", "tensor_bytes"]


class Backbone(nn.Module):
    """A feature extractor whose layers are created by :meth:`build` once the input shape is known."""

    out_features: int

    def __init__(self) -> None:
        super().__init__()
        self.input_shape: tuple[int, ...] | None = None

    @property
    def built(self) -> bool:
        return self.input_shape is not None

    def build(self, input_shape: Sequence[int]) -> Backbone:
        """Create the layers for inputs of shape ``input_shape`` (without the batch dimension); idempotent."""
        shape = tuple(int(s) for s in input_shape)
        if self.input_shape is not None:
            if self.input_shape != shape:
                raise ConfigError(f"{type(self).__name__} was built for input shape {self.input_shape}, not {shape}")
            return self
        try:
            self._build(shape)
        except ValueError as err:  # a network that cannot take this input (too small an image, ...)
            raise ConfigError(f"backbone {type(self).__name__}: {err}") from None
        self.input_shape = shape
        return self

    def _build(self, input_shape: tuple[int, ...]) -> None:
        raise NotImplementedError


class MLP(Backbone):
    """Fully connected ReLU network over flattened inputs.

    Args:
        hidden: Widths of the hidden layers; the last one is ``out_features``.
        bias: Whether the linear layers have biases (gradient projection needs ``False``).
        dropout: Dropout after each hidden activation.
    """

    def __init__(self, *, hidden: Sequence[int] = (256, 256), bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer")
        self.hidden = [int(h) for h in hidden]
        self.bias = bias
        self.dropout = dropout
        self.out_features = self.hidden[-1]
        self.net = nn.Sequential()

    def _build(self, input_shape: tuple[int, ...]) -> None:
        widths = [math.prod(input_shape), *self.hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out, bias=self.bias), nn.ReLU()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(Backbone):
    """Conv(3x3)-BN-ReLU-MaxPool blocks, then global average pooling.

    Args:
        channels: Output channels of each block; the last one is ``out_features``.
        bias: Whether the convolutions have biases.
    """

    def __init__(self, *, channels: Sequence[int] = (32, 64, 128), bias: bool = False) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.bias = bias
        self.out_features = self.channels[-1]
        self.net = nn.Sequential()

    def _build(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"SmallCNN needs (C, H, W) inputs, got input shape {input_shape}")
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for c_out in self.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=self.bias), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def default_backbone(input_shape: Sequence[int]) -> Backbone:
    """A CNN for image-shaped inputs of side >= 16, an MLP otherwise."""
    if len(input_shape) == 3 and min(input_shape[1:]) >= 16:
        return SmallCNN()
    return MLP()


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def tensor_bytes(*tensors: Tensor) -> int:
    """Bytes held by ``tensors`` (helper for ``strategy_state_bytes``)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def backbone_config(module: nn.Module | None) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a backbone whose constructor arguments are stored under their own names.

    Every clkit backbone keeps its arguments as attributes (scikit-learn's convention), so a checkpoint can name the
    network it was trained with. ``None`` for a module that does not (it must then be passed again to rebuild).
    """
    if module is None:
        return None
    cls = type(module)
    args: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(module, name):
            return None
        value = getattr(module, name)
        value = list(value) if isinstance(value, tuple) else value
        if not isinstance(value, (int, float, str, bool, list, type(None))):
            return None
        args[name] = value
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}
