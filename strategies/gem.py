"""Gradient Episodic Memory (Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017)."""

from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clkit.errors import ConfigError
from strategies.agem import flat_grad, set_flat_grad
from strategies.rehearsal import Rehearsal

__all__ = ["GEM", "QP_SOLVER", "project_gem"]

QP_SOLVER = "quadprog"
"""The qpsolvers back end (PyPI ``quadprog``, the solver of the authors' code)."""


def project_gem(g: Tensor, memories: Tensor, margin: float = 0.5, eps: float = 1e-3) -> Tensor:
    r"""The gradient closest to ``g`` whose dot product with every row of ``memories`` (K, P) is non-negative.

    Solves the dual of :math:`\min_{\tilde g} \frac12\|g - \tilde g\|^2` s.t. :math:`G \tilde g \ge 0` (the paper's
    Eq. 13): :math:`\min_v \frac12 v^\top G G^\top v + g^\top G^\top v` s.t. :math:`v \ge \gamma`, and returns
    :math:`\tilde g = G^\top v^* + g`. ``margin`` is the paper's γ (a bias towards backward transfer), ``eps`` a
    ridge on :math:`G G^\top` that keeps the QP strictly convex, as in the authors' code.
    """
    import qpsolvers

    G = memories.detach().double().cpu().numpy()
    gg = g.detach().double().cpu().numpy()
    k = G.shape[0]
    P = G @ G.T
    P = 0.5 * (P + P.T) + eps * np.eye(k)
    q = G @ gg
    v = qpsolvers.solve_qp(P, q, G=-np.eye(k), h=-np.full(k, float(margin)), solver=QP_SOLVER)
    if v is None:  # (infeasible cannot happen: v >= margin is always feasible; a solver failure can)
        raise RuntimeError("GEM's quadratic program found no solution")
    return torch.from_numpy(G.T @ v + gg).to(g)


class GEM(Rehearsal):
    """GEM: the step's gradient ``g`` is kept if it does not increase the loss on any past experience's episodic
    memory (``g · g_k >= 0`` for the gradient ``g_k`` on each past experience's memory); otherwise it is replaced by
    the closest gradient that does not, found by a quadratic program (:func:`project_gem`, solved with
    ``qpsolvers``' ``quadprog`` back end).

    The memory holds samples of past experiences only, filled at each experience's end, class-balanced within a
    budget of ``buffer_size`` samples in all (the paper: ``M / T`` per task); one constraint per experience in it.
    Supports task-IL (each experience's memory loss uses its own head, as the paper's CIFAR-100 protocol),
    domain-IL (the paper's permuted and rotated MNIST) and class-IL.

    Args:
        buffer_size: Memory budget, in samples.
        margin: γ of the paper's footnote (the authors' ``memory_strength``, 0.5).
        buffer_policy: ``"class_balanced"`` (default) or ``"reservoir"``.
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    ONLINE = False

    def __init__(self, *, margin: float = 0.5,
                 buffer_policy: Literal["reservoir", "class_balanced"] = "class_balanced", **kwargs: Any) -> None:
        super().__init__(buffer_policy=buffer_policy, **kwargs)
        if margin < 0:
            raise ConfigError(f"margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self._memories: Optional[Tensor] = None
        self.projections = 0  # steps whose gradient was projected in the current experience (not CL memory)

    def constrained_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 0:
            self.projections = 0

    def memory_gradients(self) -> Optional[Tensor]:
        """(K, P): the loss gradient on each past experience's memory, K = experiences in the buffer."""
        if self.buffer_len == 0:
            return None
        params = self.constrained_parameters()
        tasks = self.buffer["t"]
        rows = []
        for task in tasks.unique().tolist():
            idx = (tasks == task).nonzero().squeeze(1)
            loss = F.cross_entropy(self(self.buffer["x"][idx], tasks[idx]), self.buffer["y"][idx])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, params)]))
        return torch.stack(rows)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        self._memories = self.memory_gradients()
        loss = F.cross_entropy(self(x, t), y)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def transform_gradients(self) -> None:
        if self._memories is None:
            return
        params = self.constrained_parameters()
        g = flat_grad(params)
        if bool((self._memories @ g < 0).any()):
            set_flat_grad(params, project_gem(g, self._memories, self.margin))
            self.projections += 1
