"""iCaRL: herding order, class-balanced exemplars, and the nearest-mean classifier filling both class-IL matrices."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.toy import ToySplit
from strategies.icarl import ICaRL, herding
from tests.strategies.kwargs import sgd


def test_herding_keeps_the_running_mean_closest_to_the_class_mean() -> None:
    feats = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 1.0], [-1.0, -1.0], [5.0, 5.0]])
    mu = feats.mean(0)  # (3, 1)
    order = herding(feats, 3)
    assert order[0] == int((feats - mu).norm(dim=1).argmin())  # the first exemplar is the one nearest the mean
    for k in range(1, 3):  # each next one brings the running mean closest to mu
        chosen = order[:k].tolist()
        best = min((i for i in range(5) if i not in chosen),
                   key=lambda i: float((mu - feats[chosen + [i]].mean(0)).norm()))
        assert int(order[k]) == best


def test_nearest_mean_classifier_and_exemplars() -> None:
    pl.seed_everything(0, verbose=False)
    stream = ToySplit(n_experiences=3, classes_per_experience=2, setting="class-il", seed=0)
    result = fit_stream(ICaRL(optimizer=sgd(0.1), buffer_size=30), stream, trainer_factory(max_epochs=3))
    icarl = result.strategy
    assert sorted(torch.bincount(icarl.buffer["y"]).tolist()) == [5] * 6 and bool(icarl.means_valid.all())
    icarl.eval()
    x = torch.cat([e.test.x for e in stream.experiences])
    t = torch.cat([e.test.t for e in stream.experiences])
    with torch.no_grad():
        f = torch.nn.functional.normalize(icarl.features(x), dim=1)
        expected = torch.cdist(f, icarl.class_means).argmin(1)
        assert torch.equal(icarl.predict(x, t), expected)
        within = icarl.predict_within(x, t, torch.tensor([2, 3]))
    assert set(within.tolist()) <= {2, 3}
    assert result.task_aware_accuracy_matrix is not None
    assert bool((result.task_aware_accuracy_matrix >= result.accuracy_matrix - 1e-6).all())  # fewer candidates
    assert result.metrics["acc"] > 0.8, result.accuracy_matrix
