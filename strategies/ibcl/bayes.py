"""Mean-field Gaussian networks with a leading chain dimension, and diagonal-Gaussian math for IBCL.

Every network here is an MLP whose weights and biases are stored as one flat vector per chain: a parameter
vector ``theta`` of length ``P`` holds, layer by layer, the weight ``(out, in)`` in row-major order followed by
the bias ``(out,)``. ``m`` variational posteriors ``q_j = N(mu_j, diag sigma_j^2)`` are two ``(m, P)`` tensors
``mu`` and ``rho`` with ``sigma = softplus(rho)``. The same flat layout is used for the knowledge base, the
highest density regions and the sampled deterministic models, so any ``(n, P)`` batch of parameter vectors
can be evaluated with one call of :func:`mlp_forward`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MODEL_SIZES",
    "BayesMLP",
    "hidden_sizes",
    "kl_diag_gaussians",
    "layer_sizes",
    "log_normal",
    "mlp_forward",
    "mlp_forward_local",
    "negative_elbo",
    "nll",
    "num_params",
    "official_distance",
    "segment_lengths",
    "softplus_inv",
    "tempered_prior",
    "to_sequential",
    "w2_diag_gaussians",
]

ModelSize = Literal["small", "normal", "large"]
MODEL_SIZES: dict[str, tuple[int, ...]] = {"small": (), "normal": (64,), "large": (128, 16)}
_LOG_2PI = math.log(2.0 * math.pi)


def hidden_sizes(model_size: str) -> tuple[int, ...]:
    """Hidden widths of the protocol's model sizes (small = logistic regression, normal 64, large 128-16)."""
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size={model_size!r} is not one of {sorted(MODEL_SIZES)}")
    return MODEL_SIZES[model_size]


def layer_sizes(in_features: int, hidden: Sequence[int], out_features: int) -> tuple[int, ...]:
    """Widths ``(in, h_1, ..., out)``; raises ``ValueError`` on a non-positive width."""
    sizes = (int(in_features), *(int(h) for h in hidden), int(out_features))
    if min(sizes) < 1:
        raise ValueError(f"layer widths must be positive, got {sizes}")
    return sizes


def segment_lengths(sizes: Sequence[int]) -> list[int]:
    """Lengths of the parameter tensors (weight, bias, weight, bias, ...) inside a flat vector."""
    lengths: list[int] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        lengths += [fan_out * fan_in, fan_out]
    return lengths


def num_params(sizes: Sequence[int]) -> int:
    """Number of scalars P of an MLP with widths ``sizes`` (e.g. 513 for ``(512, 1)``)."""
    return sum(segment_lengths(sizes))


def softplus_inv(x: float) -> float:
    """Inverse of softplus: the ``rho`` for which ``softplus(rho) == x`` (``x > 0``)."""
    if x <= 0:
        raise ValueError(f"softplus_inv needs x > 0, got {x}")
    return x + math.log(-math.expm1(-x))


def mlp_forward(theta: Tensor, x: Tensor, sizes: Sequence[int]) -> Tensor:
    """Evaluate ``n`` MLPs given as flat parameter vectors on one input batch (ReLU between layers).

    Args:
        theta: Parameter vectors, (n, P).
        x: Inputs shared by all models, (B, in), or one batch per model, (n, B, in).
        sizes: Layer widths ``(in, ..., out)`` with ``num_params(sizes) == P``.

    Returns:
        Logits, (n, B, out).
    """
    n = theta.shape[0]
    if theta.shape[1] != num_params(sizes):
        raise ValueError(f"theta has {theta.shape[1]} parameters, sizes {tuple(sizes)} need {num_params(sizes)}")
    h, offset = x, 0
    for li, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = theta[:, offset : offset + fan_out * fan_in].reshape(n, fan_out, fan_in)  # (n, P_w) -> (n, out, in)
        offset += fan_out * fan_in
        b = theta[:, offset : offset + fan_out]  # (n, out)
        offset += fan_out
        if h.dim() == 2:  # shared input: one matmul for all n models
            batch = h.shape[0]
            h = (h @ w.reshape(n * fan_out, fan_in).T).reshape(batch, n, fan_out)  # (B, in) @ (in, n*out)
            h = h.transpose(0, 1) + b.unsqueeze(1)  # (n, B, out)
        else:
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # (n, B, in) @ (n, in, out) -> (n, B, out)
        if li < len(sizes) - 2:
            h = F.relu(h)
    return h


