"""SupSup one-shot task inference (docs/methods/supermask.md): entropy gradient with respect to mask coefficients.

The model is abstracted as ``forward(alpha, tasks) -> logits``: it runs the batch with every masked layer set to
``W * sum_i alpha_i M_{tasks[i]}``. The strategy builds that closure; these functions only do the math.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["SuperposedForward", "alpha_gradient", "infer_task_binary", "infer_task_exhaustive", "infer_task_oneshot",
           "mean_entropy"]

SuperposedForward = Callable[[Tensor, Sequence[int]], Tensor]


def mean_entropy(logits: Tensor) -> Tensor:
    """``H = -(1/B) sum_b sum_c p_bc log p_bc`` of ``softmax(logits)``, logits (B, C)."""
    logp = torch.log_softmax(logits, dim=1)  # (B, C)
    return -(logp.exp() * logp).sum(dim=1).mean()


def alpha_gradient(forward: SuperposedForward, tasks: Sequence[int]) -> Tensor:
    """``dH/dalpha`` at uniform ``alpha = 1/k`` over ``tasks``, shape (k,)."""
    if not tasks:
        raise ValueError("task inference needs at least one learned task")
    alpha = torch.full((len(tasks),), 1.0 / len(tasks), requires_grad=True)
    with torch.enable_grad():
        entropy = mean_entropy(forward(alpha, tasks))
        (grad,) = torch.autograd.grad(entropy, alpha)
    return grad


def infer_task_oneshot(forward: SuperposedForward, tasks: Sequence[int]) -> int:
    """One gradient step: the task whose coefficient most decreases the entropy, ``tasks[argmin_i g_i]``.

    Only ``tasks`` (the learned ones) are candidates; unlearned slots are never chosen.
    """
    grad = alpha_gradient(forward, tasks)
    return int(tasks[int(grad.argmin())])


def infer_task_binary(forward: SuperposedForward, tasks: Sequence[int]) -> int:
    """Binary variant: keep the tasks with ``g_i <= median(g)``, reset alpha uniform over them, repeat until one remains.

    Takes about ``log2(k)`` passes. If a pass removes nobody (all gradients tied), it falls back to the argmin.
    """
    candidates = list(tasks)
    while len(candidates) > 1:
        grad = alpha_gradient(forward, candidates)
        kept = [t for t, g in zip(candidates, grad.tolist()) if g <= float(grad.median())]
        if len(kept) == len(candidates):
            kept = [candidates[int(grad.argmin())]]
        candidates = kept
    if not candidates:
        raise ValueError("task inference needs at least one learned task")
    return int(candidates[0])


def infer_task_exhaustive(logits_of: Callable[[int], Tensor], tasks: Sequence[int]) -> int:
    """The learned task whose own mask gives the lowest mean entropy: ``k`` forward passes, no superposition.

    What the one-shot gradient approximates at first order, computed exactly; each task's entropy is divided by
    ``log C`` of its own output width so tasks with different class counts compare. ``logits_of(task)`` runs the batch
    through that task's masks and BN statistics.
    """
    if not tasks:
        raise ValueError("task inference needs at least one learned task")
    scores = []
    for task in tasks:
        logits = logits_of(task)  # (B, C_task)
        scores.append(float(mean_entropy(logits)) / max(math.log(logits.shape[1]), 1e-12))
    return int(tasks[min(range(len(tasks)), key=scores.__getitem__)])
