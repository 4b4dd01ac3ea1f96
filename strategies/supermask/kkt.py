"""KNN-based knowledge transfer (KKT) for ExSSNeT (docs/methods/supermask.md): probe, source choice, score init."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["SimInit", "choose_sources", "knn_accuracy", "scores_from_masks", "scores_from_sources", "subset_indices"]

SimInit = Literal["none", "knn_best", "knn_always", "knn_all"]
_SIM_INITS = ("none", "knn_best", "knn_always", "knn_all")


def subset_indices(n: int, fraction: float, generator: torch.Generator) -> Tensor:
    """A seeded random subset of ``ceil(fraction * n)`` indices of ``range(n)`` (drawn once, reused for every source).

    Raises:
        ValueError: If ``fraction`` is outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data_fraction must be in (0, 1], got {fraction!r}")
    size = min(n, math.ceil(fraction * n))
    return torch.randperm(n, generator=generator)[:size]


def knn_accuracy(features: Tensor, labels: Tensor, k: int = 200, ref_fraction: float = 0.66) -> float:
    """Accuracy of a k-nearest-neighbour probe: the first ``ref_fraction`` rows vote, the rest are classified.

    Euclidean distances (``torch.cdist``); ``k`` is clamped to the reference size; vote ties go to the smallest label.

    Args:
        features: Penultimate features, (N, D); not normalised.
        labels: Integer labels local to the task, (N,).
        k: Number of neighbours.
        ref_fraction: Fraction of rows, taken in order, used as the reference set.

    Raises:
        ValueError: If there are fewer than 2 rows, or ``k < 1``, or ``ref_fraction`` is outside (0, 1).
    """
    n = features.shape[0]
    if n < 2 or k < 1 or not 0.0 < ref_fraction < 1.0:
        raise ValueError(f"need >= 2 rows, k >= 1, 0 < ref_fraction < 1; got n={n}, k={k}, ref_fraction={ref_fraction}")
    n_ref = min(max(1, math.floor(ref_fraction * n)), n - 1)
    ref, query = features[:n_ref].float(), features[n_ref:].float()
    ref_y, query_y = labels[:n_ref].long(), labels[n_ref:].long()
    k = min(k, n_ref)
    dist = torch.cdist(query, ref)  # (Q, D) x (R, D) -> (Q, R)
    nearest = dist.topk(k, dim=1, largest=False).indices  # (Q, k)
    num_classes = int(labels.max()) + 1
    votes = torch.nn.functional.one_hot(ref_y[nearest], num_classes).sum(dim=1)  # (Q, k, C) -> (Q, C)
    pred = votes.argmax(dim=1)  # first maximum = smallest label on ties
    return float((pred == query_y).float().mean())


def choose_sources(accs: list[float], num_classes: int, mode: SimInit) -> list[int]:
    """Earlier tasks whose scores initialise the new task, from their KNN accuracies.

    Args:
        accs: ``acc_j`` for every earlier task ``j``.
        num_classes: Classes of the new task; chance is ``1 / num_classes``.
        mode: ``"none"`` (never), ``"knn_best"`` (the best if above chance), ``"knn_always"`` (the best),
            ``"knn_all"`` (every task above chance).

    Raises:
        ValueError: On an unknown mode.
    """
    if mode not in _SIM_INITS:
        raise ValueError(f"sim_init must be one of {_SIM_INITS}, got {mode!r}")
    if mode == "none" or not accs:
        return []
    chance = 1.0 / num_classes
    best = int(torch.tensor(accs).argmax())  # first maximum on ties
    if mode == "knn_always":
        return [best]
    if mode == "knn_best":
        return [best] if accs[best] > chance else []
    return [j for j, a in enumerate(accs) if a > chance]


def scores_from_sources(scores: list[Tensor]) -> Tensor:
    """Element-wise mean of the chosen tasks' real-valued scores (a plain copy for one source)."""
    return torch.stack(scores).mean(dim=0)  # (m, *shape) -> shape


def scores_from_masks(masks: list[Tensor], generator: torch.Generator | None = None) -> Tensor:
    """Scores ``c (1 + M_bar + u / (2m))`` from stored masks, for ``keep_scores="bits"``.

    All values are positive, so top-k of ``|S|`` ranks weights by the mean mask ``M_bar`` and breaks ties at random;
    with one source it reproduces that source's mask exactly.

    Args:
        masks: ``m`` boolean masks of one layer's weight shape ``(c_out, ...)``.
        generator: Source of ``u ~ U(0, 1)``.
    """
    m = len(masks)
    mean = torch.stack(masks).float().mean(dim=0)  # (m, *shape) -> shape
    c = 1.0 / math.sqrt(masks[0][0].numel())  # 1 / sqrt(fan_in)
    u = torch.rand(mean.shape, generator=generator)
    return c * (1.0 + mean + u / (2.0 * m))
