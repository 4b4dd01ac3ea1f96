"""DER++: the buffer stores the logits of the step that saw each sample, and the logit-matching term uses them."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.toy import ToySplit
from strategies.der import DER
from tests.strategies.kwargs import sgd


def test_stored_logits_are_the_trajectorys_not_the_final_networks() -> None:
    pl.seed_everything(0, verbose=False)
    stream = ToySplit(n_experiences=2, classes_per_experience=2, setting="class-il", seed=0)
    result = fit_stream(DER(optimizer=sgd(0.1), buffer_size=16, alpha=0.5, beta=0.5), stream,
                        trainer_factory(max_epochs=2))
    der = result.strategy
    assert der.label == "DER++" and DER(beta=0.0).label == "DER"
    assert der.buffer["logits"].shape == (16, 4)
    der.eval()
    with torch.no_grad():
        now = der(der.buffer["x"], der.buffer["t"])
    assert not torch.allclose(now, der.buffer["logits"], atol=1e-3)  # logged during training, the net moved since


def test_alpha_zero_and_beta_zero_is_plain_fine_tuning() -> None:
    stream = ToySplit(n_experiences=2, classes_per_experience=2, setting="class-il", seed=0)
    from strategies import Naive

    matrices = []
    for make in (lambda: DER(optimizer=sgd(0.1), buffer_size=16, alpha=0.0, beta=0.0, seed=3),
                 lambda: Naive(optimizer=sgd(0.1), seed=3)):
        matrices.append(fit_stream(make(), stream, trainer_factory(max_epochs=2)).accuracy_matrix)
    assert torch.equal(*matrices)
