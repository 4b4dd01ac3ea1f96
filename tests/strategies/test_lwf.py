"""LwF: the stored network is the one after the previous experience, and distillation holds old outputs."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.toy import ToySplit
from strategies.lwf import LwF, distillation
from tests.strategies.kwargs import sgd


def test_distillation_is_minimal_when_the_student_copies_the_teacher() -> None:
    teacher = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    base = distillation(teacher, teacher, 2.0)
    assert base < distillation(teacher + torch.randn(6, 4), teacher, 2.0)


def _old_class_kl(lambda_old: float) -> float:
    """KL between the old classes' softmax (T=2) before and after the second experience, on its data."""
    pl.seed_everything(0, verbose=False)
    stream = ToySplit(n_experiences=2, classes_per_experience=2, setting="class-il", seed=0)
    strategy = LwF(optimizer=sgd(0.1), lambda_old=lambda_old, seed=0)
    snapshots = []
    original = strategy.on_experience_end

    def keep(exp: object) -> None:
        original(exp)
        snapshots.append({k: v.clone() for k, v in strategy.teacher.items()})

    strategy.on_experience_end = keep  # type: ignore[method-assign]
    fit_stream(strategy, stream, trainer_factory(max_epochs=5))
    assert all(torch.equal(snapshots[1][k], v) for k, v in strategy.state_dict().items())  # the network after it
    x, t = stream.experiences[1].train.x, stream.experiences[1].train.t
    strategy.eval()
    with torch.no_grad():
        now = strategy(x, t)[:, :2] / 2
        before = torch.func.functional_call(strategy, snapshots[0], (x, t))[:, :2] / 2
    return float(torch.nn.functional.kl_div(now.log_softmax(1), before.log_softmax(1), log_target=True,
                                            reduction="batchmean"))


def test_distillation_keeps_old_class_outputs_on_new_data() -> None:
    assert _old_class_kl(10.0) < 0.5 * _old_class_kl(0.0)
