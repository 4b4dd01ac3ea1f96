"""IBCL's knowledge base (a finitely generated credal set), preferences and convex-combination weights.

The knowledge base (KB) holds the extreme points of the credal set: diagonal Gaussians stored as flat ``(P,)``
mean and standard-deviation vectors, plus ``slots[i][j]``, the KB index that stands for chain ``j`` of task ``i``
(the chain's own posterior, or the stored point it was pruned onto). Pure functions and one small container;
nothing here touches Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from strategies.ibcl.bayes import official_distance, w2_diag_gaussians

__all__ = ["KnowledgeBase", "combination_weights", "preferences", "stage_seed"]

Distance = Literal["w2", "official"]
PreferenceKind = Literal["dirichlet", "normalized_uniform"]


@dataclass
class KnowledgeBase:
    """Extreme points of the credal set and the per-(task, chain) slots that point into them.

    Attributes:
        mus: Stored means, each (P,).
        sigmas: Stored standard deviations, each (P,).
        origins: ``(task, chain)`` whose posterior each stored point is.
        slots: ``slots[i][j]`` = index in the KB standing for chain ``j`` of task ``i``.
        nn_distances: Per task and chain, the distance to the nearest point already stored when the chain was
            processed (``nan`` when the KB was empty); kept so that thresholds ``d`` can be placed sensibly.
    """

    mus: list[Tensor] = field(default_factory=list)
    sigmas: list[Tensor] = field(default_factory=list)
    origins: list[tuple[int, int]] = field(default_factory=list)
    slots: list[list[int]] = field(default_factory=list)
    nn_distances: list[list[float]] = field(default_factory=list)
    _stack: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.mus)

    @property
    def num_tasks(self) -> int:
        """Number of tasks whose posteriors have been processed."""
        return len(self.slots)

    def stacked(self) -> tuple[Tensor, Tensor]:
        """All stored points as ``(E, P)`` means and ``(E, P)`` standard deviations."""
        if not self.mus:
            raise ValueError("the knowledge base is empty")
        if self._stack is None or self._stack[0].shape[0] != len(self.mus):  # cached: generation stays cheap
            self._stack = (torch.stack(self.mus), torch.stack(self.sigmas))
        return self._stack

    def update(self, mu: Tensor, sigma: Tensor, *, d: float = 0.0,
               distance: Distance = "w2") -> tuple[Tensor, Tensor]:
        """Add task ``num_tasks``'s ``m`` posteriors with pruning and return the next priors.

        Chains are processed in order. A chain's posterior is discarded when the nearest stored point (including
        points stored earlier in this task) is within ``d``; that point then fills the chain's slot and becomes
        the chain's prior for the next task. ``d = 0`` stores every posterior unless two are exactly equal.

        Args:
            mu: Posterior means of the ``m`` chains, (m, P).
            sigma: Posterior standard deviations, (m, P).
            d: Pruning threshold (``>= 0``).
            distance: ``"w2"`` (2-Wasserstein) or ``"official"`` (the official code's distance, faithful mode).

        Returns:
            The next priors' means and standard deviations, (m, P) each.
        """
        if d < 0:
            raise ValueError(f"pruning threshold d must be >= 0, got {d}")
        if distance not in ("w2", "official"):
            raise ValueError(f"distance={distance!r} is not one of ['w2', 'official']")
        dist_fn = w2_diag_gaussians if distance == "w2" else official_distance
        task = self.num_tasks
        slots: list[int] = []
        nearest: list[float] = []
        for j in range(mu.shape[0]):
            mu_j, sigma_j = mu[j].detach().clone(), sigma[j].detach().clone()
            if self.mus:
                mus, sigmas = self.stacked()
                dists = dist_fn(mu_j, sigma_j, mus, sigmas)  # (P,) vs (E, P) -> (E,)
                best = int(dists.argmin())
                nearest.append(float(dists[best]))
                if nearest[-1] <= d:
                    slots.append(best)
                    continue
            else:
                nearest.append(float("nan"))
            self.mus.append(mu_j)
            self.sigmas.append(sigma_j)
            self.origins.append((task, j))
            slots.append(len(self.mus) - 1)
        self.slots.append(slots)
        self.nn_distances.append(nearest)
        return torch.stack([self.mus[s] for s in slots]), torch.stack([self.sigmas[s] for s in slots])

    def nbytes(self) -> int:
        """Bytes of the stored tensors (the slots and origins are a few integers per task)."""
        return sum(t.numel() * t.element_size() for t in (*self.mus, *self.sigmas))

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable (ragged) state."""
        return {"mus": [t.cpu() for t in self.mus], "sigmas": [t.cpu() for t in self.sigmas],
                "origins": [list(o) for o in self.origins], "slots": [list(s) for s in self.slots],
                "nn_distances": [list(n) for n in self.nn_distances]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> KnowledgeBase:
        """Inverse of :meth:`state_dict`."""
        return cls(mus=list(state["mus"]), sigmas=list(state["sigmas"]),
                   origins=[(int(a), int(b)) for a, b in state["origins"]],
                   slots=[[int(s) for s in row] for row in state["slots"]],
                   nn_distances=[[float(v) for v in row] for row in state["nn_distances"]])


def stage_seed(seed: int, stage: int) -> int:
    """Seed of the preference generator for ``(seed, stage)``; the same for every method."""
    return (int(seed) * 1_000_003 + int(stage) * 7_919 + 12_345) % (2**63 - 1)


def preferences(stage: int, num: int = 10, *, seed: int = 0, kind: PreferenceKind = "dirichlet") -> Tensor:
    """Preferences over tasks ``0..stage``: ``num`` rows on the simplex, a pure function of its arguments.

    ``"dirichlet"`` (clean) draws Dirichlet(1), i.e. uniform on the simplex, as normalised Exp(1) variables.
    ``"normalized_uniform"`` is the official ``rand(i+1) / sum`` (not uniform on the simplex; seeded here too).
    Stage 0 has the single preference ``[1]``.

    Returns:
        (num, stage + 1) float64 rows, non-negative, each summing to 1 ((1, 1) at stage 0).
    """
    if stage < 0 or num < 1:
        raise ValueError(f"need stage >= 0 and num >= 1, got stage={stage}, num={num}")
    if kind not in ("dirichlet", "normalized_uniform"):
        raise ValueError(f"kind={kind!r} is not one of ['dirichlet', 'normalized_uniform']")
    if stage == 0:
        return torch.ones(1, 1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(stage_seed(seed, stage))
    u = torch.rand(num, stage + 1, generator=gen, dtype=torch.float64)
    draws = -torch.log1p(-u) if kind == "dirichlet" else u  # Exp(1) via inverse CDF, or U(0, 1)
    return draws / draws.sum(-1, keepdim=True)


def _check_preference(preference: Tensor, num_tasks: int) -> None:
    if preference.dim() != 1 or not 1 <= preference.numel() <= num_tasks:
        raise ValueError(f"preference must be a vector over 1..{num_tasks} tasks, got shape {tuple(preference.shape)}")
    if (preference < 0).any() or abs(float(preference.sum()) - 1.0) > 1e-6:
        raise ValueError(f"preference must be non-negative and sum to 1, got {preference.tolist()}")


def combination_weights(preference: Tensor | Sequence[float], slots: Sequence[Sequence[int]],
                        num_points: int) -> Tensor:
    """Convex weights ``beta`` over the KB points for a preference.

    ``beta_{k,j} = w_k / m`` is attached to ``KB[slots[k][j]]``; a substitute accumulates the weights of every
    slot mapped to it, so ``beta`` is non-negative and sums to 1.

    Args:
        preference: ``w`` over tasks ``0..i``, (i+1,), non-negative, summing to 1.
        slots: The KB's slots (at least ``i + 1`` tasks).
        num_points: Number of KB points ``E``.

    Returns:
        (E,) float64 weights.
    """
    w = torch.as_tensor(preference, dtype=torch.float64)
    _check_preference(w, len(slots))
    beta = torch.zeros(num_points, dtype=torch.float64)
    for k, w_k in enumerate(w.tolist()):
        for slot in slots[k]:
            if not 0 <= slot < num_points:
                raise ValueError(f"slot {slot} of task {k} is outside the knowledge base of size {num_points}")
            beta[slot] += w_k / len(slots[k])
    return beta
