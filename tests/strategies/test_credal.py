"""Tests of IBCL's knowledge base, preferences, HDRs, sampling and metrics, without Lightning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from strategies.ibcl.bayes import segment_lengths
from strategies.ibcl.credal import KnowledgeBase, combination_weights, preferences
from strategies.ibcl.hdr import (
    build_hdr,
    empirical_coverage,
    hdr_box,
    mixture_log_prob,
    mixture_threshold,
    mixture_threshold_bound,
    moment_average,
    paper_alpha,
    sample_box,
    sample_mixture_hdr,
    z_value,
)
from strategies.ibcl.metrics import (
    average_per_task,
    bt_ibcl,
    oracle_per_task,
    peak_per_task,
    preference_weighted_accuracy,
    select_by_validation,
    spearman,
    stack_stages,
    standard_bwt,
    weight_rank_correlation,
)

F64 = torch.float64


def _point(value: float, p: int = 4, sigma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((p,), value), torch.full((p,), sigma)


def test_pruning_discards_near_posterior_and_reuses_substitute_as_prior() -> None:
    """Within d the second posterior is discarded, its slot points to the first, which is the next prior."""
    kb = KnowledgeBase()
    (a, sa), (b, sb) = _point(0.0), _point(5.0)
    kb.update(torch.stack([a, b]), torch.stack([sa, sb]), d=0.1)
    assert len(kb) == 2 and kb.slots == [[0, 1]]
    near, far = a + 0.01, b + 3.0  # W2 to KB[0] is sqrt(4 * 0.01^2) = 0.02
    prior_mu, prior_sigma = kb.update(torch.stack([near, far]), torch.stack([sa, sb]), d=0.1)
    assert kb.slots[1] == [0, 2] and len(kb) == 3
    assert kb.origins == [(0, 0), (0, 1), (1, 1)]
    assert torch.equal(prior_mu[0], a) and torch.equal(prior_sigma[0], sa)  # substitute, not the discarded `near`
    assert torch.equal(prior_mu[1], far)
    assert kb.nn_distances[1][0] == pytest.approx(0.02, rel=1e-4)


def test_pruning_compares_with_points_added_earlier_in_the_same_task() -> None:
    kb = KnowledgeBase()
    (a, s) = _point(1.0)
    kb.update(torch.stack([a, a + 1e-3, a + 10]), torch.stack([s, s, s]), d=0.01)
    assert kb.slots == [[0, 0, 1]] and len(kb) == 2


def test_zero_threshold_stores_every_posterior() -> None:
    kb = KnowledgeBase()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        kb.update(torch.randn(3, 6, generator=gen) * 1e-3, torch.full((3, 6), 0.1), d=0.0)
    assert len(kb) == 12 and kb.slots[3] == [9, 10, 11]
    with pytest.raises(ValueError, match="d must be >= 0"):
        kb.update(torch.zeros(3, 6), torch.ones(3, 6), d=-1.0)


def test_official_distance_prunes_with_its_own_scale() -> None:
    kb = KnowledgeBase()
    (a, s) = _point(0.0, p=100)
    kb.update(torch.stack([a, a + 0.05]), torch.stack([s, s]), d=0.01, distance="official")
    assert kb.slots == [[0, 0]]  # ||0.05 * 1||_2 / 100 = 0.005 <= 0.01, while W2 = 0.5 would keep it
    kb2 = KnowledgeBase()
    kb2.update(torch.stack([a, a + 0.05]), torch.stack([s, s]), d=0.01, distance="w2")
    assert kb2.slots == [[0, 1]]


def test_knowledge_base_state_round_trip() -> None:
    kb = KnowledgeBase()
    kb.update(torch.randn(2, 3), torch.rand(2, 3) + 0.1, d=0.0)
    back = KnowledgeBase.from_state_dict(kb.state_dict())
    assert back.slots == kb.slots and back.origins == kb.origins
    assert all(torch.equal(x, y) for x, y in zip(back.mus, kb.mus))
    assert kb.nbytes() == 2 * 2 * 3 * 4


def test_combination_weights_convex_with_shared_substitutes() -> None:
    """Beta >= 0 and sum 1 for random preferences; substitutes accumulate their slots' weights."""
    slots = [[0, 1, 2], [0, 3, 1], [4, 4, 2]]
    for stage in range(3):
        for w in preferences(stage, 20, seed=3):
            beta = combination_weights(w, slots, 5)
            assert (beta >= 0).all() and float(beta.sum()) == pytest.approx(1.0)
    beta = combination_weights([0.5, 0.3, 0.2], slots, 5)
    expect = [0.5 / 3 + 0.3 / 3, 0.5 / 3 + 0.3 / 3, 0.5 / 3 + 0.2 / 3, 0.3 / 3, 2 * 0.2 / 3]
    assert beta.tolist() == pytest.approx(expect)
    assert combination_weights([1.0], slots, 5).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0, 0])