def mlp_forward_local(mu: Tensor, sigma: Tensor, x: Tensor, sizes: Sequence[int]) -> Tensor:
    """Logits of ``m`` mean-field Gaussian MLPs by the local reparameterisation trick (Kingma et al., 2015).

    Per layer, the pre-activations of every example are drawn from their exact Gaussian
    ``N(h mu_W^T + mu_b, h^2 sigma_W^2^T + sigma_b^2)`` instead of drawing one weight sample per batch: the same
    expected log-likelihood, with a gradient variance that falls with the batch size.

    Args:
        mu, sigma: The chains' means and standard deviations, (m, P).
        x: Inputs, (B, in).
        sizes: Layer widths.

    Returns:
        Sampled logits, (m, B, out), differentiable in ``mu`` and ``sigma``.
    """
    n = mu.shape[0]
    if mu.shape[1] != num_params(sizes):
        raise ValueError(f"mu has {mu.shape[1]} parameters, sizes {tuple(sizes)} need {num_params(sizes)}")
    h, offset = x.unsqueeze(0).expand(n, -1, -1), 0  # (m, B, in)
    var = sigma.pow(2)
    for li, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w_mu = mu[:, offset : offset + fan_out * fan_in].reshape(n, fan_out, fan_in)
        w_var = var[:, offset : offset + fan_out * fan_in].reshape(n, fan_out, fan_in)
        offset += fan_out * fan_in
        b_mu, b_var = mu[:, offset : offset + fan_out], var[:, offset : offset + fan_out]  # (m, out)
        offset += fan_out
        mean = torch.baddbmm(b_mu.unsqueeze(1), h, w_mu.transpose(1, 2))  # (m, B, in) @ (m, in, out)
        v = torch.baddbmm(b_var.unsqueeze(1), h.pow(2), w_var.transpose(1, 2))
        h = mean + v.clamp_min(1e-12).sqrt() * torch.randn_like(mean)
        if li < len(sizes) - 2:
            h = F.relu(h)
    return h


