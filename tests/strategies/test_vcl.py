"""VCL with a coreset, and IBCL's per-preference baselines (strategies/ibcl/baselines.py), on toy binary streams."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from clkit.errors import ConfigError
from clkit.loop import StreamRun, trainer_factory
from clkit.module import memory_bytes
from scenarios.ibcl_toy import RotatingBinary
from strategies.ibcl.baselines import select_from_gaussian, train_preference_model
from strategies.ibcl.bayes import kl_diag_gaussians, mlp_forward, nll
from strategies.ibcl.evaluation import task_accuracies
from strategies.vcl import VCL
from tests.strategies.kwargs import adam


def _vcl(stream: RotatingBinary, **kwargs: object) -> VCL:
    pl.seed_everything(0, verbose=False)
    module = VCL(**{"optimizer": adam(0.05), "seed": 0, **kwargs})  # type: ignore[arg-type]
    StreamRun(module, stream, trainer_factory(max_epochs=3)).run()
    return module


@pytest.fixture(scope="module")
def conflicting() -> RotatingBinary:
    return RotatingBinary(n_experiences=2, angle=90.0, seed=0, train_samples=200)


def test_coreset_is_held_out_of_training_and_kept_in_memory(conflicting: RotatingBinary) -> None:
    module = _vcl(conflicting, coreset_size=15)
    exps = conflicting.experiences
    assert [len(c[1]) for c in module.coreset] == [15, 15]
    for e, (x, _) in zip(exps, module.coreset):
        gap = (x[:, None] - e.train.x[None]).abs().sum(-1).min(1).values
        assert bool((gap == 0).all())  # the coreset comes from the experience's training data
    held_out = module.train_data(exps[1])
    assert len(held_out) == len(exps[1].train)  # outside an experience: all of it
    assert module.strategy_state_bytes() == memory_bytes(module.memory_state())
    assert module.strategy_state_bytes() >= memory_bytes(module.coreset)


def test_prior_is_the_propagated_posterior_and_the_coreset_refines_only_the_prediction(
        conflicting: RotatingBinary) -> None:
    module = _vcl(conflicting, coreset_size=20, coreset_epochs=30)
    assert module.posterior is not None
    assert torch.equal(module.posterior.mu, module.prior_mu)  # the state is the propagated posterior
    assert not torch.allclose(module.pred_mu, module.prior_mu)
    x = torch.cat([c[0] for c in module.coreset])
    y = torch.cat([c[1] for c in module.coreset])

    def objective(mu: torch.Tensor, sigma: torch.Tensor) -> float:  # coreset NLL of the mean + KL to the prior / N
        fit = nll(mlp_forward(mu, x, module.sizes), y)
        return float(fit + kl_diag_gaussians(mu, sigma, module.prior_mu, module.prior_sigma) / len(y))

    assert objective(module.pred_mu, module.pred_sigma) < objective(module.prior_mu, module.prior_sigma)
    updates = module.extra_results(torch.zeros(2, 2))["vcl"]["coreset_batch_updates"]
    assert updates == 30 * 1 + 30 * 2  # 20, then 40 coreset samples in batches of 32
    plain = _vcl(conflicting, coreset_size=0)
    assert torch.equal(plain.pred_mu, plain.prior_mu) and plain.coreset_updates == 0
    with pytest.raises(ConfigError, match="coreset_size"):
        VCL(coreset_size=-1)


def test_preference_model_is_trained_on_the_weighted_tasks_only(conflicting: RotatingBinary) -> None:
    exps = conflicting.experiences
    trains, vals = [e.train for e in exps], [e.val for e in exps]
    sizes = (4, 1)
    only0 = train_preference_model(trains, [1.0, 0.0], sizes, val_sets=vals, epochs=3, lr=0.05)
    assert only0.batch_updates == 3 * -(-len(trains[0]) // 32)  # task 1's data is never seen
    tests = [e.test for e in exps]
    acc = {w0: task_accuracies(train_preference_model(trains, [w0, 1 - w0], sizes, val_sets=vals, epochs=10,
                                                      lr=0.05).theta.unsqueeze(0), tests, lambda z: z, sizes)[0]
           for w0 in (0.9, 0.1)}
    assert acc[0.9][0] > acc[0.1][0] + 0.1 and acc[0.1][1] > acc[0.9][1] + 0.1, acc
    assert float(only0.val_acc[0]) > 0.9 and 0 <= only0.best_epoch <= 3
    with pytest.raises(ValueError, match="weight"):
        train_preference_model(trains, [1.0], sizes, val_sets=vals)


def test_select_from_gaussian_picks_per_preference_on_validation(conflicting: RotatingBinary) -> None:
    vals = [e.val for e in conflicting.experiences]
    mu = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])  # solves neither task alone: a draw tilts towards one of them
    prefs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    thetas, val = select_from_gaussian(mu, torch.full_like(mu, 1.0), prefs, vals, (4, 1), num_samples=64,
                                       generator=torch.Generator().manual_seed(0))
    assert thetas.shape == (2, 5) and val[0, 0] > val[1, 0] and val[1, 1] > val[0, 1]
    same, _ = select_from_gaussian(mu, torch.zeros_like(mu), prefs, vals, (4, 1), num_samples=3)
    assert torch.equal(same, mu.expand(2, -1))
