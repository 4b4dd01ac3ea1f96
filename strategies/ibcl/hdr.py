"""Combination of knowledge-base points, highest density regions (HDR) and model sampling for IBCL.

Convention: ``alpha`` is the paper's, the HDR has probability mass ``1 - alpha`` (smaller alpha, wider region).
The official code, since its commit 3680d7a, passes the interval *mass* instead; :func:`paper_alpha` maps it.

Which region holds its mass (measured by :func:`empirical_coverage`, the fraction of draws from the preference's
mixture that fall inside the region):

- ``combine="mixture"`` (default): the level set ``{log q >= tau}`` of the mixture itself. With
  ``threshold="bound"`` (default) ``tau`` solves ``sum_e beta_e P_e[log beta_e N_e(theta) < tau] = alpha`` exactly
  through the chi-square law of ``log N_e`` under its own component; since ``log q >= log beta_e N_e`` everywhere,
  the region holds **at least** ``1 - alpha`` of the mass (exactly ``1 - alpha`` for well-separated components) and
  costs a few chi-square evaluations instead of ``n_hdr_samples`` mixture densities. ``threshold="monte_carlo"`` is
  the alpha-quantile of ``log q`` over ``n_hdr_samples`` draws (mass ``1 - alpha`` up to Monte Carlo error).
- ``combine="moment_average"`` (the official code): a per-coordinate box around one averaged Gaussian; every
  coordinate's interval holds ``1 - alpha`` of that Gaussian, the box only ``(1 - alpha)^P``, and of the actual
  mixture typically nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "HDR",
    "build_hdr",
    "empirical_coverage",
    "hdr_box",
    "mixture_log_prob",
    "mixture_threshold",
    "mixture_threshold_bound",
    "moment_average",
    "paper_alpha",
    "sample_box",
    "sample_mixture",
    "sample_mixture_hdr",
    "z_value",
]

Combine = Literal["moment_average", "mixture"]
Threshold = Literal["bound", "monte_carlo"]
SamplePer = Literal["coordinate", "tensor"]
_LOG_2PI = math.log(2.0 * math.pi)


def paper_alpha(alpha: float, convention: Literal["paper", "code"] = "paper") -> float:
    """Alpha in the paper's convention; ``convention="code"`` reads ``alpha`` as interval mass (code 0.99 -> 0.01)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if convention == "paper":
        return float(alpha)
    if convention == "code":
        return 1.0 - float(alpha)
    raise ValueError(f"convention={convention!r} is not one of ['paper', 'code']")


def z_value(alpha: float) -> float:
    """Half-width in standard deviations of the central interval of mass ``1 - alpha``: ``Phi^-1(1 - alpha/2)``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def moment_average(beta: Tensor, mus: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """The official combination: ``mu_hat = sum beta mu`` and ``sigma_hat = sum beta sigma`` (linear in sigma).

    This is neither the mixture nor its moment match (whose variance is ``sum beta (sigma^2 + mu^2) - mu_hat^2``).

    Args:
        beta: Convex weights, (E,).
        mus: Means, (E, P).
        sigmas: Standard deviations, (E, P).

    Returns:
        ``(mu_hat, sigma_hat)``, (P,) each.
    """
    b = beta.to(device=mus.device, dtype=mus.dtype)
    return b @ mus, b @ sigmas  # (E,) @ (E, P) -> (P,)


def hdr_box(mu: Tensor, sigma: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Per-coordinate HDR ``[mu - z sigma, mu + z sigma]`` with ``z = Phi^-1(1 - alpha/2)``.

    Every coordinate's interval has mass ``1 - alpha``; the box they span has mass ``(1 - alpha)^P`` under the
    diagonal Gaussian, so it is the product of marginal HDRs, not the joint HDR of mass ``1 - alpha``.
    """
    z = z_value(alpha)
    return mu - z * sigma, mu + z * sigma


def sample_box(lo: Tensor, hi: Tensor, k: int, *, per: SamplePer = "coordinate",
               segments: Sequence[int] | None = None, generator: torch.Generator | None = None) -> Tensor:
    """``k`` parameter vectors ``lo + u (hi - lo)`` in the box.

    ``per="coordinate"`` draws an independent ``u_c ~ U(0, 1)`` per coordinate (uniform over the box).
    ``per="tensor"`` is the official code's one ``u`` per parameter tensor (faithful mode); it needs the
    tensor lengths ``segments`` (see ``_bayes.segment_lengths``).

    Returns:
        (k, P) samples.
    """
    if per == "coordinate":
        u = torch.rand(k, lo.numel(), generator=generator, dtype=lo.dtype)  # (k, P)
    elif per == "tensor":
        if segments is None or sum(segments) != lo.numel():
            raise ValueError(f"per='tensor' needs segments summing to P={lo.numel()}, got {segments}")
        u_seg = torch.rand(k, len(segments), generator=generator, dtype=lo.dtype)  # (k, n_tensors)
        u = u_seg.repeat_interleave(torch.as_tensor(list(segments)), dim=1)  # (k, n_tensors) -> (k, P)
    else:
        raise ValueError(f"per={per!r} is not one of ['coordinate', 'tensor']")
    return lo + u.to(lo.device) * (hi - lo)


