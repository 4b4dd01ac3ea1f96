"""CUBER, reconstructed on top of TRGP (docs/methods/projection.md; no official code is public)."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from torch import Tensor

from clkit.data import Experience
from clkit.errors import ConfigError
from strategies.projection.basis import project_with_factor
from strategies.projection.trgp import TRGP
from strategies.projection.trust_region import (
    classify_regimes,
    cosine,
    guarded_gradient,
    projection_norms,
    released_basis,
)

__all__ = ["CUBER"]

log = logging.getLogger(__name__)


class _Release(NamedTuple):
    """A layer's released subspace for the current experience."""

    tasks: list[int]
    memory: Tensor  # M (d, m), on the weight's device and dtype
    basis: Tensor  # U_rel (d, r), likewise
    grads: list[Tensor]  # stored G_j of the released tasks


class CUBER(TRGP):
    """Reconstruction of CUBER (Lin et al., NeurIPS 2022); not the authors' algorithm.

    Lin, Yang, Fan & Zhang, "Beyond Not-Forgetting: Continual Learning with Backward Knowledge Transfer", NeurIPS
    2022, characterise per layer the correlation between a new task and each old task and, when the new task's
    gradient lies largely in an old task's input subspace *and* correlates positively with that task's gradient,
    let the new task modify the old task's model. The exact rule is not public; this class is clkit's own design
 labelled "CUBER (clkit reconstruction)" in every result (docs/methods/projection.md):

    - At the end of each task ``j`` the weight gradient ``G_j^l`` of its loss is stored (eval mode, its scales
      active, the representation samples).
    - At the start of task ``t`` each layer classifies every old task: (i) outside the trust region: GPM; (ii) in it
      with ``cos(g, G_j) <= eps_corr``: TRGP scaling; (iii) in it with ``cos(g, G_j) > eps_corr``: released.
    - For a layer with released tasks, ``U_rel = orth((I - K K^T) M)`` where ``K`` spans the bases of every kept
      task *and* the bases those kept tasks' stored trust regions reuse (so no kept task's ``W_eff`` moves; the
      latter is a clkit addition). If ``U_rel`` is empty the tasks fall back to regime (ii).
    - Every step: ``G <- g_gpm + g_rel`` when ``<g_rel, G_j> >= 0`` for every released ``j`` (the guard), else
      ``g_gpm``. The fraction of kept steps per layer is reported in ``extra_results()["guard_keep_fraction"]``.

    Limitations: ``G_j`` is evaluated at the end of task ``j``, so the guard is a first-order check at a stale point;
    bases, ``G_j`` and TRGP ``Q``'s of old tasks are not recomputed after a release (old data is unavailable);
    releasing a layer changes task ``j``'s inputs to deeper layers, which the deeper layers' bases do not cover.

    Settings: task-IL and domain-IL, as TRGP.

    Args:
        eps_corr: Correlation threshold ``eps_2`` (strict ``>``); tune in {0.0, 0.05, 0.1, 0.2} on validation. At
            the default 0.0 unrelated tasks pass by chance: on permuted MNIST (docs/real_data.md) 24 releases and bwt
            -0.16, against -0.003 at 0.05 (``configs/cuber_pmnist.yaml``).
        guard: Apply the per-step sign check (disabling it is an ablation).
        **kwargs: :class:`strategies.TRGP` arguments.
    """

    LABEL = "CUBER (clkit reconstruction)"
    task_grads: list[list[Tensor]]  # CL memory
    released: list[list[list[int]]]
    guard_counts: list[list[list[int]]]
    PROJECTS_UPDATES = False  # the guard is a sign test on the gradient step: plain SGD only

    def __init__(self, *, eps_corr: float = 0.0, guard: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not -1.0 <= eps_corr < 1.0:
            raise ConfigError(f"eps_corr must be in [-1, 1), got {eps_corr}")
        self.eps_corr, self.guard = eps_corr, guard
        self.register_memory("task_grads", [])  # [task][layer]: G_j^l, float32, weight-shaped
        self.register_memory("released", [])  # [task][layer]: tasks released while training that task
        self.register_memory("guard_counts", [])  # [task][layer]: [steps kept, steps with a release]
        self._release: list[_Release | None] = []

    # -- regimes -------------------------------------------------------------------------------------------------------
    def select_regimes(self, grads: list[Tensor | None]) -> list[list[int]]:
        """Regimes (i)-(iii) per layer; returns the regime-(ii) tasks and prepares the releases."""
        layers = self.projected_layers()
        self._release = [None] * len(layers)
        out: list[list[int]] = []
        for l, (ref, g) in enumerate(zip(layers, grads)):
            if g is None:
                out.append([])
                continue
            old = range(len(self.task_bases))
            bases = [self.task_basis(l, j) for j in old]
            corrs = [cosine(g, self.task_grads[j][l].to(g.device)) for j in old]
            scaled, released = classify_regimes(projection_norms(g, bases), float(g.norm()), corrs,
                                                eps_proj=self.eps_proj, eps_corr=self.eps_corr, top_k=self.top_k)
            if released:
                kept = [j for j in old if j not in released]
                reused = [s for j in kept for s in self.task_selection[j][l]]
                u_rel = released_basis(self.bases[l], [bases[j] for j in kept] + [bases[s] for s in reused])
                if u_rel.shape[1] == 0:
                    scaled, released = scaled + released, []
                else:
                    w = ref.weight
                    self._release[l] = _Release(released, self.bases[l].to(w), u_rel.to(w),
                                                [self.task_grads[j][l].to(w) for j in released])
            log.info("%s layer %s: regime (ii) %s, regime (iii) %s, correlations %s", type(self).__name__, ref.name,
                     scaled, released, [round(c, 3) for c in corrs])
            out.append(scaled if self.scalable(ref) else [])
        return out

    def on_experience_start(self, experience: Experience) -> None:
        self._release = [None] * len(self.projected_layers())
        super().on_experience_start(experience)
        self.released = self.released[: experience.index]
        self.released.append([[] if r is None else list(r.tasks) for r in self._release])
        self.guard_counts = self.guard_counts[: experience.index]
        self.guard_counts.append([[0, 0] for _ in self._release])

    # -- per-step update -----------------------------------------------------------------------------------------------
    def transform_gradients(self) -> None:
        counts = self.guard_counts[-1] if self.guard_counts else []
        for l, (ref, (factor, complement)) in enumerate(zip(self.projected_layers(), self._projectors)):
            grad, release = ref.weight.grad, self._release[l] if l < len(self._release) else None
            if grad is None:
                continue
            if release is None:
                if complement or factor.shape[1] > 0:
                    grad.copy_(project_with_factor(grad, factor, complement))
                continue
            new, kept = guarded_gradient(grad, release.memory, release.basis, release.grads, guard=self.guard)
            grad.copy_(new)
            counts[l][0] += int(kept)
            counts[l][1] += 1
        self._zero_frozen_grads()

    # -- end of a task -------------------------------------------------------------------------------------------------
    def update_memory(self, experience: Experience, rows: Tensor, reps: list[Tensor]) -> None:
        """TRGP's update, then the stored gradient ``G_j`` of the finished task."""
        super().update_memory(experience, rows, reps)
        self._release = []
        weights = [ref.weight for ref in self.projected_layers()]
        grads = self.weight_gradients(*experience.train[rows])
        self.task_grads.append([torch.zeros_like(w) if g is None else g.detach().float().clone()
                                for w, g in zip(weights, grads)])

    # -- results -------------------------------------------------------------------------------------------------------
    def extra_results(self, accuracy_matrix: Tensor) -> dict[str, Any]:
        fractions = [[None if total == 0 else kept / total for kept, total in task] for task in self.guard_counts]
        return {**super().extra_results(accuracy_matrix), "released": self.released, "guard_keep_fraction": fractions,
                "label": "CUBER (clkit reconstruction)"}
