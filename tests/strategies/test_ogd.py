"""OGD: the stored basis is orthonormal, and later updates leave the stored logit gradients' directions alone."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.toy import ToyPermuted
from strategies.ogd import OGD
from tests.strategies.kwargs import sgd


def test_updates_are_orthogonal_to_the_stored_gradients() -> None:
    pl.seed_everything(0, verbose=False)
    stream = ToyPermuted(n_experiences=2, num_classes=2, seed=0)
    strategy = OGD(optimizer=sgd(0.05), gradients_per_task=20, seed=0)
    after_first: list[torch.Tensor] = []
    original = strategy.on_experience_end

    def end(exp: object) -> None:
        original(exp)
        if not after_first:
            after_first.append(torch.cat([p.detach().reshape(-1).clone() for p in strategy.parameters()]))

    strategy.on_experience_end = end  # type: ignore[method-assign]
    fit_stream(strategy, stream, trainer_factory(max_epochs=2))
    basis = strategy.basis
    k = basis.shape[0]
    assert 20 < k <= 40  # (a second task adds new directions, minus any already spanned)
    assert torch.allclose(basis @ basis.T, torch.eye(k), atol=1e-4)
    change = torch.cat([p.detach().reshape(-1) for p in strategy.parameters()]) - after_first[0]
    first_task = basis[:20]  # the first experience's directions
    assert float((first_task @ change).norm()) < 1e-4 * float(change.norm())
    assert float(change.norm()) > 0
