"""Whole-model operations on masked networks: task switching, superposition, freezing, checkpoint layout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from strategies.supermask.layers import BnInfer, KeepScores, MaskedLayer, TaskBatchNorm

__all__ = [
    "add_task",
    "freeze_task",
    "layout",
    "mask_state_bytes",
    "masked_layers",
    "restore_layout",
    "set_task",
    "superposed",
    "task_norms",
]


def masked_layers(model: nn.Module) -> list[MaskedLayer]:
    """Every :class:`MaskedLayer` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MaskedLayer)]


def task_norms(model: nn.Module) -> list[TaskBatchNorm]:
    """Every :class:`TaskBatchNorm` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, TaskBatchNorm)]


def add_task(
    model: nn.Module, task: int, generator: torch.Generator | None = None, inits: list[Tensor] | None = None
) -> None:
    """Allocate scores (random from ``generator``, or ``inits`` per masked layer) and a BatchNorm for ``task``."""
    layers = masked_layers(model)
    if inits is not None and len(inits) != len(layers):
        raise ValueError(f"got {len(inits)} score inits for {len(layers)} masked layers")
    for i, layer in enumerate(layers):
        layer.add_task(task, generator, None if inits is None else inits[i])
    for bn in task_norms(model):
        bn.add_task(task)


def set_task(model: nn.Module, task: int) -> None:
    """Make ``task`` active in every masked layer and task BatchNorm."""
    for m in masked_layers(model) + task_norms(model):
        m.task = task


def freeze_task(model: nn.Module, task: int, keep_scores: KeepScores) -> None:
    """Store ``task``'s masks as packed bits in every masked layer (see :meth:`MaskedLayer.freeze_task`)."""
    for layer in masked_layers(model):
        layer.freeze_task(task, keep_scores)


@contextmanager
def superposed(model: nn.Module, tasks: list[int], alpha: Tensor, bn_infer: BnInfer = "batch") -> Iterator[None]:
    """Temporarily run ``model`` with ``W * sum_i alpha_i M_{tasks[i]}`` and superposed BatchNorm (spec §9)."""
    if bn_infer not in ("batch", "mixture"):
        raise ValueError(f"bn_infer must be 'batch' or 'mixture', got {bn_infer!r}")
    key = (tuple(tasks), alpha)
    modules: list[Any] = masked_layers(model) + task_norms(model)
    for m in modules:
        m.superposition = key
        if isinstance(m, TaskBatchNorm):
            m.bn_infer = bn_infer
    try:
        yield
    finally:
        for m in modules:
            m.superposition = None


def layout(model: nn.Module) -> dict[str, Any]:
    """What per-task tensors exist, so an empty model can be re-shaped before ``load_state_dict``."""
    layers = masked_layers(model)
    return {
        "scores": [sorted(int(k) for k in layer.scores) for layer in layers],
        "kept_scores": [layer.kept_scores.tasks() for layer in layers],
        "masks": [layer.masks.tasks() for layer in layers],
        "bns": [len(bn.bns) for bn in task_norms(model)],
    }


def restore_layout(model: nn.Module, spec: dict[str, Any]) -> None:
    """Create placeholder scores, masks and BatchNorms matching ``spec`` (values come from the state dict)."""
    layers = masked_layers(model)
    if len(spec["scores"]) != len(layers):
        raise ValueError(f"checkpoint has {len(spec['scores'])} masked layers, the model has {len(layers)}")
    for layer, scores, kept, masks in zip(layers, spec["scores"], spec["kept_scores"], spec["masks"]):
        for t in scores:
            if str(t) not in layer.scores:
                layer.add_task(t, init=torch.zeros_like(layer.weight))
        for t in kept:
            layer.kept_scores.set(t, torch.zeros_like(layer.weight))
        for t in masks:
            layer.masks.set(t, torch.zeros_like(layer.union))
    for bn, count in zip(task_norms(model), spec["bns"]):
        if count:
            bn.add_task(count - 1)


def mask_state_bytes(model: nn.Module) -> int:
    """Bytes of continual-learning memory in masked layers: packed masks, unions and kept float scores."""
    total = 0
    for layer in masked_layers(model):
        total += layer.masks.nbytes() + layer.kept_scores.nbytes() + layer.union.numel()
    return total
