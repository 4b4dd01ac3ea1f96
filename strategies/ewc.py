"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) with a diagonal Fisher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from clkit.data import Experience, make_loader
from clkit.errors import ConfigError
from clkit.module import ContinualModule

__all__ = ["EWC", "diagonal_fisher", "ewc_penalty"]

Params = Mapping[str, Tensor]


def ewc_penalty(params: Params, fisher: Params, anchor: Params) -> Tensor:
    r"""Quadratic penalty :math:`\frac12 \sum_p F_p (\theta_p - \theta^*_p)^2` over the parameters in ``fisher``."""
    terms = [(fisher[n] * (params[n] - anchor[n]).pow(2)).sum() for n in fisher]
    return 0.5 * torch.stack(terms).sum()


def diagonal_fisher(module: ContinualModule, experience: Experience, max_samples: int, batch_size: int = 64) -> Params:
    """Empirical diagonal Fisher: the mean over samples of squared per-sample log-likelihood gradients.

    Per-sample gradients are computed with ``torch.func.vmap`` (no Python loop over samples), in eval mode,
    on the first ``max_samples`` training samples of ``experience``, with the experience's own head.
    """
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    buffers = dict(module.named_buffers())
    task = torch.tensor([experience.task_id], device=module.device)

    def loss_one(p: Params, x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(module, (dict(p), buffers), (x.unsqueeze(0), task))  # (1, C)
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_sample_grads = vmap(grad(loss_one), in_dims=(None, 0, 0))
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    data = experience.train
    n_used = min(max_samples, len(data))
    was_training = module.training
    module.eval()
    for x, y, _ in make_loader(data.subset(torch.arange(n_used)), batch_size, shuffle=False):
        grads = per_sample_grads(params, x.to(module.device), y.to(module.device))
        for n, g in grads.items():
            fisher[n] += g.pow(2).sum(dim=0)
    module.train(was_training)
    return {n: f / n_used for n, f in fisher.items()}


class EWC(ContinualModule):
    """Elastic Weight Consolidation (Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks",
    PNAS 2017).

    After each experience the diagonal Fisher information and the weights are stored; later experiences add
    ``ewc_lambda / 2 · Σ F (θ − θ*)²`` to the loss. ``mode="separate"`` keeps one penalty per past experience (the
    paper); ``mode="online"`` keeps one running Fisher, ``F ← decay · F + F_new`` (Schwarz et al., 2018).
    Supports task-IL, domain-IL and class-IL.

    Args:
        ewc_lambda: Penalty strength.
        mode: ``"separate"`` or ``"online"``.
        decay: Fisher decay of the online mode.
        fisher_samples: Training samples used to estimate the Fisher.
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    fishers: list[Params]  # CL memory
    anchors: list[Params]

    def __init__(self, *, ewc_lambda: float = 100.0, mode: Literal["separate", "online"] = "separate",
                 decay: float = 1.0, fisher_samples: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if ewc_lambda < 0:
            raise ConfigError(f"ewc_lambda must be >= 0, got {ewc_lambda}")
        if mode not in ("separate", "online"):
            raise ConfigError(f"mode={mode!r} is not one of 'separate', 'online'")
        if fisher_samples < 1:
            raise ConfigError(f"fisher_samples must be >= 1, got {fisher_samples}")
        self.ewc_lambda, self.mode, self.decay, self.fisher_samples = ewc_lambda, mode, decay, fisher_samples
        self.register_memory("fishers", [])  # per penalty: {parameter name: F}
        self.register_memory("anchors", [])  # per penalty: {parameter name: theta*}

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        ce = F.cross_entropy(self(x, t), y)
        loss = ce
        if self.fishers and self.ewc_lambda > 0:
            params = dict(self.named_parameters())
            penalty = torch.stack([ewc_penalty(params, f, a) for f, a in zip(self.fishers, self.anchors)]).sum()
            loss = ce + self.ewc_lambda * penalty
            self.log_epoch_mean("train/ewc_penalty", penalty, len(y), prog_bar=False)
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def on_experience_end(self, experience: Experience) -> None:
        fisher = diagonal_fisher(self, experience, self.fisher_samples)
        anchor = {n: p.detach().clone() for n, p in self.named_parameters() if n in fisher}
        if self.mode == "online" and self.fishers:
            fisher = {n: self.decay * self.fishers[0][n] + f for n, f in fisher.items()}
            self.fishers, self.anchors = [], []
        self.fishers = [*self.fishers, fisher]
        self.anchors = [*self.anchors, anchor]
