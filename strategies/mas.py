"""Memory Aware Synapses (Aljundi et al., "Memory Aware Synapses: Learning what (not) to forget", ECCV 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from clkit.data import Experience, make_loader
from clkit.errors import ConfigError
from clkit.module import ContinualModule

__all__ = ["MAS", "output_sensitivity"]


def output_sensitivity(module: ContinualModule, experience: Experience, max_samples: int,
                       batch_size: int = 64) -> dict[str, Tensor]:
    """The paper's Eq. 4: the mean over samples of ``|∂ ‖F(x)‖² / ∂θ|``, with ``F`` the network's output (the
    experience's own head in task-IL), per-sample gradients by ``torch.func.vmap``, in eval mode."""
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    buffers = dict(module.named_buffers())

    task = torch.tensor([experience.task_id], device=module.device)  # one task per experience (not vmapped)

    def sq_norm(p: Mapping[str, Tensor], x: Tensor) -> Tensor:
        out = functional_call(module, (dict(p), buffers), (x.unsqueeze(0), task))
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out)).pow(2).sum()  # (task-IL padding)

    per_sample = vmap(grad(sq_norm), in_dims=(None, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    data = experience.train
    n_used = min(max_samples, len(data))
    was_training = module.training
    module.eval()
    for x, _, _ in make_loader(data.subset(torch.arange(n_used)), batch_size, shuffle=False):
        for n, g in per_sample(params, x.to(module.device)).items():
            total[n] += g.abs().sum(0)
    module.train(was_training)
    return {n: v / n_used for n, v in total.items()}


class MAS(ContinualModule):
    """MAS: after each experience, the importance of every parameter is the sensitivity of the squared L2 norm of
    the network's output to it, averaged over the experience's training samples (no labels needed); importances
    accumulate over experiences and later experiences add ``lambda_reg · Σ Ω (θ − θ*)²`` towards the weights after
    the previous experience (the paper's Eqs. 3-4). Avalanche (after FACIL) instead takes the absolute value of
    each batch's mean gradient and averages old and new importances with ``alpha``. Supports task-IL, domain-IL and
    class-IL.

    Args:
        lambda_reg: Penalty strength (the paper: 1).
        importance_samples: Training samples used for the importance.
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    omega: dict[str, Tensor]  # CL memory: accumulated importance Ω
    anchor: dict[str, Tensor]  # CL memory: θ*, the weights after the previous experience

    def __init__(self, *, lambda_reg: float = 1.0, importance_samples: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if lambda_reg < 0 or importance_samples < 1:
            raise ConfigError(f"lambda_reg must be >= 0 and importance_samples >= 1, got {lambda_reg}, "
                              f"{importance_samples}")
        self.lambda_reg, self.importance_samples = float(lambda_reg), int(importance_samples)
        self.register_memory("omega", {})
        self.register_memory("anchor", {})

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        loss = F.cross_entropy(self(x, t), y)
        if self.omega and self.lambda_reg > 0:
            params = dict(self.named_parameters())
            penalty = torch.stack([(w * (params[n] - self.anchor[n]).pow(2)).sum() for n, w in self.omega.items()])
            loss = loss + self.lambda_reg * penalty.sum()
            self.log_epoch_mean("train/mas_penalty", penalty.sum(), len(y), prog_bar=False)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def on_experience_end(self, experience: Experience) -> None:
        new = output_sensitivity(self, experience, self.importance_samples)
        self.omega = {n: self.omega[n] + w if n in self.omega else w for n, w in new.items()}
        self.anchor = {n: p.detach().clone() for n, p in self.named_parameters() if n in new}
