r"""The accuracy matrix and the continual-learning metrics computed from it.

Notation: ``R`` is the (T, T) accuracy matrix, row ``i`` measured right after training experience ``i``, column ``j``
the test data of experience ``j``; ``b`` holds the accuracies of the untrained model. All values are fractions.
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import Tensor

__all__ = [
    "AccuracyCounts",
    "AccuracyMatrix",
    "accuracy_from_counts",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
    "learning_accuracy",
    "max_forgetting",
    "stream_metrics",
]


class AccuracyMatrix(torchmetrics.Metric):
    """Correct / total counts per (row, test experience); ``compute()`` returns the accuracy matrix.

    Summed across DDP ranks. Cells never updated are NaN. Never pass this object to ``self.log``: Lightning would
    reset it at epoch end.

    Args:
        n_experiences: T, the number of columns (test experiences).
        num_rows: Number of rows; T by default (use 1 for the untrained model's row).
    """

    higher_is_better = True
    full_state_update = False
    correct: Tensor  # (rows, T) states, registered by add_state
    total: Tensor

    def __init__(self, n_experiences: int, num_rows: int | None = None) -> None:
        super().__init__()
        if n_experiences < 1:
            raise ValueError(f"n_experiences must be >= 1, got {n_experiences}")
        rows = n_experiences if num_rows is None else num_rows
        self.n_experiences = n_experiences
        self.add_state("correct", torch.zeros(rows, n_experiences, dtype=torch.float64), dist_reduce_fx="sum",
                       persistent=True)
        self.add_state("total", torch.zeros(rows, n_experiences, dtype=torch.float64), dist_reduce_fx="sum",
                       persistent=True)

    def update(self, preds: Tensor, target: Tensor, *, train_exp: int, eval_exp: int) -> None:  # type: ignore[override]
        """Add a batch of predicted labels ``preds`` (N,) against ``target`` (N,) to cell (train_exp, eval_exp)."""
        self.correct[train_exp, eval_exp] += (preds == target).sum().to(self.correct.dtype)
        self.total[train_exp, eval_exp] += target.numel()

    def compute(self) -> Tensor:
        return accuracy_from_counts(self.correct, self.total)


def accuracy_from_counts(correct: Tensor, total: Tensor) -> Tensor:
    """``correct / total`` per cell; NaN where nothing was counted."""
    out = correct / total.clamp_min(1)
    return torch.where(total > 0, out, torch.full_like(out, float("nan")))


class AccuracyCounts:
    """Correct / total counts of a (rows, T) accuracy matrix, owned by the stream loop (plain tensors, no syncing).

    Under DDP every rank evaluates all of the data, so each rank's counts are already the exact ones.
    """

    def __init__(self, rows: int, cols: int) -> None:
        self.correct = torch.zeros(rows, cols, dtype=torch.float64)
        self.total = torch.zeros(rows, cols, dtype=torch.float64)

    def add(self, row: int, col: int, correct: int, total: int) -> None:
        self.correct[row, col] += correct
        self.total[row, col] += total

    def reset_row(self, row: int) -> None:
        self.correct[row] = 0
        self.total[row] = 0

    def accuracy(self) -> Tensor:
        """The (rows, T) accuracies; NaN in cells never evaluated."""
        return accuracy_from_counts(self.correct, self.total).float()

    def state(self) -> dict[str, Tensor]:
        return {"correct": self.correct.clone(), "total": self.total.clone()}

    def load(self, state: dict[str, Tensor]) -> None:
        self.correct = state["correct"].double().clone()
        self.total = state["total"].double().clone()


def _check(acc: Tensor) -> int:
    if acc.ndim != 2 or acc.shape[0] != acc.shape[1] or acc.shape[0] < 1:
        raise ValueError(f"expected a square (T, T) accuracy matrix with T >= 1, got shape {tuple(acc.shape)}")
    return int(acc.shape[0])


def average_accuracy(acc: Tensor) -> Tensor:
    r"""Final average accuracy.

    .. math:: \mathrm{ACC} = \frac{1}{T} \sum_{j=0}^{T-1} R_{T-1,j}

    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017.
    """
    _check(acc)
    return acc[-1].mean()


def learning_accuracy(acc: Tensor) -> Tensor:
    r"""Mean accuracy on each experience right after learning it: :math:`\frac{1}{T}\sum_j R_{j,j}`."""
    _check(acc)
    return acc.diagonal().mean()


def backward_transfer(acc: Tensor) -> Tensor:
    r"""Backward transfer; negative values mean forgetting.

    .. math:: \mathrm{BWT} = \frac{1}{T-1} \sum_{j=0}^{T-2} (R_{T-1,j} - R_{j,j})

    Lopez-Paz & Ranzato, NeurIPS 2017 (GEM). Avalanche's ``StreamForgetting`` ("accuracy right after training minus
    final accuracy") equals ``-BWT``. Returns 0 when T == 1.
    """
    t = _check(acc)
    if t == 1:
        return acc.new_zeros(())
    drop = acc[-1, : t - 1] - acc.diagonal()[: t - 1]  # (T-1,)
    return drop.mean()


def forward_transfer(acc: Tensor, random_init: Tensor) -> Tensor:
    r"""Forward transfer: accuracy on an experience before training on it, relative to the untrained model.

    .. math:: \mathrm{FWT} = \frac{1}{T-1} \sum_{j=1}^{T-1} (R_{j-1,j} - b_j)

    Lopez-Paz & Ranzato, NeurIPS 2017 (GEM). ``random_init`` is ``b``, shape (T,). Returns 0 when T == 1.
    """
    t = _check(acc)
    if random_init.shape != (t,):
        raise ValueError(f"random_init must have shape ({t},), got {tuple(random_init.shape)}")
    if t == 1:
        return acc.new_zeros(())
    before = acc[torch.arange(t - 1), torch.arange(1, t)]  # R[j-1, j] for j = 1..T-1 -> (T-1,)
    return (before - random_init[1:]).mean()


def forgetting(acc: Tensor) -> Tensor:
    r"""Average forgetting: best earlier accuracy minus final accuracy (positive values mean forgetting).

    .. math:: F = \frac{1}{T-1} \sum_{j=0}^{T-2} \left(\max_{l \le T-2} R_{l,j} - R_{T-1,j}\right)

    Chaudhry et al., "Riemannian Walk for Incremental Learning", ECCV 2018. Unlike Avalanche's forgetting (accuracy
    right after learning minus final accuracy, i.e. ``-BWT``), the reference is the best accuracy ever reached
    before the last experience; rows before experience ``j`` is learned count too, exactly as the formula reads.
    Returns 0 when T == 1.
    """
    t = _check(acc)
    if t == 1:
        return acc.new_zeros(())
    best = acc[: t - 1, : t - 1].max(dim=0).values  # (T-1,) best over rows l <= T-2
    return (best - acc[-1, : t - 1]).mean()


def max_forgetting(acc: Tensor) -> Tensor:
    r"""Forgetting as the supermask papers' code prints it: final minus best accuracy since learning (<= 0 forgets).

    .. math:: F = \frac{1}{T-1} \sum_{j=0}^{T-2} \left(R_{T-1,j} - \max_{j \le i \le T-2} R_{i,j}\right)

    Unlike :func:`forgetting`, only rows from experience ``j`` on count (a task's accuracy before it is learned is
    not a level it can forget) and the sign is reversed. As the supermask papers report it; it is exactly 0 whenever old
    tasks' accuracies never change, as SupSup/ExSSNeT guarantee in task-IL. Returns 0 when T == 1.
    """
    t = _check(acc)
    if t == 1:
        return acc.new_zeros(())
    rows = torch.arange(t - 1).unsqueeze(1)  # (T-1, 1)
    seen = rows >= torch.arange(t - 1).unsqueeze(0)  # (T-1, T-1): row i counts for column j iff i >= j
    best = acc[: t - 1, : t - 1].masked_fill(~seen.to(acc.device), float("-inf")).max(dim=0).values  # (T-1,)
    return (acc[-1, : t - 1] - best).mean()


def stream_metrics(acc: Tensor, random_init: Tensor) -> dict[str, float]:
    """All metrics as plain floats (fractions)."""
    return {
        "acc": float(average_accuracy(acc)),
        "bwt": float(backward_transfer(acc)),
        "fwt": float(forward_transfer(acc, random_init)),
        "forgetting": float(forgetting(acc)),
        "learning_acc": float(learning_accuracy(acc)),
    }
