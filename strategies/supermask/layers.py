"""Masked layers and per-task non-affine BatchNorm for the supermask family (docs/methods/supermask.md).

A :class:`MaskedLayer` holds one fixed weight ``W`` and, per task ``t``, either trainable scores ``S_t`` (while the task
is learned) or a packed-bit mask ``M_t`` (after :meth:`MaskedLayer.freeze_task`). Its forward pass uses
``W * M_active`` or, in superposition mode, ``W * sum_i alpha_i M_i``.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strategies.supermask.masks import (
    count_bits,
    exclusive_bits,
    pack_bits,
    score_init_,
    signed_constant_,
    topk_mask,
    unpack_bits,
)

__all__ = ["BnInfer", "BufferStore", "KeepScores", "MaskedConv2d", "MaskedLayer", "MaskedLinear", "TaskBatchNorm"]

KeepScores = Literal["float", "bits"]
BnInfer = Literal["batch", "mixture"]


class BufferStore(nn.Module):
    """Tensors keyed by task id, stored as buffers named ``t<id>`` so they follow ``state_dict`` and ``.to()``."""

    def set(self, task: int, value: Tensor) -> None:
        self.register_buffer(f"t{task}", value)

    def get(self, task: int) -> Tensor:
        return getattr(self, f"t{task}")

    def pop(self, task: int) -> Tensor:
        return cast(Tensor, self._buffers.pop(f"t{task}"))

    def tasks(self) -> list[int]:
        return sorted(int(name[1:]) for name in self._buffers)

    def __contains__(self, task: object) -> bool:
        return f"t{task}" in self._buffers

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values() if b is not None)


class MaskedLayer(nn.Module):
    """Base of :class:`MaskedLinear` / :class:`MaskedConv2d`: fixed signed-constant weight, per-task scores/masks.

    Args:
        shape: Weight shape.
        density: Fraction of weights each task's mask keeps.
        generator: Source of the weight signs (part of the experiment seed).
        score_seed: Seed of this layer's per-task initial scores (see :meth:`task_generator`).
    """

    union: Tensor  # packed bits of the union of all frozen tasks' masks

    def __init__(
        self, shape: tuple[int, ...], density: float, generator: torch.Generator | None = None, score_seed: int = 0
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(signed_constant_(torch.empty(shape), generator))
        self.density = density
        self.per_row = False  # top-k per output unit instead of per layer (see masks.topk_mask)
        self.score_seed = score_seed
        self.scores = nn.ParameterDict()  # tasks being learned: str(t) -> S_t
        self.kept_scores = BufferStore()  # frozen real-valued scores (keep_scores="float")
        self.masks = BufferStore()  # frozen tasks: packed bits of M_t
        self.register_buffer("union", torch.zeros((self.weight.numel() + 7) // 8, dtype=torch.uint8))
        self.task = 0
        self.superposition: tuple[tuple[int, ...], Tensor] | None = None
        self._cache: tuple[tuple[int, int, int], Tensor] | None = None

    # ----- task management --------------------------------------------------------------------------------------------
    def add_task(self, task: int, generator: torch.Generator | None = None, init: Tensor | None = None) -> None:
        """Allocate trainable scores ``S_task``: random (``kaiming_uniform(a=sqrt 5)``) or a copy of ``init``.

        Without ``generator`` the random scores come from :meth:`task_generator`, so they are a fixed function of
        ``(score_seed, task)``; the untrained-model evaluation previews exactly these scores.
        """
        scores = torch.empty_like(self.weight)
        if init is None:
            score_init_(scores, generator if generator is not None else self.task_generator(task))
        else:
            scores.copy_(init.view_as(scores))
        self.scores[str(task)] = nn.Parameter(scores)

    def task_generator(self, task: int) -> torch.Generator:
        """The generator of ``task``'s initial scores in this layer."""
        return torch.Generator().manual_seed((self.score_seed * 1_000_003 + task * 7_919 + 104_729) % 2**62)

    def has_task(self, task: int) -> bool:
        return str(task) in self.scores or task in self.masks

    def freeze_task(self, task: int, keep_scores: KeepScores) -> None:
        """Store ``M_task`` as packed bits, add it to the union, drop or keep (as a buffer) its float scores.

        Freezing a task again replaces its mask and rebuilds the union from every stored mask.
        """
        scores = self.scores.pop(str(task))
        packed = pack_bits(topk_mask(scores.detach(), self.density, self.per_row))
        replacing = task in self.masks
        self.masks.set(task, packed)
        if replacing:
            self.union.zero_()
            for t in self.masks.tasks():
                self.union.copy_(self.union | self.masks.get(t))
        else:
            self.union.copy_(self.union | packed)
        if keep_scores == "float":
            self.kept_scores.set(task, scores.detach().clone())
        self._cache = None

    def real_scores(self, task: int) -> Tensor:
        """Float scores of ``task`` (trainable or kept); raises ``KeyError`` when only bits remain."""
        if str(task) in self.scores:
            return self.scores[str(task)].detach()
        if task in self.kept_scores:
            return self.kept_scores.get(task)
        raise KeyError(f"no float scores kept for task {task}")

    def packed_mask(self, task: int) -> Tensor:
        """Packed bits of ``M_task`` (stored, or computed from the current scores)."""
        if task in self.masks:
            return self.masks.get(task)
        return pack_bits(self.bool_mask(task))

    def bool_mask(self, task: int) -> Tensor:
        """``M_task`` as a boolean tensor of the weight's shape."""
        if str(task) in self.scores:
            return topk_mask(self.scores[str(task)].detach(), self.density, self.per_row).bool()
        if task in self.masks:
            return unpack_bits(self.masks.get(task), self.weight.shape)
        raise KeyError(f"task {task} was never added to this layer (known: {self.known_tasks()})")

    def exclusive_mask(self, task: int) -> Tensor:
        """``E_task = M_task & ~U`` (boolean, weight shape), ``U`` the union of all frozen tasks' masks."""
        return unpack_bits(exclusive_bits(pack_bits(self.bool_mask(task)), self.union), self.weight.shape)

    def known_tasks(self) -> list[int]:
        return sorted(set(self.masks.tasks()) | {int(k) for k in self.scores})

    def union_count(self) -> int:
        return count_bits(self.union)

    # ----- forward ----------------------------------------------------------------------------------------------------
    def _mask(self) -> Tensor:
        task = self.task
        trainable = str(task) in self.scores
        if not trainable and task not in self.masks:
            return self._preview_mask(task)
        src = self.scores[str(task)] if trainable else self.masks.get(task)
        needs_graph = trainable and self.training and src.requires_grad and torch.is_grad_enabled()
        if needs_graph:
            return topk_mask(src, self.density, self.per_row)
        key = (task, src.data_ptr(), src._version)
        if self._cache is None or self._cache[0] != key:
            with torch.inference_mode(False):  # a cache made during evaluation must be usable in training
                self._cache = (key, self.bool_mask(task).to(self.weight.dtype))
        return self._cache[1]

    def _preview_mask(self, task: int) -> Tensor:
        """Mask of the initial scores of a task not added yet (evaluation of the untrained model only)."""
        if self.training:
            raise KeyError(f"active task {task} was never added to this layer (known: {self.known_tasks()})")
        key = (task, -1, -1)
        if self._cache is None or self._cache[0] != key:
            with torch.inference_mode(False):
                scores = score_init_(torch.empty(self.weight.shape), self.task_generator(task))
                self._cache = (key, topk_mask(scores, self.density, self.per_row).to(self.weight.device, self.weight.dtype))
        return self._cache[1]

    def effective_weight(self) -> Tensor:
        """``W * M_task``, or ``W * sum_i alpha_i M_i`` in superposition mode."""
        if self.superposition is None:
            return self.weight * self._mask()
        tasks, alpha = self.superposition
        stack = torch.stack([self.bool_mask(t).flatten() for t in tasks]).to(alpha.dtype)  # (k, n)
        mixed = (alpha.view(1, -1) @ stack).view_as(self.weight)  # (1, k) @ (k, n) -> (1, n) -> weight shape
        return self.weight * mixed

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}, density={self.density:.4g}, tasks={self.known_tasks()}"