@pytest.mark.parametrize("bad", [[0.7, 0.7], [-0.5, 1.5], [0.2, 0.2, 0.2, 0.4]])
def test_invalid_preference_is_a_clear_error(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="preference"):
        combination_weights(bad, [[0], [1], [2]], 3)


def test_preferences_are_seeded_dirichlet() -> None:
    """Spec 13.8 (pure part): same (seed, stage) -> same preferences; rows on the simplex; Dirichlet(1)."""
    assert torch.equal(preferences(3, seed=7), preferences(3, seed=7))
    assert not torch.equal(preferences(3, seed=7), preferences(3, seed=8))
    assert torch.equal(preferences(0, seed=7), torch.ones(1, 1, dtype=F64))
    w = preferences(1, 20_000, seed=0)
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(20_000, dtype=F64))
    for q in (0.1, 0.25, 0.5, 0.9):  # Dirichlet(1, 1): the first weight is U(0, 1)
        assert float((w[:, 0] < q).double().mean()) == pytest.approx(q, abs=0.015)
    nu = preferences(1, 20_000, seed=0, kind="normalized_uniform")  # u0 / (u0 + u1) is not uniform
    assert float((nu[:, 0] < 0.1).double().mean()) == pytest.approx(0.1 / (2 * 0.9), abs=0.01)


def test_moment_average_is_linear_in_mean_and_std() -> None:
    beta = torch.tensor([0.25, 0.75], dtype=F64)
    mus, sigmas = torch.tensor([[0.0, 4.0], [2.0, 0.0]], dtype=F64), torch.tensor([[1.0, 1.0], [3.0, 5.0]], dtype=F64)
    mu, sigma = moment_average(beta, mus, sigmas)
    assert mu.tolist() == pytest.approx([0.75 * 2, 0.25 * 4])
    assert sigma.tolist() == pytest.approx([0.25 + 0.75 * 3, 0.25 + 0.75 * 5])


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.25])
def test_hdr_box_holds_one_minus_alpha_per_coordinate(alpha: float) -> None:
    """Each coordinate's interval contains 1 - alpha of Gaussian samples (tolerance 0.5 %)."""
    gen = torch.Generator().manual_seed(11)
    mu, sigma = torch.randn(8, generator=gen, dtype=F64), torch.rand(8, generator=gen, dtype=F64) + 0.2
    lo, hi = hdr_box(mu, sigma, alpha)
    x = mu + sigma * torch.randn(100_000, 8, generator=gen, dtype=F64)
    inside = ((x >= lo) & (x <= hi)).double().mean(0)  # (P,)
    assert torch.allclose(inside, torch.full_like(inside, 1 - alpha), atol=0.005)


@pytest.mark.parametrize("alpha", [0.1, 0.25])
def test_mixture_hdr_acceptance_is_one_minus_alpha(alpha: float) -> None:
    """Rejection into {log q >= tau_alpha} accepts about 1 - alpha of mixture draws."""
    gen = torch.Generator().manual_seed(12)
    beta = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    mus, sigmas = torch.randn(3, 6, generator=gen, dtype=F64) * 2, torch.rand(3, 6, generator=gen, dtype=F64) + 0.3
    tau = mixture_threshold(beta, mus, sigmas, alpha, n_samples=10_000, generator=gen)
    samples, rate = sample_mixture_hdr(beta, mus, sigmas, tau, 5_000, generator=gen)
    assert rate == pytest.approx(1 - alpha, abs=0.02)
    assert samples.shape == (5_000, 6) and (mixture_log_prob(samples, beta, mus, sigmas) >= tau).all()


def test_mixture_log_prob_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(13)
    beta = torch.tensor([0.6, 0.4], dtype=F64)
    mus, sigmas = torch.randn(2, 5, generator=gen, dtype=F64), torch.rand(2, 5, generator=gen, dtype=F64) + 0.2
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(beta),
        torch.distributions.Independent(torch.distributions.Normal(mus, sigmas), 1))
    theta = torch.randn(7, 5, generator=gen, dtype=F64) * 2
    assert torch.allclose(mixture_log_prob(theta, beta, mus, sigmas), ref.log_prob(theta), atol=1e-9)


