"""Candidate relatedness signals for CUBER, measured against the shipped rule (``projection_bwt.py --variant``).

Each candidate keeps the shipped CUBER's release and bounded move and replaces only *which* old tasks a layer
releases: per layer, old task ``j`` is released when ``cos(g_t, S_j) > eps_corr`` (``g_t`` the new task's gradient at
its start, on the trust samples) and ``j`` holds more than ``eps_proj`` of ``g_t`` (TRGP's trust-region test), with
``S_j`` a signal stored at the end of task ``j``:

- ``end_gradient``: the weight gradient of ``j``'s loss at the end of ``j`` (the first reconstruction's signal);
- ``displacement``: ``-(W_end - W_start)`` of ``j``, the direction task ``j`` moved the weights in (a gradient
  averaged over its whole training).

Not shipped: they exist to be measured (docs/results/projection.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clkit.data import Experience
from strategies.projection.cuber import CUBER
from strategies.projection.trust_region import cosine

__all__ = ["DisplacementCUBER", "EndGradientCUBER"]


class EndGradientCUBER(CUBER):
    """CUBER releasing by ``cos(g_t, G_j) > eps_corr`` with ``G_j`` the gradient stored at the end of task ``j``."""

    task_signals: list[list[Tensor]]

    def __init__(self, *, eps_corr: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps_corr = eps_corr
        self.register_memory("task_signals", [])  # [task][layer]: weight-shaped

    def relatedness(self, experience: Experience) -> tuple[list[list[bool]], dict[str, Any]]:
        return [], {}  # decided per layer from the new task's gradients, in select_regimes

    def select_regimes(self, grads: list[Tensor | None]) -> list[list[int]]:
        corrs = [[0.0 if g is None else cosine(g, sig[l].to(g)) for l, g in enumerate(grads)]
                 for sig in self.task_signals]
        self._related = [[c > self.eps_corr for c in row] for row in corrs]
        self._measured = {"cosine": [[round(c, 4) for c in row] for row in corrs]}
        return super().select_regimes(grads)

    def on_experience_start(self, experience: Experience) -> None:
        self._measured: dict[str, Any] = {}
        super().on_experience_start(experience)
        self.release_log[-1] = dict(self._measured)

    def signal(self, experience: Experience, rows: Tensor) -> list[Tensor]:
        weights = [ref.weight for ref in self.projected_layers()]
        grads = self.weight_gradients(*experience.train[rows])
        return [torch.zeros_like(w) if g is None else g.detach().float().clone() for w, g in zip(weights, grads)]

    def update_memory(self, experience: Experience, rows: Tensor, reps: list[Tensor]) -> None:
        super().update_memory(experience, rows, reps)
        self.task_signals = [*self.task_signals, self.signal(experience, rows)]


class DisplacementCUBER(EndGradientCUBER):
    """CUBER releasing by ``cos(g_t, -(W_end - W_start)_j) > eps_corr``: the old task's whole-training move."""

    def on_experience_start(self, experience: Experience) -> None:
        super().on_experience_start(experience)
        self._start = [ref.weight.detach().clone() for ref in self.projected_layers()]

    def signal(self, experience: Experience, rows: Tensor) -> list[Tensor]:
        return [(w0 - ref.weight.detach()).float() for w0, ref in zip(self._start, self.projected_layers())]
