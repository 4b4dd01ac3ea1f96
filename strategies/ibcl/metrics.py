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
    "spearman",
    "standard_bwt",
    "weight_rank_correlation",
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


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (1-based; ties share the mean of their ranks), float64."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for value in torch.unique(x):
        tied = x == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two vectors (ties: average ranks); ``nan`` when either is constant."""
    if a.shape != b.shape or a.dim() != 1 or a.numel() < 2:
        raise ValueError(f"spearman needs two vectors of the same length >= 2, got {tuple(a.shape)}, {tuple(b.shape)}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra @ rb) / denom) if denom > 0 else float("nan")


def weight_rank_correlation(prefs: Tensor, acc: Tensor) -> list[float]:
    r"""Per task ``l``: Spearman's correlation over the ``M`` preferences between ``w^{(p)}_l`` and ``a_{p,l}``.

    1 when a task's accuracy rises with its weight in every pair of preferences; ``nan`` for a single task or a
    constant accuracy. Args as :func:`preference_weighted_accuracy`; returns (L,) as a list.
    """
    if prefs.shape != acc.shape or prefs.dim() != 2:
        raise ValueError(f"prefs and acc must both be (M, L), got {tuple(prefs.shape)} and {tuple(acc.shape)}")
    if prefs.shape[1] < 2 or prefs.shape[0] < 2:
        return [float("nan")] * prefs.shape[1]
    return [spearman(prefs[:, col], acc[:, col]) for col in range(prefs.shape[1])]


def stage_summary(prefs: Tensor, acc: Tensor) -> dict[str, object]:
    """The preference metrics of one stage from the reported models' accuracies ``acc`` (M, L): the per-task
    accuracies, their average and peak, ``bt_ibcl`` and the per-task rank correlations (JSON-able)."""
    per_task = preference_weighted_accuracy(prefs, acc)
    return {"per_task_acc": per_task.tolist(), "avg_per_task_acc": average_per_task(per_task),
            "peak_per_task_acc": peak_per_task(per_task), "bt_ibcl": bt_ibcl(per_task),
            "spearman": weight_rank_correlation(prefs, acc)}
