"""The protocol networks of the GPM/TRGP/CUBER papers: bias-free, BatchNorm on batch statistics.

AlexNet-like for 10-split CIFAR-100, a reduced ResNet-18 for 5-Datasets and MiniImageNet. Every BatchNorm uses
``track_running_stats=False``, so train and eval mode both normalise with the batch's own statistics.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from clkit.nets import Backbone

__all__ = ["AlexNetGPM", "ReducedResNet18"]


class AlexNetGPM(Backbone):
    """The AlexNet-like network of the GPM/TRGP CIFAR-100 protocol: bias-free, BatchNorm on batch statistics.

    conv 64@4x4, 128@3x3, 256@2x2 (no padding), each BN + ReLU + Dropout (0.2, 0.2, 0.5) + MaxPool 2; then fc
    ``256·h·w -> 2048 -> 2048`` with BN1d + ReLU + Dropout 0.5 (for 32x32 inputs fc1 sees 256·2·2 = 1024 features).
    Every BatchNorm uses ``track_running_stats=False``: batch statistics in train and eval mode.

    Args:
        width: Width of the two fully connected layers (``out_features``).
    """

    def __init__(self, *, width: int = 2048) -> None:
        super().__init__()
        self.width = width
        self.out_features = width
        self.net = nn.Sequential()

    def _build(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 3 or min(input_shape[1:]) < 21:
            raise ValueError(f"AlexNetGPM needs (C, H, W) inputs of side >= 21, got input shape {input_shape}")
        layers: list[nn.Module] = []
        c_in, h, w = input_shape
        for c_out, k, p in ((64, 4, 0.2), (128, 3, 0.2), (256, 2, 0.5)):
            layers += [nn.Conv2d(c_in, c_out, k, bias=False), nn.BatchNorm2d(c_out, track_running_stats=False),
                       nn.ReLU(), nn.Dropout(p), nn.MaxPool2d(2)]
            c_in, h, w = c_out, (h - k + 1) // 2, (w - k + 1) // 2
        layers.append(nn.Flatten())  # (N, 256, h, w) -> (N, 256·h·w)
        w_in = c_in * h * w
        for _ in range(2):
            layers += [nn.Linear(w_in, self.width, bias=False), nn.BatchNorm1d(self.width, track_running_stats=False),
                       nn.ReLU(), nn.Dropout(0.5)]
            w_in = self.width
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    """ResNet basic block, bias-free, BN on batch statistics; a 1x1 shortcut conv when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, track_running_stats=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, track_running_stats=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out, track_running_stats=False))

    def forward(self, x: Tensor) -> Tensor:
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ReducedResNet18(Backbone):
    """The reduced ResNet-18 of the GPM/TRGP 5-Datasets and MiniImageNet protocols (bias-free, BN batch statistics).

    Stem conv 3x3 (``first_stride`` 1 for 32x32, 2 for 84x84) with ``nf`` channels, four stages of two basic blocks
    (``nf, 2nf, 4nf, 8nf`` channels, strides 1, 2, 2, 2), ``avg_pool2d(2)`` and flatten: 160·2·2 = 640 features for
    32x32 inputs and 160·3·3 = 1440 for 84x84 with ``nf = 20``. The 20 convolutions register in the order stem,
    then per block ``conv1, conv2, shortcut``; the protocol's per-layer sample counts in that order are
    ``[10] * 9 + [50] * 4 + [100] * 7``.

    Args:
        nf: Base width.
        first_stride: Stride of the stem convolution.
    """

    def __init__(self, *, nf: int = 20, first_stride: int = 1) -> None:
        super().__init__()
        self.nf, self.first_stride = nf, first_stride
        self.out_features = 0
        self.net = nn.Sequential()

    def _build(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"ReducedResNet18 needs (C, H, W) inputs, got input shape {input_shape}")
        nf = self.nf
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], nf, 3, stride=self.first_stride, padding=1, bias=False),
                                   nn.BatchNorm2d(nf, track_running_stats=False), nn.ReLU()]
        c_in = nf
        for c_out, stride in ((nf, 1), (2 * nf, 2), (4 * nf, 2), (8 * nf, 2)):
            layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        layers += [nn.AvgPool2d(2), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        side = [math.ceil(s / self.first_stride) for s in input_shape[1:]]
        for _ in range(3):
            side = [(s + 1) // 2 for s in side]  # stride-2 3x3 convs with padding 1
        self.out_features = 8 * nf * (side[0] // 2) * (side[1] // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


