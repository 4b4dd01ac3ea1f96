"""SupSup one-shot task inference (docs/methods/supermask.md): entropy gradient with respect to mask coefficients.

The model is abstracted as ``forward(alpha, tasks) -> logits``: it runs the batch with every masked layer set to
``W * sum_i alpha_i M_{tasks[i]}``. The strategy builds that closure; these functions only do the math.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Objective", "SuperposedForward", "alpha_gradient", "infer_task_binary", "infer_task_exhaustive",
           "infer_task_oneshot", "mean_entropy", "superfluous_objective"]

SuperposedForward = Callable[[Tensor, Sequence[int]], Tensor]
Objective = Callable[[Tensor], Tensor]  # logits (B, C) -> scalar the correct task's mask should lower


def mean_entropy(logits: Tensor) -> Tensor:
    """``H = -(1/B) sum_b sum_c p_bc log p_bc`` of ``softmax(logits)``, logits (B, C)."""
    logp = torch.log_softmax(logits, dim=1)  # (B, C)
    return -(logp.exp() * logp).sum(dim=1).mean()


def superfluous_objective(real: int) -> Objective:
    """SupSup's ``G``: ``logsumexp`` over all outputs with the first ``real`` (the classes) detached, batch mean.

    Its gradient flows through the superfluous outputs only; every task's mask was trained to keep them low on its
    own data (they are never a label), so the correct mask is the one whose coefficient lowers them most.
    """
    def g(logits: Tensor) -> Tensor:
        out = torch.cat([logits[:, :real].detach(), logits[:, real:]], dim=1)  # (B, real + s)
        return out.logsumexp(dim=1).mean()

    return g


def alpha_gradient(forward: SuperposedForward, tasks: Sequence[int], objective: Objective = mean_entropy) -> Tensor:
    """``d objective / d alpha`` (default the entropy ``H``) at uniform ``alpha = 1/k`` over ``tasks``, shape (k,)."""
    if not tasks:
        raise ValueError("task inference needs at least one learned task")
    alpha = torch.full((len(tasks),), 1.0 / len(tasks), requires_grad=True)
    with torch.enable_grad():
        value = objective(forward(alpha, tasks))
        (grad,) = torch.autograd.grad(value, alpha)
    return grad


def infer_task_oneshot(forward: SuperposedForward, tasks: Sequence[int], objective: Objective = mean_entropy) -> int:
    """One gradient step: the task whose coefficient most decreases the entropy, ``tasks[argmin_i g_i]``.

    Only ``tasks`` (the learned ones) are candidates; unlearned slots are never chosen.
    """
    grad = alpha_gradient(forward, tasks, objective)
    return int(tasks[int(grad.argmin())])


def infer_task_binary(forward: SuperposedForward, tasks: Sequence[int], objective: Objective = mean_entropy) -> int:
    """Binary variant: keep the tasks with ``g_i <= median(g)``, reset alpha uniform over them, repeat until one remains.

    Takes about ``log2(k)`` passes. If a pass removes nobody (all gradients tied), it falls back to the argmin.
    """
    candidates = list(tasks)
    while len(candidates) > 1:
        grad = alpha_gradient(forward, candidates, objective)
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
