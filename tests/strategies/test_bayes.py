"""Tests of IBCL's Bayesian layers and diagonal-Gaussian math (strategies/_bayes.py), without Lightning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from strategies.ibcl.bayes import (
    BayesMLP,
    hidden_sizes,
    kl_diag_gaussians,
    layer_sizes,
    log_normal,
    mlp_forward,
    mlp_forward_local,
    negative_elbo,
    nll,
    num_params,
    official_distance,
    softplus_inv,
    tempered_prior,
    to_sequential,
    w2_diag_gaussians,
)

F64 = torch.float64


def _gaussians() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    mu_q = torch.tensor([0.5, -1.0, 0.3, 2.0], dtype=F64)
    sigma_q = torch.tensor([0.5, 1.2, 0.8, 0.3], dtype=F64)
    mu_p = torch.zeros(4, dtype=F64)
    sigma_p = torch.tensor([1.0, 0.7, 1.5, 1.0], dtype=F64)
    return mu_q, sigma_q, mu_p, sigma_p


def test_analytic_kl_matches_monte_carlo() -> None:
    """Analytic KL within 1 % of a 1e5-sample Monte Carlo estimate of E_q[log q - log p]."""
    mu_q, sigma_q, mu_p, sigma_p = _gaussians()
    gen = torch.Generator().manual_seed(0)
    theta = mu_q + sigma_q * torch.randn(100_000, 4, generator=gen, dtype=F64)  # (S, P)
    mc = (log_normal(theta, mu_q, sigma_q) - log_normal(theta, mu_p, sigma_p)).mean()
    exact = kl_diag_gaussians(mu_q, sigma_q, mu_p, sigma_p)
    assert exact > 1.0
    assert abs(float(mc - exact)) / float(exact) < 0.01
    assert float(kl_diag_gaussians(mu_q, sigma_q, mu_q, sigma_q)) == pytest.approx(0.0, abs=1e-12)


def test_kl_matches_torch_distributions() -> None:
    mu_q, sigma_q, mu_p, sigma_p = _gaussians()
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu_q, sigma_q),
                                            torch.distributions.Normal(mu_p, sigma_p)).sum()
    assert torch.allclose(kl_diag_gaussians(mu_q, sigma_q, mu_p, sigma_p), ref)


def test_clean_elbo_weighs_kl_by_one_over_n() -> None:
    """The clean loss is mean NLL + KL / N per chain, so the KL weight per example is 1/N."""
    gen = torch.Generator().manual_seed(1)
    m, p = 3, 5
    mu, sigma = torch.randn(m, p, generator=gen), torch.rand(m, p, generator=gen) + 0.1
    prior_mu, prior_sigma = torch.zeros(m, p), torch.full((m, p), 0.5)
    logits, y = torch.randn(m, 7, 1, generator=gen), torch.randint(0, 2, (7,), generator=gen)
    kw = {"mu": mu, "sigma": sigma, "prior_mu": prior_mu, "prior_sigma": prior_sigma}
    loss_100 = negative_elbo(logits, y, n_train=100, **kw)
    loss_400 = negative_elbo(logits, y, n_train=400, **kw)
    kl = kl_diag_gaussians(mu, sigma, prior_mu, prior_sigma)
    assert loss_100.shape == (m,)
    assert torch.allclose(loss_100 - loss_400, kl * (1 / 100 - 1 / 400), atol=1e-5)
    bce = F.binary_cross_entropy_with_logits(logits[1, :, 0], y.float())
    assert torch.allclose(loss_100[1], bce + kl[1] / 100, atol=1e-5)


def test_faithful_objective_sums_batch_and_uses_sample() -> None:
    gen = torch.Generator().manual_seed(2)
    mu, sigma = torch.randn(2, 3, generator=gen), torch.full((2, 3), 0.3)
    prior_mu, prior_sigma = torch.zeros(2, 3), torch.ones(2, 3)
    theta = mu + sigma * torch.randn(2, 3, generator=gen)
    logits, y = torch.randn(2, 5, 1, generator=gen), torch.randint(0, 2, (5,), generator=gen)
    loss = negative_elbo(logits, y, mu=mu, sigma=sigma, prior_mu=prior_mu, prior_sigma=prior_sigma, n_train=1000,
                         objective="faithful", theta=theta)
    expect = nll(logits, y, "sum") + log_normal(theta, mu, sigma) - log_normal(theta, prior_mu, prior_sigma)
    assert torch.allclose(loss, expect)
    assert torch.allclose(nll(logits, y, "sum"), 5 * nll(logits, y, "mean"))
    with pytest.raises(ValueError, match="theta"):
        negative_elbo(logits, y, mu=mu, sigma=sigma, prior_mu=prior_mu, prior_sigma=prior_sigma, n_train=1,
                      objective="faithful")
    with pytest.raises(ValueError, match="objective"):
        negative_elbo(logits, y, mu=mu, sigma=sigma, prior_mu=prior_mu, prior_sigma=prior_sigma, n_train=1,
                      objective="bogus")  # type: ignore[arg-type]


def test_multiclass_nll_is_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(3)
    logits, y = torch.randn(2, 6, 4, generator=gen), torch.randint(0, 4, (6,), generator=gen)
    assert torch.allclose(nll(logits, y)[0], F.cross_entropy(logits[0], y))
    assert torch.allclose(nll(logits, y)[1], F.cross_entropy(logits[1], y))


def test_w2_closed_form_symmetric_and_zero() -> None:
    """W2(N(0, 1), N(3, 4)) = sqrt(9 + 1) = sqrt(10); symmetric; 0 for identical inputs."""
    one = torch.ones(1, dtype=F64)
    w = w2_diag_gaussians(0 * one, one, 3 * one, 2 * one)
    assert float(w) == pytest.approx(math.sqrt(3**2 + (2 - 1) ** 2))
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 9, generator=gen, dtype=F64), torch.rand(2, 9, generator=gen, dtype=F64)
    assert float(w2_diag_gaussians(a[0], b[0], a[1], b[1])) == pytest.approx(float(w2_diag_gaussians(a[1], b[1],
                                                                                                    a[0], b[0])))
    assert float(w2_diag_gaussians(a[0], b[0], a[0], b[0])) == 0.0


def test_official_distance_formula() -> None:
    mu1, mu2 = torch.zeros(4), torch.tensor([2.0, 0.0, 0.0, 0.0])
    s1, s2 = torch.ones(4), torch.tensor([1.0, 1.0, 4.0, 1.0])
    assert float(official_distance(mu1, s1, mu2, s2)) == pytest.approx(2 / 4 + 3 / (math.sqrt(2) * 4))


@pytest.mark.parametrize(("size", "expected"), [("small", 513), ("normal", 32_897), ("large", 67_745)])
def test_model_sizes_match_spec(size: str, expected: int) -> None:
    assert num_params(layer_sizes(512, hidden_sizes(size), 1)) == expected


def test_unknown_model_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="huge"):
        hidden_sizes("huge")


@pytest.mark.parametrize("out", [1, 3])
def test_flat_forward_equals_sequential(out: int) -> None:
    """Mlp_forward over (n, P) vectors equals each vector turned into nn.Linear layers; shared or per-model input."""
    gen = torch.Generator().manual_seed(5)
    sizes = layer_sizes(10, (6, 4), out)
    net = BayesMLP(sizes, chains=3, generator=gen)
    x = torch.randn(8, 10, generator=gen)
    logits = net(x, sample=False)
    assert logits.shape == (3, 8, out)
    for j in range(3):
        assert torch.allclose(logits[j], to_sequential(net.mu[j].detach(), sizes)(x), atol=1e-6)
    per_model = mlp_forward(net.mu.detach(), x.expand(3, 8, 10), sizes)
    assert torch.allclose(per_model, logits, atol=1e-6)


def test_bayes_mlp_init_and_reparameterised_gradients() -> None:
    gen = torch.Generator().manual_seed(6)
    net = BayesMLP((20, 1), chains=4, sigma_init=0.1, generator=gen)
    assert torch.allclose(net.sigma, torch.full((4, 21), 0.1))
    bound = 1 / math.sqrt(20)
    assert net.mu.abs().max() <= bound and net.mu.abs().max() > 0.5 * bound
    assert not torch.allclose(net.mu[0], net.mu[1])  # chains start apart
    zero = BayesMLP((20, 1), chains=2, mu_init="zero", sigma_init=1.0)
    assert (zero.mu == 0).all() and torch.allclose(zero.sigma, torch.ones(2, 21))
    net(torch.randn(5, 20)).sum().backward()
    assert net.mu.grad is not None and net.rho.grad is not None and net.rho.grad.abs().sum() > 0


def test_load_gaussians_and_softplus_inv() -> None:
    net = BayesMLP((3, 1), chains=2)
    mu, sigma = torch.randn(2, 4), torch.rand(2, 4) + 0.05
    net.load_gaussians(mu, sigma)
    assert torch.allclose(net.mu, mu) and torch.allclose(net.sigma, sigma, atol=1e-6)
    assert F.softplus(torch.tensor(softplus_inv(0.1))) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="x > 0"):
        softplus_inv(0.0)


def test_tempered_prior_interpolates_between_the_posterior_and_the_base_prior() -> None:
    mu, sigma = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.2]])
    same_mu, same_sigma = tempered_prior(mu, sigma, 2.0, 1.0)
    assert torch.allclose(same_mu, mu) and torch.allclose(same_sigma, sigma)  # VCL: the posterior itself
    base_mu, base_sigma = tempered_prior(mu, sigma, 2.0, 0.0)
    assert torch.equal(base_mu, torch.zeros_like(mu)) and torch.allclose(base_sigma, torch.full_like(sigma, 2.0))
    half_mu, half_sigma = tempered_prior(mu, sigma, 2.0, 0.5)  # precisions average, means precision-weighted
    precision = 0.5 / sigma.pow(2) + 0.5 / 4.0
    assert torch.allclose(half_sigma, precision.rsqrt()) and torch.allclose(half_mu, 0.5 * mu / sigma.pow(2) / precision)
    assert (half_sigma > sigma).all() and (half_mu.abs() < mu.abs()).all()  # broader and shrunk towards 0
    with pytest.raises(ValueError, match="weights"):
        tempered_prior(mu, sigma, 2.0, 1.5)


@pytest.mark.parametrize("sizes", [(3, 1), (3, 4, 2)])
def test_local_reparameterisation_matches_weight_sampling_in_distribution(sizes: tuple[int, ...]) -> None:
    """The first layer's pre-activations have the same mean and variance by either route (and the logits of a
    linear head the same law)."""
    gen = torch.Generator().manual_seed(0)
    p = num_params(sizes)
    mu, sigma = torch.randn(2, p, generator=gen, dtype=torch.float64), torch.rand(2, p, generator=gen,
                                                                                  dtype=torch.float64) + 0.1
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    first = (sizes[0], sizes[1])
    n_first = num_params(first)
    torch.manual_seed(0)
    local = torch.stack([mlp_forward_local(mu[:, :n_first], sigma[:, :n_first], x, first) for _ in range(4000)])
    eps = torch.randn(4000, 2, n_first, generator=gen, dtype=torch.float64)
    weights = mu[:, :n_first] + sigma[:, :n_first] * eps  # (S, m, P)
    direct = torch.stack([mlp_forward(w, x, first) for w in weights])  # (S, m, B, out)
    assert torch.allclose(local.mean(0), direct.mean(0), atol=0.15)
    assert torch.allclose(local.var(0), direct.var(0), rtol=0.15, atol=0.05)
    assert mlp_forward_local(mu, sigma, x, sizes).shape == (2, 5, sizes[-1])
    with pytest.raises(ValueError, match="parameters"):
        mlp_forward_local(mu[:, :-1], sigma[:, :-1], x, sizes)
