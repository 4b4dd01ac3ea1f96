"""The per-preference baselines of IBCL's protocol (``docs/methods/ibcl.md``, "Baselines").

- :func:`train_preference_model`: one deterministic model trained for one preference on the preference-weighted
  loss over the seen tasks' training data (the cost IBCL avoids: it needs every seen task's data and one training
  run per preference), the epoch kept by preference-weighted validation accuracy; its cost is counted in batch
  updates.
- :func:`select_from_gaussian`: models for many preferences from one diagonal Gaussian (e.g. VCL's predictive
  posterior) by IBCL's own zero-shot rule: ``K`` draws, the best by preference-weighted validation accuracy.

Both work on flat parameter vectors of the MLPs of :mod:`strategies.ibcl.bayes` over feature tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clkit.data import TensorData
from strategies.ibcl.bayes import BayesMLP, mlp_forward
from strategies.ibcl.evaluation import task_accuracies
from strategies.ibcl.metrics import select_by_validation

__all__ = ["PreferenceFit", "select_from_gaussian", "train_preference_model"]


def _identity(x: Tensor) -> Tensor:
    return x.flatten(1)


@dataclass
class PreferenceFit:
    """One trained preference model."""

    theta: Tensor
    """(P,): the parameters of the kept epoch."""
    batch_updates: int
    """Optimizer steps taken (every epoch, including those after the kept one)."""
    best_epoch: int
    """1-based epoch kept (the best preference-weighted validation accuracy; 0: the initialisation)."""
    val_acc: Tensor
    """(L,): per-task validation accuracy of the kept model."""


def train_preference_model(train_sets: Sequence[TensorData], preference: Sequence[float] | Tensor,
                           sizes: Sequence[int], *, val_sets: Sequence[TensorData], epochs: int = 30,
                           lr: float = 0.01, batch_size: int = 32, weight_decay: float = 0.0,
                           seed: int = 0) -> PreferenceFit:
    r"""Adam on :math:`\sum_l w_l\, \overline{\mathrm{NLL}}_l(\theta)`, the mean loss of each task weighted by the
    preference, by minibatches over the union of the tasks with ``w_l > 0`` (each sample weighted
    ``w_l N / N_l``, so a batch's mean is an unbiased estimate). After each epoch the model is scored by
    preference-weighted validation accuracy; the best epoch is kept.

    Args:
        train_sets, val_sets: Per seen task, its training and validation data (features, binary or class labels).
        preference: ``w`` over those tasks (non-negative, summing to 1).
        sizes: Layer widths of the MLP ``(in, ..., out)``; ``out == 1`` is a sigmoid head.
        epochs, lr, batch_size, weight_decay: The training budget (Adam).
        seed: Seed of the initialisation and the batch order.
    """
    w = torch.as_tensor(preference, dtype=torch.float64)
    if w.numel() != len(train_sets) or len(val_sets) != len(train_sets) or (w < 0).any():
        raise ValueError(f"need one non-negative weight and one validation set per training set, got {w.tolist()}, "
                         f"{len(train_sets)} training and {len(val_sets)} validation sets")
    gen = torch.Generator().manual_seed(int(seed))
    used = [k for k in range(len(train_sets)) if float(w[k]) > 0]
    xs, ys, ws = [], [], []
    for k in used:
        x, y, _ = train_sets[k][torch.arange(len(train_sets[k]))]
        xs.append(x.flatten(1))
        ys.append(y)
        ws.append(torch.full((len(y),), float(w[k]) / len(y)))
    x, y, weight = torch.cat(xs), torch.cat(ys), torch.cat(ws)
    weight = weight * len(y) / weight.sum()
    theta = BayesMLP(sizes, chains=1, generator=gen).mu.detach()[0].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr, weight_decay=weight_decay)

    def score() -> tuple[float, Tensor]:
        with torch.no_grad():
            acc = task_accuracies(theta.detach().unsqueeze(0), list(val_sets), _identity, sizes)[0]
        return float(acc.double() @ w), acc

    best_score, best_acc = score()
    best_theta, best_epoch, updates = theta.detach().clone(), 0, 0
    for epoch in range(1, epochs + 1):
        for rows in torch.randperm(len(y), generator=gen).split(batch_size):
            logits = mlp_forward(theta.unsqueeze(0), x[rows], sizes)[0]  # (B, out)
            if logits.shape[-1] == 1:
                per = F.binary_cross_entropy_with_logits(logits[:, 0], y[rows].to(logits.dtype), reduction="none")
            else:
                per = F.cross_entropy(logits, y[rows].long(), reduction="none")
            loss = (per * weight[rows]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
        current, acc = score()
        if current > best_score:
            best_score, best_acc, best_theta, best_epoch = current, acc, theta.detach().clone(), epoch
    return PreferenceFit(best_theta, updates, best_epoch, best_acc)


def select_from_gaussian(mu: Tensor, sigma: Tensor, prefs: Tensor, val_sets: Sequence[TensorData],
                         sizes: Sequence[int], *, num_samples: int = 10,
                         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per preference, the best of ``num_samples`` draws from ``N(mu, diag sigma^2)`` by preference-weighted
    validation accuracy (one shared set of draws, as one model's posterior serves every preference).

    Returns:
        ``(thetas (M, P), val_acc (M, L))``.
    """
    eps = torch.randn(num_samples, mu.numel(), generator=generator, dtype=mu.dtype)
    draws = mu.unsqueeze(0) + sigma.unsqueeze(0) * eps  # (K, P)
    val = task_accuracies(draws, list(val_sets), _identity, sizes)  # (K, L)
    picks = [select_by_validation(val, w) for w in prefs]
    return draws[picks], val[picks]