def mixture_log_prob(theta: Tensor, beta: Tensor, mus: Tensor, sigmas: Tensor) -> Tensor:
    """Exact log-density of the mixture ``sum_e beta_e N(mu_e, diag sigma_e^2)`` at each row of ``theta``.

    Computed in float64 as a logsumexp over components with positive weight; the quadratic forms are matmuls
    on coordinates centred at the first component's mean.

    Args:
        theta: Points, (n, P).
        beta: Weights, (E,).
        mus: Means, (E, P).
        sigmas: Standard deviations, (E, P).

    Returns:
        (n,) log-densities.
    """
    keep = (beta > 0).to(mus.device)
    b, mu, sig = beta.to(mus.device, torch.float64)[keep], mus[keep].double(), sigmas[keep].double()
    centre = mu[0]
    z, mu_c = theta.double() - centre, mu - centre  # (n, P), (E, P)
    prec = sig.pow(-2)  # (E, P)
    quad = z.pow(2) @ prec.T - 2.0 * z @ (mu_c * prec).T + (mu_c.pow(2) * prec).sum(-1)  # (n, P) @ (P, E) -> (n, E)
    log_norm = -torch.log(sig).sum(-1) - 0.5 * mu.shape[1] * _LOG_2PI  # (E,)
    return torch.logsumexp(torch.log(b) + log_norm - 0.5 * quad, dim=1)


