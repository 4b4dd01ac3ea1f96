"""Batch transforms for compactly stored images (``TensorData.transform``).

Images are stored as ``uint8`` tensors of shape (N, C, H, W), a quarter of the memory of float32; the transform
turns each batch into normalised float32 and, for training data, applies the random crop and horizontal flip of
the torchvision recipe ``RandomCrop(size, padding) + RandomHorizontalFlip()``, vectorised over the batch and drawn
from a seeded generator (never the global random state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["ImageBatch", "random_crop_flip"]


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per-sample random crop (after zero padding) and horizontal flip of a batch.

    Args:
        x: Images (N, C, H, W), any dtype.
        padding: Zero padding on each side before cropping back to (H, W); 0 disables cropping.
        flip: Flip each image horizontally with probability 1/2.
        generator: Source of randomness.

    Returns:
        Augmented images (N, C, H, W), same dtype.
    """
    n, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = dy[:, None] + torch.arange(h)  # (N, H)
        cols = dx[:, None] + torch.arange(w)  # (N, W)
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]  # (N, C, H, W)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5  # (N,)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


class ImageBatch:
    """``uint8`` images (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, with optional augmentation.

    Args:
        mean: Per-channel mean (one value per channel, or one value for all).
        std: Per-channel standard deviation.
        crop_padding: Random-crop padding (training transform only; 0 = no crop).
        flip: Random horizontal flip (training transform only).
        seed: Seed of the augmentation generator.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, crop_padding: int = 0, flip: bool = False,
                 seed: int = 0) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean {list(mean)} and std {list(std)} need the same length")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.seed = int(seed)
        self._generator: Optional[torch.Generator] = None

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def without_augmentation(self) -> ImageBatch:
        """The same normalisation, no augmentation (for validation and test data)."""
        return ImageBatch(self.mean, self.std)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # a single image indexed with an int
            return self(x.unsqueeze(0)).squeeze(0)
        if self.augments:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(self.seed)
            x = random_crop_flip(x, self.crop_padding, self.flip, self._generator)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)  # (1, C, 1, 1) or (1, 1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_generator"] = None  # generators do not pickle; a restored transform restarts from its seed
        return state

    def __repr__(self) -> str:
        aug = f", crop_padding={self.crop_padding}, flip={self.flip}, seed={self.seed}" if self.augments else ""
        return f"ImageBatch(mean={self.mean}, std={self.std}{aug})"
