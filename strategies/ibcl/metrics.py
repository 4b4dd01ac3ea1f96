"""IBCL's preference metrics and model selection, as pure functions (docs/methods/ibcl.md).

Notation: at stage ``i`` there are ``M`` preferences ``w^(p)`` over tasks ``0..i`` and ``a[p, l]``, the test accuracy
on task ``l`` of the model reported for preference ``p``. ``A_i[l]`` is the preference-weighted per-task accuracy;
``R[i, l] = A_i[l]`` is the lower-triangular matrix of those vectors over stages.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "average_per_task",
    "bt_ibcl",
    "oracle_per_task",
    "peak_per_task",
    "preference_weighted_accuracy",
    "select_by_validation",
    "stack_stages",
    "standard_bwt",
]


def preference_weighted_accuracy(prefs: Tensor, acc: Tensor) -> Tensor:
    r"""Per-task accuracy weighted by the preferences, normalised per task across preferences.

    .. math:: A_i[l] = \sum_p \omega_{p,l} a_{p,l}, \qquad \omega_{p,l} = w^{(p)}_l / \sum_{p'} w^{(p')}_l

    As in the official ``visualize_results.py``. A task no preference weighs gets ``nan``.

    Args:
        prefs: Preferences, (M, L).
        acc: Accuracies of the models reported for them, (M, L).

    Returns:
        (L,) per-task accuracies.
    """
    if prefs.shape != acc.shape or prefs.dim() != 2:
        raise ValueError(f"prefs and acc must both be (M, L), got {tuple(prefs.shape)} and {tuple(acc.shape)}")
    w = prefs.double()
    omega = w / w.sum(0, keepdim=True)  # (M, L), columns sum to 1
    return (omega * acc.double()).sum(0)


def average_per_task(per_task: Tensor) -> float:
    r"""Average per-task accuracy at a stage, :math:`\frac{1}{i+1}\sum_{l\le i} A_i[l]`."""
    return float(per_task.double().mean())


def peak_per_task(per_task: Tensor) -> float:
    r"""Peak per-task accuracy at a stage, :math:`\max_{l\le i} A_i[l]`."""
    return float(per_task.double().max())


def bt_ibcl(per_task: Tensor) -> float:
    r"""The official code's "backward transfer" at stage ``i``: a within-stage difference, **not** BWT.

    .. math:: BT_i = \frac{1}{i}\sum_{l=1}^{i}(A_i[l] - A_i[l-1])

    (which telescopes to ``(A_i[i] - A_i[0]) / i``). Returns 0 at stage 0.
    """
    a = per_task.double()
    i = a.numel() - 1
    return float((a[1:] - a[:-1]).sum() / i) if i > 0 else 0.0


def standard_bwt(matrix: Tensor, stage: int | None = None) -> float:
    r"""Backward transfer (Lopez-Paz & Ranzato, NeurIPS 2017) of ``R[i, l] = A_i[l]`` at ``stage`` (default: last).

    .. math:: \mathrm{BWT}_i = \frac{1}{i}\sum_{l<i}(R[i, l] - R[l, l])

    ``R[l, l]`` uses stage ``l``'s preferences. Returns 0 at stage 0.
    """
    r = matrix.double()
    i = r.shape[0] - 1 if stage is None else int(stage)
    if not 0 <= i < r.shape[0]:
        raise ValueError(f"stage {stage} is outside 0..{r.shape[0] - 1}")
    if i == 0:
        return 0.0
    return float((r[i, :i] - r.diagonal()[:i]).mean())


def select_by_validation(val_acc: Tensor, preference: Tensor) -> int:
    r"""Index of the sampled model maximising the preference-weighted validation accuracy.

    .. math:: k^* = \arg\max_k \sum_{l\le i} w_l\, \mathrm{acc}_{val}(\theta_k, l)

    Args:
        val_acc: Validation accuracy of each of ``K`` models on each task, (K, L).
        preference: (L,).
    """
    score = val_acc.double() @ preference.double()  # (K, L) @ (L,) -> (K,)
    return int(score.argmax())


def oracle_per_task(test_acc: Tensor) -> Tensor:
    """The official "test-oracle" selection: per task, the best of the ``K`` models on **test** data; (L,)."""
    return test_acc.max(dim=0).values


def stack_stages(per_stage: list[Tensor]) -> Tensor:
    """Stack per-stage vectors ``A_i`` (length ``i + 1``) into the (T, T) matrix ``R`` (``nan`` above the diagonal)."""
    t = len(per_stage)
    r = torch.full((t, t), float("nan"), dtype=torch.float64)
    for i, row in enumerate(per_stage):
        if row.numel() != i + 1:
            raise ValueError(f"stage {i} has {row.numel()} per-task values, expected {i + 1}")
        r[i, : i + 1] = row.double()
    return r