def to_sequential(theta: Tensor, sizes: Sequence[int]) -> nn.Sequential:
    """Turn one flat parameter vector (P,) into a plain ``nn.Sequential`` of ``Linear``/``ReLU`` layers."""
    layers: list[nn.Module] = []
    offset = 0
    for li, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(fan_in, fan_out, device="meta")  # no allocation or random init: parameters set below
        w = theta[offset : offset + fan_out * fan_in].reshape(fan_out, fan_in)  # (P_w,) -> (out, in)
        offset += fan_out * fan_in
        lin.weight = nn.Parameter(w.detach().clone())
        lin.bias = nn.Parameter(theta[offset : offset + fan_out].detach().clone())
        offset += fan_out
        layers.append(lin)
        if li < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BayesMLP(nn.Module):
    """``m`` mean-field Gaussian MLPs trained side by side (one per IBCL chain).

    Args:
        sizes: Layer widths ``(in, ..., out)``; ``out == 1`` is a binary sigmoid head, ``out > 1`` softmax.
        chains: Number of chains ``m``.
        mu_init: ``"standard"`` draws each chain's means like ``nn.Linear`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in)));
            ``"zero"`` is the official code's ``mu = 0``.
        sigma_init: Initial standard deviation (0.1 clean, 1.0 official).
        generator: Optional generator for the initial means.
    """

    def __init__(self, sizes: Sequence[int], *, chains: int, mu_init: Literal["standard", "zero"] = "standard",
                 sigma_init: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if chains < 1:
            raise ValueError(f"chains must be >= 1, got {chains}")
        if mu_init not in ("standard", "zero"):
            raise ValueError(f"mu_init={mu_init!r} is not one of ['standard', 'zero']")
        self.sizes = tuple(int(s) for s in sizes)
        self.mu_init, self.sigma_init = mu_init, float(sigma_init)
        p = num_params(self.sizes)
        self.mu = nn.Parameter(torch.zeros(chains, p))
        self.rho = nn.Parameter(torch.zeros(chains, p))
        self.reset_parameters(generator)

    @property
    def sigma(self) -> Tensor:
        """Posterior standard deviations, (m, P)."""
        return F.softplus(self.rho)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fresh variational parameters: means per ``mu_init`` and ``sigma = sigma_init`` everywhere."""
        with torch.no_grad():
            self.rho.fill_(softplus_inv(self.sigma_init))
            if self.mu_init == "zero":
                self.mu.zero_()
                return
            u = torch.rand(self.mu.shape, generator=generator, dtype=self.mu.dtype)  # (m, P)
            offset = 0
            for fan_in, length in zip(self._fan_ins(), segment_lengths(self.sizes)):
                bound = 1.0 / math.sqrt(fan_in)
                self.mu[:, offset : offset + length] = (2 * u[:, offset : offset + length] - 1) * bound
                offset += length

    def load_gaussians(self, mu: Tensor, sigma: Tensor) -> None:
        """Start every chain at the given Gaussians, e.g. its prior (``init_from_prior``); (m, P) each."""
        with torch.no_grad():
            self.mu.copy_(mu)
            self.rho.copy_(sigma.clamp_min(1e-8) + torch.log(-torch.expm1(-sigma.clamp_min(1e-8))))

    def _fan_ins(self) -> list[int]:
        return [fan_in for fan_in in self.sizes[:-1] for _ in range(2)]

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One reparameterised draw per chain, ``mu + sigma * eps``; (m, P), differentiable."""
        eps = torch.randn(self.mu.shape, generator=generator, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.sigma * eps

    def forward(self, x: Tensor, sample: bool = True) -> Tensor:
        """Logits of every chain, (m, B, out), for inputs (B, in); ``sample=False`` uses the means."""
        theta = self.sample() if sample else self.mu
        return mlp_forward(theta, x, self.sizes)


def log_normal(theta: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Log-density of diagonal Gaussians summed over the last dimension (broadcasting leading dims)."""
    z = (theta - mu) / sigma
    return (-0.5 * z.pow(2) - torch.log(sigma) - 0.5 * _LOG_2PI).sum(-1)


def kl_diag_gaussians(mu_q: Tensor, sigma_q: Tensor, mu_p: Tensor, sigma_p: Tensor) -> Tensor:
    r"""Analytic :math:`KL(q \| p)` between diagonal Gaussians, summed over the last dimension.

    .. math:: \sum_c \log\frac{\sigma_{p,c}}{\sigma_{q,c}}
              + \frac{\sigma_{q,c}^2 + (\mu_{q,c}-\mu_{p,c})^2}{2\sigma_{p,c}^2} - \frac12
    """
    var_ratio = (sigma_q / sigma_p).pow(2)
    return 0.5 * (var_ratio + ((mu_q - mu_p) / sigma_p).pow(2) - 1.0 - torch.log(var_ratio)).sum(-1)


def w2_diag_gaussians(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    r"""2-Wasserstein distance between diagonal Gaussians over the last dimension (broadcasting).

    .. math:: W_2 = \sqrt{\lVert\mu_1-\mu_2\rVert^2 + \lVert\sigma_1-\sigma_2\rVert^2}
    """
    return ((mu1 - mu2).pow(2).sum(-1) + (sigma1 - sigma2).pow(2).sum(-1)).sqrt()


def official_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    r"""The official code's pruning distance, :math:`\lVert\Delta\mu\rVert/P + \lVert\Delta\sigma\rVert/(\sqrt2 P)`.

    Not a metric between distributions (the sigma vector is duplicated by a bug in the official code);
    faithful mode only.
    """
    p = mu1.shape[-1]
    return (mu1 - mu2).norm(dim=-1) / p + (sigma1 - sigma2).norm(dim=-1) / (math.sqrt(2.0) * p)


def tempered_prior(mu: Tensor, sigma: Tensor, base_std: Tensor | float, weight: Tensor | float) -> tuple[Tensor, Tensor]:
    r"""The next task's prior: the previous posterior raised to ``weight`` times the base prior to ``1 - weight``.

    .. math:: p_{i+1} \propto q_i^{\lambda}\, \mathcal{N}(0, s^2)^{1-\lambda}, \qquad
              \frac{1}{\sigma_p^2} = \frac{\lambda}{\sigma_q^2} + \frac{1-\lambda}{s^2}, \qquad
              \mu_p = \sigma_p^2 \frac{\lambda \mu_q}{\sigma_q^2}

    ``weight`` 1 is VCL's prior (the posterior itself); 0 restarts from the base prior ``N(0, s^2)``; in between, a
    chain's posterior after task ``i`` counts task ``k``'s likelihood about ``weight ** (i - k)`` times, so the new
    task is never outweighed by the accumulated old ones (a chain is not prior-dominated).

    Args:
        mu, sigma: The previous posterior, (..., P).
        base_std: ``s``, broadcastable to (..., P) (e.g. (m, 1) for one per chain).
        weight: ``lambda`` in [0, 1], broadcastable likewise.

    Returns:
        ``(mu_p, sigma_p)``, (..., P) each.
    """
    lam = torch.as_tensor(weight, dtype=mu.dtype, device=mu.device)
    s = torch.as_tensor(base_std, dtype=mu.dtype, device=mu.device)
    if bool(((lam < 0) | (lam > 1)).any()) or bool((s <= 0).any()):
        raise ValueError(f"need weights in [0, 1] and base stds > 0, got {lam.tolist()} and {s.tolist()}")
    precision = lam / sigma.pow(2) + (1 - lam) / s.pow(2)
    var = 1.0 / precision
    return var * lam * mu / sigma.pow(2), var.sqrt()


def nll(logits: Tensor, y: Tensor, reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """Per-chain negative log-likelihood: BCE for one logit, cross-entropy for several.

    Args:
        logits: (m, B, out).
        y: Labels (B,) in ``0..out-1`` (``{0, 1}`` when ``out == 1``).
        reduction: Mean or sum over the batch.

    Returns:
        (m,) losses.
    """
    m, batch, out = logits.shape
    if out == 1:
        z = logits.squeeze(-1)  # (m, B, 1) -> (m, B)
        per = F.softplus(z) - z * y.to(z.dtype)  # BCE with logits, -log sigmoid(+-z), stable for large |z|
    else:
        flat = F.cross_entropy(logits.reshape(m * batch, out), y.long().repeat(m), reduction="none")
        per = flat.reshape(m, batch)  # (m*B,) -> (m, B)
    return per.mean(-1) if reduction == "mean" else per.sum(-1)


def negative_elbo(logits: Tensor, y: Tensor, *, mu: Tensor, sigma: Tensor, prior_mu: Tensor, prior_sigma: Tensor,
                  n_train: int, objective: Literal["clean", "faithful"] = "clean",
                  theta: Tensor | None = None) -> Tensor:
    """Per-chain loss, (m,): the negative ELBO per example (docs/methods/ibcl.md).

    ``"clean"``: ``mean_B NLL + KL(q || p) / N``, the negative ELBO divided by ``N`` with the KL analytic.
    ``"faithful"``: the official ``sum_B NLL + log q(theta) - log p(theta)`` at the sample ``theta`` (m, P)
    that produced ``logits``; the KL then weighs ``N / |B|`` times more than in the ELBO.
    """
    if objective == "clean":
        if n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {n_train}")
        return nll(logits, y, "mean") + kl_diag_gaussians(mu, sigma, prior_mu, prior_sigma) / n_train
    if objective == "faithful":
        if theta is None:
            raise ValueError("objective='faithful' needs the sample theta that produced the logits")
        mc_kl = log_normal(theta, mu, sigma) - log_normal(theta, prior_mu, prior_sigma)
        return nll(logits, y, "sum") + mc_kl
    raise ValueError(f"objective={objective!r} is not one of ['clean', 'faithful']")