def sample_mixture(beta: Tensor, mus: Tensor, sigmas: Tensor, n: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws from the mixture: a component ``e ~ Cat(beta)``, then ``N(mu_e, diag sigma_e^2)``; (n, P)."""
    comp = torch.multinomial(beta.double().cpu(), n, replacement=True, generator=generator).to(mus.device)  # (n,)
    eps = torch.randn(n, mus.shape[1], generator=generator, dtype=mus.dtype).to(mus.device)  # (n, P)
    return mus[comp] + sigmas[comp] * eps


def mixture_threshold(beta: Tensor, mus: Tensor, sigmas: Tensor, alpha: float, *, n_samples: int = 10_000,
                      generator: torch.Generator | None = None, chunk: int = 1_000) -> float:
    """``tau_alpha``: the alpha-quantile of ``log q(theta)`` over ``n_samples`` draws from the mixture ``q``."""
    logp = [mixture_log_prob(sample_mixture(beta, mus, sigmas, min(chunk, n_samples - s), generator), beta, mus,
                             sigmas) for s in range(0, n_samples, chunk)]
    return float(torch.quantile(torch.cat(logp), alpha))


def mixture_threshold_bound(beta: Tensor, sigmas: Tensor, alpha: float) -> float:
    r"""A threshold ``tau`` whose mixture level set ``{log q >= tau}`` holds at least ``1 - alpha`` of the mass.

    Under component ``e``, ``log beta_e N_e(theta) = c_e - chi2_P / 2`` with
    ``c_e = log beta_e - sum_c log sigma_{e,c} - P/2 log 2 pi``; ``tau`` solves
    :math:`\sum_e \beta_e\, P[\chi^2_P > 2 (c_e - \tau)] = \alpha`. Because ``log q(theta) >= log beta_e N_e(theta)``
    for the component ``e`` that drew ``theta``, ``P_q[log q < tau] <= alpha``. Exact (no sampling), equal to the
    alpha-quantile of ``log q`` when the components do not overlap, conservative (a larger region) when they do.

    Args:
        beta: Positive weights, (E,).
        sigmas: Standard deviations, (E, P).
        alpha: Level in (0, 1).
    """
    from scipy.optimize import brentq
    from scipy.special import chdtrc, chdtri  # chi-square survival function and its inverse (plain ufuncs)

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    keep = beta.cpu() > 0
    b = beta.cpu().double()[keep]
    p = sigmas.shape[1]
    c = (torch.log(b) - torch.log(sigmas[keep.to(sigmas.device)].double().cpu()).sum(-1) - 0.5 * p * _LOG_2PI)
    c_np, b_np = c.numpy(), b.numpy()

    def tail(tau: float) -> float:  # P_q[log beta_e N_e < tau], summed over components
        return float((b_np * chdtrc(p, np.maximum(2.0 * (c_np - tau), 0.0))).sum()) - alpha

    lo = float(c_np.min()) - 0.5 * float(chdtri(p, alpha / 10.0))  # every component's tail <= alpha / 10
    return float(brentq(tail, lo, float(c_np.max()), xtol=1e-9, rtol=1e-12))


def sample_mixture_hdr(beta: Tensor, mus: Tensor, sigmas: Tensor, tau: float, k: int, *,
                       generator: torch.Generator | None = None, max_rounds: int = 100,
                       scale: float = 1.0) -> tuple[Tensor, float]:
    """``k`` draws from the mixture restricted to its HDR ``{log q >= tau}`` by rejection.

    ``scale < 1`` draws each candidate from its component with standard deviations ``scale * sigma`` (towards the
    component's mode, where the mixture density is highest); candidates are still kept only inside the HDR.
    ``scale = 1`` is the mixture itself restricted to its HDR; ``scale = 0`` returns component means.

    Returns:
        ``(samples (k, P), acceptance rate)``; the rate is about ``1 - alpha`` when ``tau = tau_alpha`` and
        ``scale = 1``.
    """
    if not 0.0 <= scale <= 1.0:
        raise ValueError(f"scale must lie in [0, 1], got {scale}")
    accepted: list[Tensor] = []
    drawn = kept = 0
    for _ in range(max_rounds):
        cand = sample_mixture(beta, mus, sigmas * scale, max(k, 16), generator)
        ok = mixture_log_prob(cand, beta, mus, sigmas) >= tau
        accepted.append(cand[ok])
        drawn, kept = drawn + cand.shape[0], kept + int(ok.sum())
        if kept >= k:
            return torch.cat(accepted)[:k], kept / drawn
    raise RuntimeError(f"rejection sampling accepted {kept} of {drawn} draws, fewer than k={k}; is tau={tau} too high?")


@dataclass
class HDR:
    """The region a preference maps to, with its reference ("mean") model.

    For ``kind="moment_average"`` it is the box ``[lo, hi]``; for ``kind="mixture"`` the level set
    ``{log q >= tau}`` of the mixture ``(beta, mus, sigmas)``, sampled with ``scale`` (:func:`sample_mixture_hdr`).
    """

    kind: Combine
    mean: Tensor
    lo: Tensor | None = None
    hi: Tensor | None = None
    beta: Tensor | None = None
    mus: Tensor | None = None
    sigmas: Tensor | None = None
    tau: float = float("-inf")
    scale: float = 1.0

    def contains(self, theta: Tensor) -> Tensor:
        """Whether each row of ``theta`` (n, P) lies in the region; (n,) booleans."""
        if self.kind == "moment_average":
            assert self.lo is not None and self.hi is not None
            return ((theta >= self.lo) & (theta <= self.hi)).all(-1)
        assert self.beta is not None and self.mus is not None and self.sigmas is not None
        return mixture_log_prob(theta, self.beta, self.mus, self.sigmas) >= self.tau

    def sample(self, k: int, *, generator: torch.Generator | None = None, per: SamplePer = "coordinate",
               segments: Sequence[int] | None = None) -> Tensor:
        """``k`` deterministic models (parameter vectors) from the region, (k, P)."""
        if self.kind == "moment_average":
            assert self.lo is not None and self.hi is not None
            return sample_box(self.lo, self.hi, k, per=per, segments=segments, generator=generator)
        assert self.beta is not None and self.mus is not None and self.sigmas is not None
        return sample_mixture_hdr(self.beta, self.mus, self.sigmas, self.tau, k, generator=generator,
                                  scale=self.scale)[0]


def build_hdr(beta: Tensor, mus: Tensor, sigmas: Tensor, alpha: float, *, combine: Combine = "mixture",
              threshold: Threshold = "bound", n_hdr_samples: int = 10_000,
              generator: torch.Generator | None = None) -> HDR:
    """Map convex weights over the KB points ``(E,)``, ``(E, P)``, ``(E, P)`` to the HDR at level ``alpha``.

    ``threshold`` picks how the mixture's ``tau`` is found (module docstring); the box ignores it.
    """
    if combine == "moment_average":
        mu_hat, sigma_hat = moment_average(beta, mus, sigmas)
        lo, hi = hdr_box(mu_hat, sigma_hat, alpha)
        return HDR("moment_average", mu_hat, lo=lo, hi=hi)
    if combine == "mixture":
        keep = beta.cpu() > 0
        b, mu, sig = beta.cpu()[keep], mus[keep.to(mus.device)], sigmas[keep.to(mus.device)]
        if threshold == "bound":
            tau = mixture_threshold_bound(b, sig, alpha)
        elif threshold == "monte_carlo":
            tau = mixture_threshold(b, mu, sig, alpha, n_samples=n_hdr_samples, generator=generator)
        else:
            raise ValueError(f"threshold={threshold!r} is not one of ['bound', 'monte_carlo']")
        mean = b.to(mu.device, mu.dtype) @ mu  # (E,) @ (E, P) -> (P,)
        return HDR("mixture", mean, beta=b, mus=mu, sigmas=sig, tau=tau)
    raise ValueError(f"combine={combine!r} is not one of ['moment_average', 'mixture']")


def empirical_coverage(hdr: HDR, beta: Tensor, mus: Tensor, sigmas: Tensor, n: int = 10_000, *,
                       generator: torch.Generator | None = None, chunk: int = 1_000) -> float:
    """Fraction of ``n`` draws from the mixture ``sum_e beta_e N(mu_e, sigma_e^2)`` that lie in ``hdr``.

    Theorem 2's premise: an HDR at level alpha should hold ``>= 1 - alpha`` of the preference's distribution.
    """
    inside = 0
    for start in range(0, n, chunk):
        draws = sample_mixture(beta, mus, sigmas, min(chunk, n - start), generator)
        inside += int(hdr.contains(draws).sum())
    return inside / n
