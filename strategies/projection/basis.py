"""Shared math of the gradient-projection family (GPM, TRGP, CUBER): representations, bases, projection.

Pure, typed functions, tested without Lightning (``tests/strategies/test_projection.py``). Conventions:

- A layer's weight is viewed as a matrix ``(c_out, d)``: ``nn.Linear`` as is, ``nn.Conv2d`` as
  ``weight.view(c_out, -1)`` with PyTorch's ``(C_in, kh, kw)`` order, ``d = C_in * kh * kw``.
- A representation matrix ``R`` is ``(d, n)``: its columns are input vectors of the layer.
- A memory (basis) ``M`` is ``(d, m)`` with orthonormal columns, float64; an empty memory has ``m = 0``.

Representation matrices (linear inputs, conv inputs through ``unfold``) live in
:mod:`strategies.projection.representation` and are re-exported here; the trust-region and CUBER pieces live in
:mod:`strategies.projection.trust_region`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from strategies.projection.representation import (
    capture_inputs,
    conv_representation,
    linear_representation,
    representation,
)

__all__ = [
    "ORTH_TOL",
    "capture_inputs",
    "conv_representation",
    "empty_basis",
    "energy_rank",
    "extend_orthonormal",
    "linear_representation",
    "project_out",
    "project_with_factor",
    "projection_factor",
    "representation",
    "svd_energies",
    "thin_svd",
    "update_basis",
    "weight_matrix",
]

ORTH_TOL = 1e-6
"""Columns whose norm falls below this after orthogonalisation are dropped."""
ENERGY_TOL = 1e-9
"""Round-off slack on energy ratios, so ``eps = 1`` keeps the rank of ``R`` instead of its null directions."""


def weight_matrix(tensor: Tensor) -> Tensor:
    """View a Linear/Conv weight (or its gradient) as ``(c_out, d)``; ``(c_out, C_in, kh, kw) -> (c_out, d)``."""
    return tensor.reshape(tensor.shape[0], -1)


def empty_basis(dim: int, *, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    """An empty memory ``(dim, 0)``."""
    return torch.zeros(dim, 0, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------- representations
def energy_rank(sq_sigma: Tensor, total: float, eps: float, *, start: float = 0.0, faithful: bool = False) -> int:
    """Number of directions to keep so the captured energy reaches ``eps``.

    Returns the smallest ``r >= 0`` with ``start + sum_{i<r} sq_sigma[i] / total >= eps`` (capped at
    ``len(sq_sigma)``, up to ``ENERGY_TOL``). With ``faithful=True`` and ``start == 0`` (first task), returns the
    official code's count of prefixes whose ratio is ``< eps``, one direction fewer (an official-code pitfall,
    docs/methods/projection.md).

    Args:
        sq_sigma: Squared singular values, descending, ``(k,)``.
        total: Total energy ``||R||_F^2``.
        eps: Energy threshold in ``(0, 1]``.
        start: Energy fraction already captured by the memory.
        faithful: Use the official first-task rule.
    """
    if total <= 0 or start >= eps - ENERGY_TOL:
        return 0
    ratio = start + torch.cumsum(sq_sigma, 0) / total  # (k,)
    if faithful and start == 0.0:
        return int((ratio < eps).sum())
    return min(int((ratio < eps - ENERGY_TOL).sum()) + 1, sq_sigma.numel())


def extend_orthonormal(memory: Tensor, new: Tensor, *, tol: float = ORTH_TOL) -> Tensor:
    """Append the directions of ``new`` to ``memory``, keeping the columns orthonormal.

    The new block is orthogonalised against ``memory`` twice (block Gram-Schmidt), columns with norm ``< tol`` are
    dropped, and the rest is orthonormalised by QR. Existing columns are never modified, and the result has at most
    ``d`` columns.

    Args:
        memory: Orthonormal ``(d, m)``.
        new: Candidate directions ``(d, r)``.
        tol: Drop threshold.

    Returns:
        ``(d, m + r')`` with ``r' <= min(r, d - m)``; the first ``m`` columns are ``memory``.
    """
    new = new.to(memory.dtype)
    for _ in range(2):
        new = new - memory @ (memory.T @ new)  # (d,m)(m,r) -> (d,r)
    new = new[:, new.norm(dim=0) >= tol]
    if new.shape[1] == 0:
        return memory
    q, r = torch.linalg.qr(new)  # (d, r'), (r', r')
    q = q[:, r.diagonal().abs() >= tol]
    q = q - memory @ (memory.T @ q)  # (d,m)(m,r') -> (d,r'); removes round-off leakage
    q = q / q.norm(dim=0, keepdim=True)
    return torch.cat([memory, q[:, : memory.shape[0] - memory.shape[1]]], dim=1)


def thin_svd(mat: Tensor) -> tuple[Tensor, Tensor]:
    """``(U, sigma)`` of the thin SVD of ``mat`` (d, k), descending, in ``mat``'s dtype.

    LAPACK's divide-and-conquer driver (``gesdd``, what ``torch.linalg.svd`` uses on the CPU) can fail to converge on
    ill-conditioned matrices such as a projection residual whose columns are mostly rounding noise; the slower
    QR-iteration driver ``gesvd`` (SciPy) takes over then.
    """
    try:
        u, s, _ = torch.linalg.svd(mat, full_matrices=False)  # (d, k), (k,)
        return u, s
    except torch.linalg.LinAlgError:
        import scipy.linalg

        u_np, s_np, _ = scipy.linalg.svd(mat.detach().cpu().double().numpy(), full_matrices=False,
                                         lapack_driver="gesvd")
        return (torch.from_numpy(u_np).to(mat.device, mat.dtype), torch.from_numpy(s_np).to(mat.device, mat.dtype))


def svd_energies(rep: Tensor) -> tuple[Tensor, Tensor]:
    """Left singular vectors and squared singular values of ``rep`` (descending), in ``rep``'s dtype.

    With many more columns than rows (float64 only), ``eigh(R R^T)`` gives the same ``U`` and ``sigma^2`` faster.
    """
    d, n = rep.shape
    if rep.dtype == torch.float64 and n >= 4 * d:
        evals, evecs = torch.linalg.eigh(rep @ rep.T)  # (d, n)(n, d) -> (d, d); ascending
        return evecs.flip(1), evals.flip(0).clamp_min(0.0)
    u, s = thin_svd(rep)  # (d, k), (k,)
    return u, s.square()


def update_basis(memory: Tensor, rep: Tensor, eps: float, *, faithful: bool = False) -> Tensor:
    """GPM basis update with energy threshold ``eps``.

    First task (empty ``memory``): keep the top ``r`` left singular vectors of ``R``. Later tasks: SVD of the
    residual ``R - M M^T R`` and GPM Eq. 8-9. With ``faithful=False`` the new block is appended via
    :func:`extend_orthonormal`. ``faithful=True`` reproduces the official code: float32 SVD, first-task rank one
    fewer, plain concatenation without re-orthonormalisation, truncation at ``d`` columns.

    Args:
        memory: Orthonormal ``(d, m)`` (``m`` may be 0).
        rep: Representation ``(d, n)``.
        eps: Energy threshold.
        faithful: Official-code behaviour (official-code pitfalls, docs/methods/projection.md).

    Returns:
        The new memory ``(d, m')``, ``m' >= m``; it starts with the old columns.
    """
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"threshold={eps} is invalid; valid: 0 < threshold <= 1")
    d = rep.shape[0]
    if memory.shape[1] >= d:
        return memory
    work = rep.float() if faithful else rep.double()
    total = float(work.square().sum())
    if memory.shape[1] == 0:
        u, sq = svd_energies(work)
        r = energy_rank(sq, total, eps, faithful=faithful)
        return extend_orthonormal(memory, u[:, :r]) if not faithful else u[:, :r].to(memory.dtype)
    mem = memory.to(work.dtype)
    resid = work - mem @ (mem.T @ work)  # (d,m)(m,n) -> (d,n)
    u, sq = svd_energies(resid)
    captured = (total - float(resid.square().sum())) / total if total > 0 else 1.0
    r = energy_rank(sq, total, eps, start=captured)  # GPM Eq. 9
    if r == 0:
        return memory
    if faithful:
        return torch.cat([memory, u[:, :r].to(memory.dtype)], dim=1)[:, :d]
    return extend_orthonormal(memory, u[:, :r])


# ------------------------------------------------------------------------------------------------------ projection
def project_out(grad: Tensor, basis: Tensor) -> Tensor:
    """Remove the component of ``grad`` that lies in span(``basis``): ``G - (G M) M^T``.

    Args:
        grad: One layer's gradient, ``(c_out, d)`` or a conv gradient (viewed as ``(c_out, d)``).
        basis: Orthonormal ``(d, m)``; cast to ``grad``'s dtype.

    Returns:
        The projected gradient, same shape as ``grad``.
    """
    if basis.shape[1] == 0:
        return grad
    g = weight_matrix(grad)
    b = basis.to(g.dtype)
    coeffs = g @ b  # (c_out, d) @ (d, m) -> (c_out, m)
    return (g - coeffs @ b.T).view_as(grad)  # (c_out, m) @ (m, d) -> (c_out, d)


def projection_factor(basis: Tensor) -> tuple[Tensor, bool]:
    """The cheaper factor for removing span(``basis``) from gradients: ``(M, False)`` or ``(N, True)``.

    ``G - (G M) M^T`` costs ``2 c_out d m`` per step; when ``m > d / 2`` the orthonormal complement ``N``
    (``d x (d - m)``) gives the same result as ``(G N) N^T`` for ``2 c_out d (d - m)``. Computed once per experience.

    Args:
        basis: Orthonormal ``(d, m)``.

    Returns:
        ``(factor, is_complement)``.
    """
    d, m = basis.shape
    if 2 * m <= d:
        return basis, False
    q, _ = torch.linalg.qr(basis.double(), mode="complete")  # (d, d); the first m columns span span(basis)
    return q[:, m:].to(basis.dtype), True


def project_with_factor(grad: Tensor, factor: Tensor, is_complement: bool) -> Tensor:
    """:func:`project_out` through a factor from :func:`projection_factor`; same shape as ``grad``."""
    if not is_complement:
        return project_out(grad, factor)
    g = weight_matrix(grad)
    f = factor.to(g.dtype)
    return ((g @ f) @ f.T).view_as(grad)  # (c_out,d)(d,d-m) -> (c_out,d-m); (c_out,d-m)(d-m,d) -> (c_out,d)
