"""TRGP and CUBER math: per-task bases, trust regions, scaled weights, relatedness, released subspaces, budgets.

Pure, typed functions on top of :mod:`strategies.projection.basis` (same shape conventions: weights ``(c_out, d)``,
representations ``(d, n)``, orthonormal bases ``(d, k)``). Method notes: docs/methods/projection.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from strategies.projection.basis import (
    ORTH_TOL,
    energy_rank,
    extend_orthonormal,
    svd_energies,
    thin_svd,
    update_basis,
    weight_matrix,
)

__all__ = [
    "TaskBasis",
    "basis_overlap",
    "agreement",
    "budget_scale",
    "cosine",
    "energy_profile",
    "orth",
    "profile_overlap",
    "projection_norms",
    "released_basis",
    "scaled_weight",
    "scaling_delta",
    "select_task_basis",
    "trust_region",
]


# ------------------------------------------------------------------------------------------------ TRGP
class TaskBasis(NamedTuple):
    """Result of :func:`select_task_basis`."""

    basis: Tensor
    """``B_t`` ``(d, k_t)``, orthonormal columns."""
    memory: Tensor
    """The updated memory ``M'`` ``(d, m')``; its first ``m`` columns are the old memory."""
    columns: Tensor | None
    """Long indices with ``B_t = M'[:, columns]``; ``None`` when ``B_t`` is not inside ``M'`` (faithful mode)."""


def select_task_basis(memory: Tensor, rep: Tensor, eps: float, *, faithful: bool = False) -> TaskBasis:
    """TRGP per-task basis selection.

    Pools the energies ``delta_i = ||u_i^T R||^2`` of the memory columns with the squared singular values of the
    residual ``R - M M^T R``, and takes the shortest descending prefix reaching ``eps * ||R||_F^2``. Every chosen
    residual vector enters the memory (re-orthonormalised), so ``span(B_t) <= span(M')``. With ``faithful=True``
    the strongest residual vector is left out of the memory, as the official code does (an official-code pitfall,
    docs/methods/projection.md), and the memory is concatenated without re-orthonormalisation.

    Args:
        memory: Orthonormal ``(d, m)``; ``m = 0`` before the first task.
        rep: Representation ``(d, n)`` of the finished task.
        eps: Energy threshold.
        faithful: Official-code behaviour.

    Returns:
        ``(B_t, M', columns)``: the task basis, the updated memory and, unless faithful, the column indices of
        ``B_t`` in ``M'`` (a basis can be stored as indices because existing columns never change).
    """
    if memory.shape[1] == 0:
        new_memory = update_basis(memory, rep, eps, faithful=faithful)
        columns = None if faithful else torch.arange(new_memory.shape[1])
        return TaskBasis(new_memory.clone(), new_memory, columns)
    d, m = memory.shape
    work, mem = rep.double(), memory.double()
    total = float(work.square().sum())
    coeffs = mem.T @ work  # (m, d) @ (d, n) -> (m, n)
    delta = coeffs.square().sum(dim=1)  # (m,)
    resid = work - mem @ coeffs  # (d, m) @ (m, n) -> (d, n)
    u, sq = svd_energies(resid.float() if faithful else resid)  # (d, k), (k,)
    pool = torch.cat([delta, sq.double()])  # (m + k,)
    order = torch.argsort(pool, descending=True)
    r = min(energy_rank(pool[order], total, eps), d)
    chosen = order[:r]
    mem_idx = chosen[chosen < m].sort().values
    res_idx = chosen[chosen >= m].sort().values - m
    if faithful:
        appended = u[:, res_idx[res_idx > 0]].to(memory.dtype)  # (d, r')
        new_memory = torch.cat([memory, appended], dim=1)[:, :d]  # official: truncated at d columns, as GPM's
        task_basis = torch.cat([memory[:, mem_idx], u[:, res_idx].to(memory.dtype)], dim=1)
        return TaskBasis(task_basis, new_memory, None)
    new_memory = extend_orthonormal(memory, u[:, res_idx])
    columns = torch.cat([mem_idx, torch.arange(m, new_memory.shape[1])])
    return TaskBasis(new_memory[:, columns], new_memory, columns)  # B_t: (d, k_t)


# ------------------------------------------------------------------------------------------------ TRGP
def projection_norms(grad: Tensor, bases: Sequence[Tensor]) -> Tensor:
    """``p_j = ||g B_j B_j^T||_F`` for every old task basis.

    Args:
        grad: Weight gradient, viewed as ``(c_out, d)``.
        bases: Per-task bases ``(d, k_j)``.

    Returns:
        ``(len(bases),)`` float64.
    """
    g = weight_matrix(grad).double()
    norms = []
    for b in bases:
        b = b.double()
        norms.append(torch.linalg.matrix_norm((g @ b) @ b.T))  # (c_out,d)(d,k)(k,d) -> (c_out,d)
    return torch.stack(norms) if norms else torch.zeros(0, dtype=torch.float64)


def trust_region(norms: Tensor, grad_norm: float, eps_proj: float, top_k: int = 2) -> list[int]:
    """Old tasks in the trust region: top-``min(top_k, T)`` by projection norm with ``p_j / ||g|| > eps_proj``.

    Returns:
        Task indices, sorted by descending projection norm.
    """
    if grad_norm <= 0 or norms.numel() == 0:
        return []
    k = min(top_k, norms.numel())
    top = torch.argsort(norms, descending=True)[:k]
    return [int(j) for j in top if float(norms[j]) / grad_norm > eps_proj]


# ------------------------------------------------------------------------------------------------ TRGP
def scaled_weight(weight: Tensor, bases: Sequence[Tensor], scales: Sequence[Tensor],
                  products: Sequence[Tensor] | None = None) -> Tensor:
    """``W_eff = W + sum_s W B_s (Q_s - I) B_s^T`` reshaped like ``weight``.

    Differentiable in ``weight`` and in every ``Q_s``; equals ``weight`` when every ``Q_s = I``. While ``W`` is
    trained with gradients projected out of ``span(M) >= span(B_s)``, ``W B_s`` does not change, so it may be
    passed precomputed (``products``, used as constants): ``W``'s gradient then differs only inside ``span(B_s)``,
    which the projection removes, and each forward saves a ``c_out x d x k`` product.

    Args:
        weight: Linear ``(c_out, d)`` or conv ``(c_out, C_in, kh, kw)`` weight.
        bases: ``B_s`` of shape ``(d, k_s)``.
        scales: ``Q_s`` of shape ``(k_s, k_s)``.
        products: Optional precomputed ``W B_s`` of shape ``(c_out, k_s)``.
    """
    if len(bases) != len(scales) or (products is not None and len(products) != len(bases)):
        raise ValueError(f"got {len(bases)} bases, {len(scales)} scale matrices and "
                         f"{'no' if products is None else len(products)} products; they must pair up")
    w = weight_matrix(weight)
    out = w
    for i, (b, q) in enumerate(zip(bases, scales)):
        b = b.to(w.dtype)
        eye = torch.eye(q.shape[0], dtype=q.dtype, device=q.device)
        wb = w @ b if products is None else products[i]  # (c_out, d) @ (d, k) -> (c_out, k)
        out = out + (wb @ (q - eye)) @ b.T  # (c_out,k)(k,k) -> (c_out,k); (c_out,k)(k,d) -> (c_out,d)
    return out.view_as(weight)


def scaling_delta(weight: Tensor, bases: Sequence[Tensor], scales: Sequence[Tensor],
                  products: Sequence[Tensor] | None = None) -> Tensor:
    """``W_eff - W = sum_s W B_s (Q_s - I) B_s^T`` as ``(c_out, d)`` (see :func:`scaled_weight`)."""
    if len(bases) != len(scales) or (products is not None and len(products) != len(bases)):
        raise ValueError(f"got {len(bases)} bases, {len(scales)} scale matrices and "
                         f"{'no' if products is None else len(products)} products; they must pair up")
    w = weight_matrix(weight)
    out = torch.zeros_like(w)
    for i, (b, q) in enumerate(zip(bases, scales)):
        b = b.to(w.dtype)
        eye = torch.eye(q.shape[0], dtype=q.dtype, device=q.device)
        wb = w @ b if products is None else products[i]  # (c_out, d) @ (d, k) -> (c_out, k)
        out = out + (wb @ (q - eye)) @ b.T  # (c_out,k)(k,k) -> (c_out,k); (c_out,k)(k,d) -> (c_out,d)
    return out


def basis_overlap(b1: Tensor, b2: Tensor) -> float:
    """``||B_1^T B_2||_F``: directions shared by two trust-region bases (they are counted twice; the official
    formula is kept)."""
    return float(torch.linalg.matrix_norm(b1.double().T @ b2.double()))  # (k1,d)(d,k2) -> (k1,k2)


# ------------------------------------------------------------------------------------------------ CUBER
def cosine(a: Tensor, b: Tensor) -> float:
    """Frobenius cosine ``<a, b> / (||a|| ||b||)``; 0 when either is zero."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float((a.double() * b.double()).sum()) / (na * nb)


def energy_profile(basis: Tensor, rep: Tensor) -> Tensor:
    """``e_i = ||u_i^T R||^2 / ||R||_F^2`` for every column ``u_i`` of ``basis``: how a representation's energy spreads
    over a basis, float64 ``(k,)`` (zeros for ``R = 0``).

    Args:
        basis: Orthonormal ``(d, k)``.
        rep: Representation ``(d, n)``.
    """
    rep = rep.double()
    total = float(rep.square().sum())
    coeffs = basis.double().T @ rep  # (k, d)(d, n) -> (k, n)
    return coeffs.square().sum(dim=1) / total if total > 0 else coeffs.new_zeros(basis.shape[1])


def profile_overlap(own: Tensor, new: Tensor) -> float:
    """``<e_new, e_own> / <e_own, e_own>``: how much of an old task's energy profile over its basis a new
    representation reproduces (about 1 for inputs distributed like the old task's, about 0 for inputs in other
    directions, even where the basis borrows directions of other tasks); 0 for an empty profile.

    Args:
        own: The old task's :func:`energy_profile` over its basis ``(k,)``.
        new: The new representation's profile over the same basis ``(k,)``.
    """
    norm = float(own.double().square().sum())
    return float((own.double() * new.double()).sum()) / norm if norm > 0 else 0.0


def agreement(accuracy: float, own_accuracy: float, chance: float) -> float:
    """``(accuracy - chance) / (own_accuracy - chance)``: how much of an old predictor's skill on its own task it keeps
    on new data (1: as good, 0: chance, < 0: worse than chance); 0 when the predictor was itself at chance."""
    if own_accuracy <= chance:
        return 0.0
    return (accuracy - chance) / (own_accuracy - chance)


def budget_scale(displacement: Tensor, step: Tensor, radius: float) -> float:
    """The largest ``alpha`` in ``[0, 1]`` with ``||D + alpha s||_F <= radius`` (``D`` inside the ball already).

    Args:
        displacement: ``D``, the move made so far (any shape).
        step: ``s``, the next move (same shape).
        radius: The ball's radius.
    """
    ss = float(step.double().square().sum())
    if ss == 0.0:
        return 1.0
    ds = float((displacement.double() * step.double()).sum())
    slack = max(radius * radius - float(displacement.double().square().sum()), 0.0)
    if ss + 2.0 * ds <= slack:
        return 1.0
    return max(0.0, min(1.0, (-ds + math.sqrt(ds * ds + ss * slack)) / ss))


def orth(mat: Tensor, *, rel_tol: float = ORTH_TOL, scale: float | None = None) -> Tensor:
    """Orthonormal basis of the column space of ``mat`` (float64), dropping ``sigma < rel_tol * scale``.

    Args:
        mat: ``(d, k)``.
        rel_tol: Relative tolerance.
        scale: Reference singular value; defaults to ``sigma_max(mat)``.
    """
    if mat.shape[1] == 0:
        return mat.double()
    u, s = thin_svd(mat.double())  # (d, k'), (k',)
    ref = float(s.max()) if scale is None else scale
    return u[:, s > rel_tol * ref] if ref > 0 else u[:, :0]


def released_basis(memory: Tensor, kept_bases: Sequence[Tensor], *, rel_tol: float = ORTH_TOL) -> Tensor:
    """``U_rel = orth((I - K K^T) M)`` with ``K = orth([B_i for kept i])``.

    ``U_rel`` spans the memory directions no kept (non-released) task relies on. The memory is orthonormal, so the
    tolerance is taken relative to ``sigma_max(M) = 1``.

    Args:
        memory: Orthonormal ``(d, m)``.
        kept_bases: Bases ``(d, k_i)`` of every old task not in regime (iii).
        rel_tol: Drop tolerance.

    Returns:
        ``(d, r)`` float64, possibly ``r = 0``.
    """
    mem = memory.double()
    if not kept_bases:
        return orth(mem, rel_tol=rel_tol, scale=1.0)
    k = orth(torch.cat([b.double() for b in kept_bases], dim=1), rel_tol=rel_tol)  # (d, q)
    resid = mem - k @ (k.T @ mem)  # (d,q)(q,m) -> (d,m)
    return orth(resid, rel_tol=rel_tol, scale=1.0)
