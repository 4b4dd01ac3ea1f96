"""A-GEM's and GEM's gradient projections, and their memories (past experiences only, within the budget)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.toy import ToySplit
from strategies.agem import AGEM
from strategies.gem import GEM, project_gem
from tests.strategies.kwargs import sgd


def _bound(cls: type, **kwargs: object) -> AGEM | GEM:
    model = cls(optimizer=sgd(0.1), seed=0, **kwargs)
    model.bind(ToySplit(n_experiences=2, classes_per_experience=2, seed=0).spec)
    return model


def test_agem_projects_only_conflicting_gradients_onto_the_reference_half_space() -> None:
    model = _bound(AGEM)
    params = model.constrained_parameters()
    n = sum(p.numel() for p in params)
    g_ref = torch.randn(n, generator=torch.Generator().manual_seed(0))
    for sign in (-1.0, 1.0):
        g = sign * g_ref + torch.randn(n, generator=torch.Generator().manual_seed(1))
        for p, chunk in zip(params, g.split([p.numel() for p in params])):
            p.grad = chunk.view_as(p).clone()
        model._g_ref = g_ref
        model.transform_gradients()
        new = torch.cat([p.grad.reshape(-1) for p in params])
        if float(g @ g_ref) < 0:  # projected: on the boundary, the closest such vector (Eq. 11)
            assert abs(float(new @ g_ref)) < 1e-3 * float(g.norm() * g_ref.norm())
            assert torch.allclose(new, g - (g @ g_ref) / (g_ref @ g_ref) * g_ref, atol=1e-5)
        else:  # no conflict: the gradient is left alone
            assert torch.equal(new, g)


def test_gem_qp_satisfies_every_constraint_and_matches_agem_for_one_memory() -> None:
    gen = torch.Generator().manual_seed(0)
    memories = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    g = -memories.sum(0) + 0.1 * torch.randn(50, generator=gen, dtype=torch.float64)  # conflicts with every row
    assert bool((memories @ g < 0).all())
    projected = project_gem(g, memories, margin=0.0, eps=0.0)
    assert bool((memories @ projected >= -1e-6).all())
    # optimal: the KKT conditions of the primal hold (g~ - g = G^T v with v >= 0, v_k > 0 only on active rows)
    v = torch.linalg.lstsq(memories.T, projected - g).solution
    assert torch.allclose(memories.T @ v, projected - g, atol=1e-6) and bool((v >= -1e-6).all())
    assert bool(((v < 1e-6) | ((memories @ projected).abs() < 1e-6)).all())
    one = memories[:1]
    agem = g - (g @ one[0]) / (one[0] @ one[0]) * one[0]
    assert torch.allclose(project_gem(g, one, margin=0.0, eps=0.0), agem, atol=1e-8)
    # the margin is a lower bound on the dual variable, as in the authors' code: v = max(margin, -g.m / m.m)
    v_free = float(-(g @ one[0]) / (one[0] @ one[0]))
    for margin in (0.5 * v_free, 2.0 * v_free):
        expected = g + max(margin, v_free) * one[0]
        assert torch.allclose(project_gem(g, one, margin=margin, eps=0.0), expected, atol=1e-8)


@pytest.mark.parametrize("cls", [AGEM, GEM])
def test_memory_holds_past_experiences_within_the_budget(cls: type) -> None:
    pl.seed_everything(0, verbose=False)
    stream = ToySplit(n_experiences=3, classes_per_experience=2, setting="class-il", seed=0)
    result = fit_stream(cls(optimizer=sgd(0.05), buffer_size=30), stream, trainer_factory(max_epochs=1))
    strategy = result.strategy
    assert strategy.buffer_len == 30  # 6 classes x 5
    assert sorted(torch.bincount(strategy.buffer["t"]).tolist()) == [10, 10, 10]
    assert strategy.projections > 0  # the constraint was active while learning the last experience
