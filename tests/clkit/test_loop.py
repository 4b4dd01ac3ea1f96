"""The stream loop's contract: task-aware class-IL accuracy beside the task-agnostic matrix, the environment record."""

from __future__ import annotations

import pytest
import torch

from clkit.loop import fit_stream, trainer_factory
from scenarios.toy import ToySplit
from strategies import Naive

SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}


def test_class_il_records_task_aware_accuracy_from_the_same_run() -> None:
    stream = ToySplit(n_experiences=3, classes_per_experience=2, setting="class-il", seed=0)
    result = fit_stream(Naive(optimizer=SGD, seed=0), stream, trainer_factory(max_epochs=2))
    agnostic, aware = result.accuracy_matrix, result.task_aware_accuracy_matrix
    assert aware is not None and aware.shape == agnostic.shape
    assert bool((aware >= agnostic).all())  # restricting to the right classes can only help
    assert float(agnostic[-1, 0]) < 0.3 < float(aware[-1, 0])  # fine-tuning forgets old classes, not their split
    manual = []  # the same numbers by hand from the final model: argmax over each experience's classes
    strategy = result.strategy.eval()
    with torch.no_grad():
        for exp in stream.experiences:
            logits = strategy(exp.test.x, exp.test.t)
            keep = torch.full_like(logits, float("-inf"))
            keep[:, list(exp.classes)] = 0
            manual.append(float(((logits + keep).argmax(-1) == exp.test.y).float().mean()))
    assert aware[-1].tolist() == pytest.approx(manual, abs=1e-6)
    results = result.results()
    assert results["task_aware_metrics"]["acc"] == pytest.approx(float(aware[-1].mean()), abs=1e-5)
    assert results["evaluation"]["mode"] == "task-agnostic" and results["evaluation"]["task_aware_matrix"]


def test_other_settings_have_no_task_aware_matrix_and_record_the_environment() -> None:
    stream = ToySplit(n_experiences=2, setting="task-il", seed=0)
    result = fit_stream(Naive(optimizer=SGD, seed=0), stream, trainer_factory(max_epochs=1))
    results = result.results()
    assert results["task_aware_accuracy_matrix"] is None and results["evaluation"]["mode"] == "task-aware"
    env = results["environment"]
    assert env["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()
    assert env["device"] == "cpu"


def test_a_resume_under_another_thread_count_warns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from clkit.loop import StreamRun

    class Stop(Exception):
        pass

    make = trainer_factory(max_epochs=1)

    def stop_at_1(i: int, **kw: object):  # type: ignore[no-untyped-def]
        if i == 1:
            raise Stop
        return make(i, **kw)

    stream = ToySplit(n_experiences=2, setting="task-il", seed=0)
    before = torch.get_num_threads()
    with pytest.raises(Stop):
        StreamRun(Naive(optimizer=SGD, seed=0), stream, stop_at_1, run_dir=tmp_path).run()
    torch.set_num_threads(before + 1)
    try:
        with pytest.warns(UserWarning, match=f"torch_threads {before} -> {before + 1}"):
            StreamRun(Naive(optimizer=SGD, seed=0), stream, make, run_dir=tmp_path).run(resume=True)
    finally:
        torch.set_num_threads(before)
