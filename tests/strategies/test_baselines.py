"""Behaviour of the baselines on offline permuted digits: Naive forgets, Joint does not, EWC forgets less."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from clkit.loop import fit_stream, trainer_factory
from clkit.metrics import backward_transfer
from clkit.module import ContinualModule
from scenarios.digits import PermutedDigits
from strategies import EWC, Joint, Naive
from strategies.ewc import diagonal_fisher
from tests.strategies.kwargs import sgd


def _bwt(strategy: ContinualModule) -> float:
    stream = PermutedDigits(n_experiences=3, seed=0, val_fraction=0.0, batch_size=32)
    acc = fit_stream(strategy, stream, trainer_factory(max_epochs=4)).accuracy_matrix
    return float(backward_transfer(acc))


@pytest.fixture(scope="module")
def bwts() -> dict[str, float]:
    out = {}
    for name, make in {"naive": lambda: Naive(optimizer=sgd(0.05)), "joint": lambda: Joint(optimizer=sgd(0.05)),
                       "ewc": lambda: EWC(optimizer=sgd(0.05), ewc_lambda=100.0, fisher_samples=512)}.items():
        pl.seed_everything(0, verbose=False)
        out[name] = _bwt(make())
    return out


def test_naive_forgets(bwts: dict[str, float]) -> None:
    assert bwts["naive"] < -0.15, bwts


def test_joint_does_not_forget(bwts: dict[str, float]) -> None:
    assert bwts["joint"] > -0.03, bwts


def test_ewc_forgets_less_than_naive(bwts: dict[str, float]) -> None:
    assert bwts["ewc"] > bwts["naive"] + 0.06, bwts


def test_fisher_is_mean_of_squared_per_sample_gradients() -> None:
    pl.seed_everything(0, verbose=False)
    stream = PermutedDigits(n_experiences=1, seed=0, val_fraction=0.0)
    model = EWC()
    model.bind(stream.spec)
    exp = stream.experiences[0]
    fisher = diagonal_fisher(model, exp, max_samples=5, batch_size=2)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for i in range(5):  # the slow, obvious way: one sample at a time
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(exp.train.x[i:i + 1], exp.train.t[i:i + 1]), exp.train.y[i:i + 1])
        loss.backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad.pow(2) / 5
    for n in expected:
        assert torch.allclose(fisher[n], expected[n], atol=1e-6), n
