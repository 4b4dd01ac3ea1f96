"""CUBER, reconstructed on top of TRGP (docs/methods/projection.md; no official code is public)."""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from clkit.data import Experience
from clkit.errors import ConfigError
from clkit.optim import probe
from strategies.projection.basis import capture_inputs, project_with_factor, representation, weight_matrix
from strategies.projection.layers import sample_rows
from strategies.projection.trgp import TRGP
from strategies.projection.trust_region import (
    agreement,
    budget_scale,
    energy_profile,
    profile_overlap,
    projection_norms,
    released_basis,
    trust_region,
)

__all__ = ["CUBER"]

log = logging.getLogger(__name__)


class _Release(NamedTuple):
    """A layer's released subspace for the current experience, with its move budget."""

    tasks: list[int]
    basis: Tensor  # U_rel (d, r), on the weight's device and dtype
    radius: float  # the bound on ||(W - W_start) U_rel||_F: the released tasks' smallest remaining allowance
    moved: Tensor  # D = (W - W_start) U_rel (c_out, r), updated every step


class CUBER(TRGP):
    """Reconstruction of CUBER (Lin et al., NeurIPS 2022); not the authors' algorithm.

    Lin, Yang, Fan & Zhang, "Beyond Not-Forgetting: Continual Learning with Backward Knowledge Transfer", NeurIPS
    2022, let a new task modify an old task's model, inside that task's input subspace, when the two are positively
    correlated, so that the old task improves instead of being frozen. Their exact rule is not public; this class is
    clkit's own design, labelled "CUBER (clkit reconstruction)" in every result (docs/methods/projection.md, evidence
    in docs/results/projection.md):

    - **Relatedness, measured on the new task's data** (start of task ``t``, on ``trust_samples`` of its training
      samples, current model in eval mode). Old task ``j`` is *related* to ``t`` when (a) ``j``'s predictor (the
      network with ``j``'s stored scales) already labels ``t``'s samples: ``agreement = (acc - 1/C) / (acc_j - 1/C)
      >= min_agreement``, with ``acc_j`` its training accuracy stored at the end of ``j`` (and, after ``j`` is
      released to a later task, its accuracy on that related task's samples at that task's end), and ``acc`` above
      chance by three standard errors of ``n`` samples (``3 sqrt(p (1 - p) / n)``, ``p = 1/C``: a predictor near
      chance says nothing); and (b) ``t``'s inputs are distributed like ``j``'s: at **every** projected layer,
      ``t``'s representation reproduces ``j``'s energy profile over ``B_j``, ``<e_t, e_j> / <e_j, e_j> >=
      min_overlap`` with ``e_x[i] = ||u_i^T R_x||^2 / ||R_x||_F^2`` over the columns ``u_i`` of ``B_j`` (``e_j``
      stored at the end of ``j``). (a) rules out conflicting labels on shared inputs, (b) tasks whose inputs differ
      (a permutation against a rotation) however the shared upper layers look. The plain energy fraction inside
      ``span(B_j)`` does not separate them: TRGP's per-task bases borrow memory directions of earlier tasks, and on
      MNIST rotated images put 72 % of their energy into a permutation task's basis (profile overlap 0.01, against
      0.9-1.0 between rotations).
    - **Release, per layer.** A related old task whose basis holds more than ``eps_proj`` of the new task's gradient
      (TRGP's trust-region test, not capped at ``top_k``) is released in that layer; the other trust-region tasks are
      scaled as in TRGP; the rest is protected as in GPM. ``U_rel = orth((I - K K^T) M)``, ``K`` spanning the bases of
      every kept task and the bases their stored trust regions reuse, so no kept task's ``W`` or ``W_eff`` moves.
    - **Bounded move, over the whole stream.** Every step applies ``G - (G M) M^T + alpha (G U) U^T``: the GPM step
      plus the gradient's released component, with ``alpha`` in ``[0, 1]`` the largest value keeping the experience's
      move ``||(W - W_start) U_rel||_F`` within the smallest remaining allowance of the released tasks. Each old task
      ``j`` starts, per layer, with an allowance of ``release_budget * ||W_j B_j||_F`` (its weights as it finished,
      inside its subspace), and every release spends from it what the layer moved; since ``||dW B_j|| <= ||dW U||``
      for a move inside ``U``, the weights ``j`` sees move at most that much over all later tasks together. A
      release can therefore never become fine-tuning, not even slowly over a long related stream; once the
      allowance is spent the layer trains as GPM. Use and allowances are in ``extra_results()["release_log"]``.

    What the rule replaced, with the numbers: the first reconstruction compared the new task's gradient with a
    gradient stored at the end of each old task and guarded each step by the sign of their inner product; near a
    minimum that stored gradient is mostly sample noise, unrelated tasks passed by chance and were fine-tuned (bwt
    -0.08 to -0.20 on permuted MNIST, docs/results/projection.md).

    Limitations: relatedness is measured once, at the start of the new task; an old task's bases and TRGP scales
    are not recomputed after a release (its data is gone); a release changes the old task's inputs to deeper layers,
    which those layers' bases do not cover (the budget bounds the change). In task-IL, old heads predict other
    classes than the new task's, so (a) holds only when the tasks share their labels: with disjoint classes nothing
    is released and CUBER trains as TRGP.

    Settings: task-IL and domain-IL, as TRGP (``eval_scales`` as TRGP). Optimizer: plain SGD without momentum or
    weight decay (the budget accounts every step as ``-lr G``).

    Args:
        min_agreement: Threshold (a) on the agreement of an old task's predictor with the new task's labels.
        min_overlap: Threshold (b) on the overlap of the new task's energy profile with the old task's, at every
            projected layer.
        release_budget: Each old task's allowance, per layer and over the whole stream, for moves of the weights it
            sees through releases, relative to ``||W_j B_j||_F`` at its end; ``None``: unbounded (an ablation).
        **kwargs: :class:`strategies.TRGP` arguments.
    """

    LABEL = "CUBER (clkit reconstruction)"
    reference_accuracy: list[float]  # CL memory
    allowance: list[list[float]]
    task_energy: list[list[Tensor]]
    released: list[list[list[int]]]
    release_log: list[dict[str, Any]]
    PROJECTS_UPDATES = False  # the budget follows each step as -lr G: plain SGD only

    def __init__(self, *, min_agreement: float = 0.5, min_overlap: float = 0.5, release_budget: float | None = 0.5,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        optimizer = probe(self.optimizer_factory)
        group = optimizer.param_groups[0]
        if float(group.get("momentum", 0.0)) != 0.0:
            raise ConfigError(f"CUBER needs torch.optim.SGD without momentum (its release budget follows each step "
                              f"as -lr G), got momentum={group['momentum']}")
        if not 0.0 <= min_overlap <= 1.0:
            raise ConfigError(f"min_overlap must be in [0, 1], got {min_overlap}")
        if release_budget is not None and release_budget < 0:
            raise ConfigError(f"release_budget must be >= 0 (or null: unbounded), got {release_budget}")
        self.min_agreement, self.min_overlap, self.release_budget = min_agreement, min_overlap, release_budget
        self.register_memory("reference_accuracy", [])  # [task]: training accuracy of its predictor at its end
        self.register_memory("task_energy", [])  # [task][layer]: its energy profile over its basis, float64 (k,)
        self.register_memory("released", [])  # [task][layer]: old tasks released while training that task
        self.register_memory("release_log", [])  # [task]: relatedness measurements and budget use
        self.register_memory("allowance", [])  # [task][layer]: what releases may still move the weights it sees
        self._release: list[_Release | None] = []
        self._related: list[list[bool]] = []  # [old task][layer]
        self._lr = 0.0

    # -- relatedness ---------------------------------------------------------------------------------------------------
    def relatedness(self, experience: Experience) -> tuple[list[list[bool]], dict[str, Any]]:
        """Per old task and projected layer, whether it is related to ``experience`` (see the class docstring; the
        rule is per task, so every layer gets the same answer), and the measurements."""
        old = len(self.task_scales)
        rows = sample_rows(len(experience.train), self.trust_samples, self.generator("relatedness", experience.index))
        x, y, _ = experience.train[rows]
        x, y = x.to(self.device), y.to(self.device)
        layers = self.projected_layers()
        was_training = self.training
        self.eval()
        with torch.no_grad():
            with capture_inputs([ref.module for ref in layers]) as captured:
                self(x, torch.full_like(y, experience.index))  # the current model: the new task has no scales yet
            reps = [representation(ref.module, inp, len(y)) for ref, inp in zip(layers, captured) if inp is not None]
            accuracy = [float((self(x, torch.full_like(y, j)).argmax(-1) == y).float().mean()) for j in range(old)]
        self.train(was_training)
        agree, overlap, chances = [], [], []
        for j in range(old):
            width = self.classes_per_task[j] if self.multi_head else self.spec.num_classes  # type: ignore[union-attr]
            chance = 1.0 / width
            chances.append(chance)
            agree.append(agreement(accuracy[j], self.reference_accuracy[j], chance))
            overlap.append([profile_overlap(self.task_energy[j][l], energy_profile(self.task_basis(l, j), r))
                            for l, r in enumerate(reps)])
        n = len(y)
        above = [acc - c >= 3.0 * math.sqrt(c * (1.0 - c) / n) for acc, c in zip(accuracy, chances)]
        related = [b and a >= self.min_agreement and min(o) >= self.min_overlap
                   for b, a, o in zip(above, agree, overlap)]
        return [[r] * len(layers) for r in related], {"agreement": [round(a, 4) for a in agree],
                                                       "overlap": [[round(v, 4) for v in o] for o in overlap],
                         "accuracy": [round(a, 4) for a in accuracy], "related": related}

    # -- regimes -------------------------------------------------------------------------------------------------------
    def select_regimes(self, grads: list[Tensor | None]) -> list[list[int]]:
        """Per layer: released tasks (prepared here) and TRGP's trust region among the rest (returned)."""
        layers = self.projected_layers()
        self._release = [None] * len(layers)
        out: list[list[int]] = []
        for l, (ref, g) in enumerate(zip(layers, grads)):
            if g is None:
                out.append([])
                continue
            old = range(len(self.task_bases))
            bases = [self.task_basis(l, j) for j in old]
            norms, g_norm = projection_norms(g, bases), float(g.norm())
            released = [j for j in old if self._related[j][l] and g_norm > 0 and
                        float(norms[j]) / g_norm > self.eps_proj]
            if released:
                kept = [j for j in old if j not in released]
                reused = [s for j in kept for s in self.task_selection[j][l]]
                u_rel = released_basis(self.bases[l], [bases[j] for j in kept] + [bases[s] for s in reused])
                if u_rel.shape[1] == 0:
                    released = []
                else:
                    w = ref.weight.detach()
                    radius = min(self.allowance[j][l] for j in released)
                    moved = w.new_zeros(w.shape[0], u_rel.shape[1])  # (c_out, r)
                    self._release[l] = _Release(released, u_rel.to(w), radius, moved)
            others = [j for j in old if j not in released]
            trust = trust_region(norms[others], g_norm, self.eps_proj, self.top_k) if others else []
            scaled = [others[i] for i in trust]
            log.info("%s layer %s: released %s, trust region %s", type(self).__name__, ref.name, released, scaled)
            out.append(scaled if self.scalable(ref) else [])
        return out

    def on_experience_start(self, experience: Experience) -> None:
        self._release = [None] * len(self.projected_layers())
        measured: dict[str, Any] = {}
        self._related = []
        if experience.index > 0 and self.task_scales:
            self._related, measured = self.relatedness(experience)
        super().on_experience_start(experience)
        self._install_input_side()  # again: released layers project their gradients themselves
        self.released = self.released[: experience.index]
        self.released.append([[] if r is None else list(r.tasks) for r in self._release])
        self.release_log = self.release_log[: experience.index]
        self.release_log.append({**measured, "allowance": [None if r is None or r.radius == float("inf") else
                                                           round(r.radius, 6) for r in self._release]})

    def input_side_allowed(self, layer: int) -> bool:
        return layer >= len(self._release) or self._release[layer] is None

    # -- per-step update -----------------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        self._lr = float(optimizer.param_groups[0]["lr"])
        super().on_before_optimizer_step(optimizer)

    def transform_gradients(self) -> None:
        if not any(r is not None for r in self._release):
            super().transform_gradients()
            return
        for l, (ref, (factor, complement)) in enumerate(zip(self.projected_layers(), self._projectors)):
            grad, release = ref.weight.grad, self._release[l] if l < len(self._release) else None
            hook = self.input_side_hook(l)
            if release is None and hook is not None and not hook.pending:
                continue
            if hook is not None:
                hook.pending = False
            if grad is None:
                continue
            if release is None:
                if complement or factor.shape[1] > 0:
                    grad.copy_(project_with_factor(grad, factor, complement))
                continue
            g = weight_matrix(grad)
            coeffs = g @ release.basis  # (c_out, d)(d, r) -> (c_out, r)
            alpha = budget_scale(release.moved, -self._lr * coeffs, release.radius)
            new = project_with_factor(g, factor, complement)
            if alpha > 0.0:
                new = new + (alpha * coeffs) @ release.basis.T  # (c_out, r)(r, d) -> (c_out, d)
                release.moved.sub_(alpha * self._lr * coeffs)
            grad.copy_(new.view_as(grad))
        self._zero_frozen_grads()

    # -- end of a task -------------------------------------------------------------------------------------------------
    def update_memory(self, experience: Experience, rows: Tensor, reps: list[Tensor]) -> None:
        """TRGP's update, then the task's energy profiles over its bases and its predictor's accuracy on the
        representation samples (``acc_j``)."""
        super().update_memory(experience, rows, reps)
        task = experience.index
        self.task_energy = [*self.task_energy, [energy_profile(self.task_basis(l, task), r.to(self.bases[l].device))
                                                for l, r in enumerate(reps)]]
        if self.release_log:
            self.release_log[-1]["budget_used"] = [None if r is None else _fraction(float(r.moved.norm()), r.radius)
                                                   for r in self._release]
        for l, r in enumerate(self._release):
            if r is not None:
                moved = float(r.moved.norm())
                for j in r.tasks:
                    self.allowance[j][l] = max(self.allowance[j][l] - moved, 0.0)
        self.allowance = [*self.allowance, [
            float("inf") if self.release_budget is None else
            self.release_budget * float((weight_matrix(ref.weight.detach()).double() @ self.task_basis(l, task)).norm())
            for l, ref in enumerate(self.projected_layers())]]
        released = sorted({j for r in self._release if r is not None for j in r.tasks})
        self._release = []
        x, y, _ = experience.train[rows]
        x, y = x.to(self.device), y.to(self.device)
        was_training = self.training
        self.eval()
        with torch.no_grad():  # released old tasks changed: their accuracy on this related task's data stands in
            accuracy = {j: float((self(x, torch.full_like(y, j)).argmax(-1) == y).float().mean())
                        for j in [*released, experience.index]}
        self.train(was_training)
        refs = [accuracy.get(j, a) for j, a in enumerate(self.reference_accuracy)]
        self.reference_accuracy = [*refs, accuracy[experience.index]]

    # -- results -------------------------------------------------------------------------------------------------------
    def extra_results(self, accuracy_matrix: Tensor) -> dict[str, Any]:
        return {**super().extra_results(accuracy_matrix), "released": self.released, "release_log": self.release_log,
                "label": "CUBER (clkit reconstruction)"}


def _fraction(moved: float, radius: float) -> float | None:
    """``moved / radius`` rounded (``None`` for an unbounded release, 1 for a zero budget)."""
    if radius == float("inf"):
        return None
    return 1.0 if radius == 0 else round(moved / radius, 4)