def test_alpha_convention_mapping_and_z_values() -> None:
    """Code alpha 0.99 (interval mass) <-> paper alpha 0.01."""
    assert paper_alpha(0.99, "code") == pytest.approx(0.01)
    assert paper_alpha(0.01, "paper") == 0.01
    assert [paper_alpha(a, "code") for a in (0.75, 0.9, 0.99)] == pytest.approx([0.25, 0.10, 0.01])
    assert [z_value(a) for a in (0.01, 0.1, 0.25)] == pytest.approx([2.576, 1.645, 1.150], abs=1e-3)
    with pytest.raises(ValueError, match="convention"):
        paper_alpha(0.1, "percent")  # type: ignore[arg-type]


def test_box_sampling_per_coordinate_and_per_tensor() -> None:
    """Clean sampling draws a distinct u per coordinate; faithful one u per parameter tensor."""
    sizes = (5, 3, 1)
    segments = segment_lengths(sizes)  # [15, 3, 3, 1]
    lo, hi = torch.zeros(22, dtype=F64), torch.linspace(1, 2, 22, dtype=F64)
    gen = torch.Generator().manual_seed(14)
    per_coord = sample_box(lo, hi, 4, generator=gen)
    u = (per_coord - lo) / (hi - lo)
    assert per_coord.shape == (4, 22) and (u >= 0).all() and (u <= 1).all()
    assert all(len(set(row.tolist())) == 22 for row in u)
    per_tensor = sample_box(lo, hi, 4, per="tensor", segments=segments, generator=gen)
    u_t = (per_tensor - lo) / (hi - lo)
    for row in u_t:
        parts = row.split(segments)
        assert all(torch.allclose(p, p[0].expand_as(p)) for p in parts)
        assert len({round(float(p[0]), 12) for p in parts}) == len(segments)
    with pytest.raises(ValueError, match="segments"):
        sample_box(lo, hi, 1, per="tensor")


def test_build_hdr_moment_average_and_mixture() -> None:
    gen = torch.Generator().manual_seed(15)
    beta = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    mus, sigmas = torch.randn(3, 4, generator=gen, dtype=F64), torch.rand(3, 4, generator=gen, dtype=F64) + 0.1
    box = build_hdr(beta, mus, sigmas, 0.01, combine="moment_average")
    assert torch.allclose(box.mean, mus[1]) and torch.allclose(box.hi - box.mean, z_value(0.01) * sigmas[1])
    draws = box.sample(50, generator=gen)
    assert ((draws >= box.lo) & (draws <= box.hi)).all()
    mix = build_hdr(beta, mus, sigmas, 0.1, combine="mixture", threshold="monte_carlo", n_hdr_samples=2_000,
                    generator=gen)
    assert mix.mus is not None and mix.mus.shape == (1, 4)  # zero-weight components dropped
    assert torch.allclose(mix.mean, mus[1]) and mix.sample(10, generator=gen).shape == (10, 4)
    with pytest.raises(ValueError, match="combine"):
        build_hdr(beta, mus, sigmas, 0.1, combine="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        build_hdr(beta, mus, sigmas, 0.1, threshold="exact")  # type: ignore[arg-type]


def _components(separation: float, e: int = 6, p: int = 300, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mus = torch.randn(e, p, generator=gen, dtype=F64) * separation
    sigmas = torch.rand(e, p, generator=gen, dtype=F64) * 0.3 + 0.05
    beta = torch.rand(e, generator=gen, dtype=F64) + 0.1
    return beta / beta.sum(), mus, sigmas


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.25])
@pytest.mark.parametrize("separation", [0.0, 0.02, 1.0])  # identical means, overlapping, well separated
def test_default_region_holds_at_least_one_minus_alpha_of_the_mixture(alpha: float, separation: float) -> None:
    """Coverage: draws from the preference's mixture fall in the default HDR (mixture, chi-square bound) with
    frequency >= 1 - alpha (within 3 binomial standard errors); the official box holds almost none of it."""
    beta, mus, sigmas = _components(separation)
    gen = torch.Generator().manual_seed(1)
    hdr = build_hdr(beta, mus, sigmas, alpha)
    assert hdr.kind == "mixture" and hdr.tau <= mixture_threshold(beta, mus, sigmas, alpha, n_samples=20_000,
                                                                    generator=gen) + 0.5
    n = 20_000
    coverage = empirical_coverage(hdr, beta, mus, sigmas, n, generator=gen)
    assert coverage >= 1 - alpha - 3 * (alpha * (1 - alpha) / n) ** 0.5, coverage
    if separation == 1.0:  # disjoint components: the bound is exact, the region no larger than needed
        assert coverage <= 1 - alpha + 3 * (alpha * (1 - alpha) / n) ** 0.5, coverage
    box = build_hdr(beta, mus, sigmas, alpha, combine="moment_average")
    assert empirical_coverage(box, beta, mus, sigmas, 2_000, generator=gen) < 0.05
    samples = hdr.sample(200, generator=gen)
    assert bool(hdr.contains(samples).all()) and not bool(box.contains(samples).all())


