"""MAS: the importance is the mean absolute per-sample gradient of the squared output norm, accumulated."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from scenarios.toy import ToySplit
from strategies.mas import MAS, output_sensitivity


def test_importance_is_the_mean_absolute_per_sample_gradient_of_the_squared_output_norm() -> None:
    pl.seed_everything(0, verbose=False)
    stream = ToySplit(n_experiences=2, classes_per_experience=2, setting="task-il", seed=0)
    stream.setup()
    model = MAS(seed=0)
    model.bind(stream.spec)
    exp = stream.experiences[1]
    got = output_sensitivity(model, exp, max_samples=5, batch_size=2)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(5):  # the slow, obvious way
        model.zero_grad()
        model(exp.train.x[i:i + 1], exp.train.t[i:i + 1]).pow(2).sum().backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                expected[n] += p.grad.abs() / 5
    for n in expected:
        assert torch.allclose(got[n], expected[n], atol=1e-6), n
    assert float(got["heads.0.weight"].abs().sum()) == 0  # another task's head does not shape task 1's output
    assert float(got["heads.1.weight"].abs().sum()) > 0
