"""Orthogonal Gradient Descent (Farajtabar et al., "Orthogonal Gradient Descent for Continual Learning",
AISTATS 2020)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from clkit.data import Experience
from clkit.errors import ConfigError
from clkit.module import ContinualModule
from strategies.agem import flat_grad, set_flat_grad

__all__ = ["OGD"]


class OGD(ContinualModule):
    """OGD-GTL: after each experience, the gradients of the ground-truth logit ``f_y(x)`` of ``gradients_per_task``
    random training samples (w.r.t. every parameter) are orthonormalised against the stored ones and added to an
    orthonormal basis; every later gradient is projected onto the basis's orthogonal complement,
    ``g ← g − Σ_k (g · u_k) u_k`` (the paper's Algorithm 1). Supports task-IL (the paper's split MNIST, a head per
    task) and domain-IL (permuted and rotated MNIST). Use plain SGD: the guarantee is for the projected step itself.

    Args:
        gradients_per_task: Sampled gradients stored per experience (the paper: 200).
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    SUPPORTED_SCENARIOS: ClassVar[frozenset[str]] = frozenset({"task-il", "domain-il"})
    basis: Tensor  # CL memory: (K, P) orthonormal rows over the flattened parameters

    def __init__(self, *, gradients_per_task: int = 200, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(gradients_per_task) < 1:
            raise ConfigError(f"gradients_per_task must be >= 1, got {gradients_per_task}")
        self.gradients_per_task = int(gradients_per_task)
        self.register_memory("basis", torch.zeros(0))

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def transform_gradients(self) -> None:
        if self.basis.numel() == 0:
            return
        params = self._params()
        g = flat_grad(params)
        set_flat_grad(params, g - self.basis.T @ (self.basis @ g))

    def logit_gradients(self, experience: Experience) -> Tensor:
        """(m, P): the gradient of the ground-truth logit of ``m`` random training samples, one row each."""
        data = experience.train
        idx = torch.randperm(len(data), generator=self.generator("ogd", experience.index))
        x, y, _ = data[idx[: self.gradients_per_task]]
        names = [n for n, p in self.named_parameters() if p.requires_grad]
        params = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        buffers = dict(self.named_buffers())

        task = torch.tensor([experience.task_id], device=self.device)  # one task per experience (not vmapped)

        def logit(p: Mapping[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            out = functional_call(self, (dict(p), buffers), (xi.unsqueeze(0), task))
            pick = torch.arange(out.shape[1], device=out.device) == yi  # f_y(x), vmap-friendly (no indexing by yi)
            return torch.where(pick, out[0], torch.zeros_like(out[0])).sum()

        was_training = self.training
        self.eval()
        rows = []
        for xb, yb in zip(x.split(64), y.split(64)):
            g = vmap(grad(logit), in_dims=(None, 0, 0))(params, xb.to(self.device), yb.to(self.device))
            rows.append(torch.cat([g[n].flatten(1) for n in names], dim=1))
        self.train(was_training)
        return torch.cat(rows)

    def on_experience_end(self, experience: Experience) -> None:
        new = self.logit_gradients(experience)
        basis = self.basis.to(new.device) if self.basis.numel() else new.new_zeros(0, new.shape[1])
        for _ in range(2):  # Gram-Schmidt against the stored basis, twice for round-off
            new = new - (new @ basis.T) @ basis
        q, r = torch.linalg.qr(new.T)  # (P, m): orthonormal columns spanning the new directions
        diag = r.diagonal().abs()
        keep = diag > 1e-6 * float(diag.max()) if diag.numel() else diag.bool()
        self.basis = torch.cat([basis, q[:, keep].T])