class MaskedLinear(MaskedLayer):
    """Bias-free linear layer ``y = x (W * M_t)^T``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        density: float,
        generator: torch.Generator | None = None,
        score_seed: int = 0,
    ) -> None:
        super().__init__((out_features, in_features), density, generator, score_seed)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight())  # (B, in) @ (in, out) -> (B, out)


class MaskedConv2d(MaskedLayer):
    """Bias-free 2-d convolution with a masked weight."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        density: float,
        stride: int = 1,
        padding: int = 0,
        generator: torch.Generator | None = None,
        score_seed: int = 0,
    ) -> None:
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), density, generator, score_seed)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), None, self.stride, self.padding)


class TaskBatchNorm(nn.Module):
    """Per-task non-affine BatchNorm: ``bns[task]`` normalises, with running statistics per task.

    In superposition mode (task inference) ``bn_infer`` chooses between the batch's own statistics
    (``"batch"``, running statistics untouched) and the alpha-weighted mixture of the tasks' statistics.
    """

    def __init__(self, num_features: int, dim: Literal[1, 2] = 2) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"dim must be 1 or 2, got {dim!r}")
        self.num_features = num_features
        self.dim = dim
        self.bns = nn.ModuleList()
        self.task = 0
        self.superposition: tuple[tuple[int, ...], Tensor] | None = None
        self.bn_infer: BnInfer = "batch"

    def bn(self, task: int) -> nn.modules.batchnorm._BatchNorm:
        """The BatchNorm of ``task``."""
        return cast(nn.modules.batchnorm._BatchNorm, self.bns[task])

    def add_task(self, task: int) -> None:
        cls = nn.BatchNorm2d if self.dim == 2 else nn.BatchNorm1d
        while len(self.bns) <= task:
            self.bns.append(cls(self.num_features, affine=False))

    def forward(self, x: Tensor) -> Tensor:
        if self.superposition is None:
            if self.task < len(self.bns):
                return self.bns[self.task](x)
            if self.training:
                raise KeyError(f"active task {self.task} has no BatchNorm (have {len(self.bns)})")
            return x / (1.0 + 1e-5) ** 0.5  # a task not added yet: a fresh BatchNorm in eval mode
        if self.bn_infer == "batch":
            return F.batch_norm(x, None, None, training=True)
        if self.bn_infer != "mixture":
            raise ValueError(f"bn_infer must be 'batch' or 'mixture', got {self.bn_infer!r}")
        tasks, alpha = self.superposition
        a = alpha.detach().view(-1, 1)  # (k, 1)
        means = torch.stack([cast(Tensor, self.bn(t).running_mean) for t in tasks])  # (k, C)
        var = torch.stack([cast(Tensor, self.bn(t).running_var) for t in tasks])  # (k, C)
        mean = (a * means).sum(0)  # (C,)
        mix_var = (a * (var + means**2)).sum(0) - mean**2  # (C,)
        return F.batch_norm(x, mean, mix_var.clamp_min(0.0), training=False, eps=self.bn(tasks[0]).eps)
