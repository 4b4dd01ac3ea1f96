"""SI: the path integral ω sums −g·Δθ over the steps, so with small steps it equals the loss decrease."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.toy import ToySplit
from strategies.si import SI
from tests.strategies.kwargs import sgd


def _loss(strategy: SI, stream: ToySplit) -> float:
    exp = stream.experiences[0]
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(strategy(exp.train.x, exp.train.t), exp.train.y))


def test_path_integral_matches_the_loss_decrease_and_sets_the_importance() -> None:
    pl.seed_everything(0, verbose=False)
    stream = ToySplit(n_experiences=1, classes_per_experience=2, setting="task-il", seed=0)
    stream.setup()
    strategy = SI(optimizer=sgd(0.01), c=0.5, xi=0.1, seed=0)
    strategy.bind(stream.spec)
    start = {n: p.detach().clone() for n, p in strategy.named_parameters()}
    before = _loss(strategy, stream)
    fit_stream(strategy, stream, trainer_factory(max_epochs=3))
    drop = before - _loss(strategy, stream)
    total = float(sum(w.sum() for w in strategy._path.values()))
    assert drop > 0 and abs(total - drop) < 0.3 * drop, (total, drop)  # minibatch noise: close, not exact
    for n, p in strategy.named_parameters():  # Ω = ω / (Δ² + ξ), θ̃ = the weights now
        expected = strategy._path[n] / ((p.detach() - start[n]).pow(2) + 0.1)
        assert torch.allclose(strategy.omega[n], expected) and torch.equal(strategy.anchor[n], p.detach())