def test_threshold_bound_is_the_exact_quantile_for_one_gaussian() -> None:
    """For one component, ``log q = c - chi2_P / 2`` exactly, so the bound is the alpha-quantile of ``log q``."""
    from scipy.stats import chi2

    sigma = torch.full((1, 50), 0.3, dtype=F64)
    tau = mixture_threshold_bound(torch.ones(1, dtype=F64), sigma, 0.1)
    c = -50 * math.log(0.3) - 25 * math.log(2 * math.pi)
    assert tau == pytest.approx(c - 0.5 * chi2.ppf(0.9, 50), abs=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        mixture_threshold_bound(torch.ones(1, dtype=F64), sigma, 1.0)


def test_preference_weighted_accuracy_by_hand() -> None:
    prefs = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    acc = torch.tensor([[0.9, 0.7], [0.5, 0.8]])
    a = preference_weighted_accuracy(prefs, acc)
    expect = [(0.2 * 0.9 + 0.6 * 0.5) / 0.8, (0.8 * 0.7 + 0.4 * 0.8) / 1.2]
    assert a.tolist() == pytest.approx(expect)
    assert average_per_task(a) == pytest.approx(sum(expect) / 2)
    assert peak_per_task(a) == pytest.approx(max(expect))


def test_bt_ibcl_telescopes_and_standard_bwt_by_hand() -> None:
    """Bt_ibcl = (A[i] - A[0]) / i; standard BWT = mean_{l < T-1} (R[T-1, l] - R[l, l])."""
    a = torch.tensor([0.9, 0.7, 0.8, 0.6])
    assert bt_ibcl(a) == pytest.approx((0.6 - 0.9) / 3)
    assert bt_ibcl(a[:1]) == 0.0
    r = stack_stages([torch.tensor([0.9]), torch.tensor([0.85, 0.8]), torch.tensor([0.88, 0.7, 0.75])])
    assert torch.isnan(r[0, 1]) and r[2, 1] == pytest.approx(0.7)
    assert standard_bwt(r) == pytest.approx(((0.88 - 0.9) + (0.7 - 0.8)) / 2)
    assert standard_bwt(r, stage=1) == pytest.approx(0.85 - 0.9)
    assert standard_bwt(r, stage=0) == 0.0


def test_selection_by_validation_and_oracle_per_task() -> None:
    val = torch.tensor([[0.9, 0.5], [0.6, 0.8], [0.75, 0.75]])
    assert select_by_validation(val, torch.tensor([1.0, 0.0])) == 0
    assert select_by_validation(val, torch.tensor([0.2, 0.8])) == 1
    assert select_by_validation(val, torch.tensor([0.5, 0.5])) == 2  # 0.75 beats 0.70 and 0.70
    assert oracle_per_task(val).tolist() == pytest.approx([0.9, 0.8])


def test_spearman_by_hand_with_ties_and_constants() -> None:
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # ties get average ranks: y ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    expect = float(torch.corrcoef(torch.tensor([[1.0, 2, 3, 4], [1.5, 1.5, 3, 4]]))[0, 1])
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([0.5, 0.5, 0.7, 0.9])) == pytest.approx(expect)
    assert math.isnan(spearman(torch.tensor([1.0, 2, 3]), torch.tensor([0.9, 0.9, 0.9])))
    prefs = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]])
    acc = torch.tensor([[0.6, 0.99], [0.8, 0.9], [0.95, 0.7]])
    assert weight_rank_correlation(prefs, acc) == pytest.approx([1.0, 1.0])
    assert math.isnan(weight_rank_correlation(torch.ones(3, 1), torch.rand(3, 1))[0])
