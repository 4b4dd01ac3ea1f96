"""Masked backbones for the supermask family: MLP, small CNN and GEMResNet18 (docs/methods/supermask.md).

Every weight layer is a bias-free :class:`MaskedLinear` / :class:`MaskedConv2d` and every normalisation a per-task
non-affine :class:`TaskBatchNorm`. Layer densities and seeds are set by the strategy (:meth:`configure_masks`)
before :meth:`build`, so a config can choose widths while the strategy owns the density and the seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clkit.nets import Backbone
from strategies.supermask.layers import MaskedConv2d, MaskedLinear, TaskBatchNorm

__all__ = ["LayerFactory", "MaskedBackbone", "MaskedCNN", "MaskedGEMResNet18", "MaskedMLP"]

DensityOf = Callable[[tuple[int, ...]], float]


class LayerFactory:
    """Creates masked layers with one weight generator and distinct score seeds, in construction order."""

    def __init__(self, density_of: DensityOf, seed: int) -> None:
        self.density_of = density_of
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.count = 0

    def _score_seed(self) -> int:
        self.count += 1
        return self.seed * 1_009 + self.count

    def linear(self, n_in: int, n_out: int) -> MaskedLinear:
        density = self.density_of((n_out, n_in))
        return MaskedLinear(n_in, n_out, density, self.generator, self._score_seed())

    def conv(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> MaskedConv2d:
        density = self.density_of((c_out, c_in, kernel, kernel))
        return MaskedConv2d(c_in, c_out, kernel, density, stride, padding, self.generator, self._score_seed())


class MaskedBackbone(Backbone):
    """A :class:`clkit.nets.Backbone` built from masked layers; call :meth:`configure_masks` before ``build``."""

    def __init__(self) -> None:
        super().__init__()
        self.factory = LayerFactory(lambda shape: 0.1, 0)

    def configure_masks(self, density_of: DensityOf, seed: int) -> None:
        """Set the per-layer density rule and the weight/score seed (before :meth:`build`)."""
        if self.built:
            raise ValueError(f"{type(self).__name__} is already built; configure its masks before build()")
        self.factory = LayerFactory(density_of, seed)


class MaskedMLP(MaskedBackbone):
    """Flatten, then masked linear layers, each followed by a per-task non-affine BatchNorm (optional) and ReLU.

    Args:
        hidden: Hidden widths; the last one is ``out_features``.
        norm: Per-task BatchNorm after each hidden layer.
    """

    def __init__(self, *, hidden: Sequence[int] = (256, 256), norm: bool = True) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MaskedMLP needs at least one hidden layer")
        self.hidden = [int(h) for h in hidden]
        self.norm = norm
        self.out_features = self.hidden[-1]
        self.net = nn.Sequential()

    def _build(self, input_shape: tuple[int, ...]) -> None:
        widths = [math.prod(input_shape), *self.hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in itertools.pairwise(widths):
            layers.append(self.factory.linear(w_in, w_out))
            if self.norm:
                layers.append(TaskBatchNorm(w_out, dim=1))
            layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MaskedCNN(MaskedBackbone):
    """Masked conv3x3 - per-task BN - ReLU - MaxPool blocks, then global average pooling.

    Args:
        channels: Output channels of each block; the last one is ``out_features``.
    """

    def __init__(self, *, channels: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.out_features = self.channels[-1]
        self.net = nn.Sequential()

    def _build(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"MaskedCNN needs (C, H, W) inputs, got input shape {input_shape}")
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for c_out in self.channels:
            layers += [self.factory.conv(c_in, c_out, 3, padding=1), TaskBatchNorm(c_out), nn.ReLU()]
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    """ResNet basic block with masked 3x3 convs, per-task BN and a masked 1x1 shortcut when the shape changes."""

    def __init__(self, factory: LayerFactory, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = factory.conv(c_in, c_out, 3, stride, 1)
        self.bn1 = TaskBatchNorm(c_out)
        self.conv2 = factory.conv(c_out, c_out, 3, 1, 1)
        self.bn2 = TaskBatchNorm(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(factory.conv(c_in, c_out, 1, stride), TaskBatchNorm(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class MaskedGEMResNet18(MaskedBackbone):
    """GEM's reduced ResNet-18 (nf=20: widths 20/40/80/160), 3x3 stem with stride 1, ``avg_pool2d(4)``, all masked.

    On 32x32 inputs the features are 160-d (``8 nf``).

    Args:
        nf: Width of the first stage.
    """

    def __init__(self, *, nf: int = 20) -> None:
        super().__init__()
        self.nf = nf
        self.out_features = 8 * nf
        self.stem = nn.Sequential()
        self.stages = nn.Sequential()

    def _build(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 3 or min(input_shape[1:]) < 32:
            raise ValueError(f"MaskedGEMResNet18 needs (C, H>=32, W>=32) inputs, got input shape {input_shape}")
        nf, f = self.nf, self.factory
        self.stem = nn.Sequential(f.conv(input_shape[0], nf, 3, 1, 1), TaskBatchNorm(nf), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = nf
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            blocks += [_BasicBlock(f, c_in, nf * mult, stride), _BasicBlock(f, nf * mult, nf * mult, 1)]
            c_in = nf * mult
        self.stages = nn.Sequential(*blocks)
        side = (input_shape[1] // 8 // 4) * (input_shape[2] // 8 // 4)  # spatial cells left after avg_pool2d(4)
        self.out_features = 8 * nf * side

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        return F.avg_pool2d(out, 4).flatten(1)  # (B, 8nf, H/8, W/8) -> (B, 8nf * H/32 * W/32)


def default_masked_backbone(input_shape: Sequence[int]) -> MaskedBackbone:
    """A masked CNN for image inputs of side >= 16, a masked MLP otherwise (mirrors ``clkit.nets.default_backbone``)."""
    if len(input_shape) == 3 and min(input_shape[1:]) >= 16:
        return MaskedCNN()
    return MaskedMLP()
