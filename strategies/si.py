"""Synaptic Intelligence (Zenke, Poole & Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clkit.data import Experience
from clkit.errors import ConfigError
from clkit.module import ContinualModule

__all__ = ["SI"]


class SI(ContinualModule):
    """SI: a quadratic penalty ``c · Σ Ω (θ − θ̃)²`` towards the weights θ̃ after the previous experience, with the
    importance Ω accumulated over experiences from each experience's path integral (the paper's Eqs. 4-5):
    ``ω = −Σ_steps g · Δθ`` (g the gradient of the experience's own loss, Δθ the step's update), and after the
    experience ``Ω += ω / (Δ² + ξ)`` with Δ the experience's total change. Nothing is clipped (Avalanche clips Ω at
    0.001). Supports task-IL (the paper's split MNIST), domain-IL (permuted MNIST) and class-IL (as van de Ven et
    al.'s "three types of incremental learning").

    Args:
        c: Penalty strength (the paper: 0.1 on permuted MNIST, 1 on split MNIST).
        xi: Damping ξ (the paper: 0.1 and 1e-3).
        **kwargs: :class:`clkit.ContinualModule` arguments (``backbone``, ``optimizer``, ``lr_scheduler``, ``seed``).
    """

    omega: dict[str, Tensor]  # CL memory: accumulated importance Ω
    anchor: dict[str, Tensor]  # CL memory: θ̃, the weights after the previous experience

    def __init__(self, *, c: float = 0.1, xi: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if c < 0 or xi <= 0:
            raise ConfigError(f"c must be >= 0 and xi > 0, got c={c}, xi={xi}")
        self.c, self.xi = float(c), float(xi)
        self.register_memory("omega", {})
        self.register_memory("anchor", {})
        self._path: dict[str, Tensor] = {}
        self._start: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}
        self._grad: dict[str, Tensor] = {}

    def _params(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def on_experience_start(self, experience: Experience) -> None:
        self._start = {n: p.detach().clone() for n, p in self._params().items()}
        self._path = {n: torch.zeros_like(p) for n, p in self._start.items()}

    def penalty(self) -> Tensor:
        params = self._params()
        return torch.stack([(self.omega[n] * (params[n] - self.anchor[n]).pow(2)).sum() for n in self.omega]).sum()

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y, t = batch
        loss = F.cross_entropy(self(x, t), y)
        if self.omega and self.c > 0:
            penalty = self.penalty()
            self.log_epoch_mean("train/si_penalty", penalty, len(y), prog_bar=False)
            loss = loss + self.c * penalty
        self.log_epoch_mean("train/loss", loss, len(y))
        return loss

    def transform_gradients(self) -> None:
        # the experience's own loss gradient: the penalty's, 2 c Ω (θ − θ̃), taken out of the total
        self._grad, self._before = {}, {}
        for n, p in self._params().items():
            if p.grad is None:
                continue
            g = p.grad.detach().clone()
            if n in self.omega and self.c > 0:
                g -= 2 * self.c * self.omega[n] * (p.detach() - self.anchor[n])
            self._grad[n], self._before[n] = g, p.detach().clone()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        params = self._params()
        for n, g in self._grad.items():
            self._path[n] -= g * (params[n].detach() - self._before[n])
        self._grad, self._before = {}, {}

    def on_experience_end(self, experience: Experience) -> None:
        params = self._params()
        omega = dict(self.omega)
        for n, w in self._path.items():
            delta = params[n].detach() - self._start[n]
            omega[n] = omega.get(n, torch.zeros_like(w)) + w / (delta.pow(2) + self.xi)
        self.omega = omega
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
