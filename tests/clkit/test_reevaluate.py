"""Re-evaluation from checkpoints reproduces a run's matrices exactly, for every strategy (``clkit test``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clkit import fit_stream, reevaluate, trainer_factory
from clkit.cli import main
from clkit.errors import ConfigError
from scenarios.toy import ToyPermuted, ToySplit
from strategies import STRATEGIES
from tests.strategies.kwargs import STRATEGY_KWARGS

ONE_SETTING = [(cls, next(s for s in ("task-il", "domain-il", "class-il") if s in cls.SUPPORTED_SCENARIOS))
               for cls in STRATEGIES]


def _stream(setting: str, **extra: object) -> ToySplit | ToyPermuted:
    if setting == "domain-il":
        return ToyPermuted(n_experiences=2, num_classes=2, seed=0, val_fraction=0.2, **extra)  # type: ignore[arg-type]
    return ToySplit(n_experiences=2, classes_per_experience=2, setting=setting, seed=0,  # type: ignore[arg-type]
                    val_fraction=0.2, **extra)


@pytest.mark.parametrize(("cls", "setting"), ONE_SETTING, ids=[c.__name__ for c, _ in ONE_SETTING])
def test_checkpoints_reproduce_the_matrices(cls: type, setting: str, tmp_path: Path) -> None:
    kwargs = {**STRATEGY_KWARGS.get(cls.__name__, {}), "seed": 3}
    result = fit_stream(cls(**kwargs), _stream(setting), trainer_factory(max_epochs=1), run_dir=tmp_path)
    again = reevaluate(cls(**kwargs), _stream(setting), tmp_path)
    assert torch.equal(again.accuracy_matrix, result.accuracy_matrix)
    assert torch.equal(again.random_init_accuracy, result.random_init_accuracy)
    assert result.val_accuracy_matrix is not None and again.val_accuracy_matrix is not None
    assert torch.equal(again.val_accuracy_matrix, result.val_accuracy_matrix)


def test_clkit_test_on_the_runs_config_is_identical_and_overrides_change_the_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    common = ["--data", "ToySplit", "--data.n_experiences", "2", "--data.val_fraction", "0.2"]
    main(["fit", *common, "--run_dir", str(run), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar",
          "false"])
    capsys.readouterr()
    main(["test", str(run)])
    assert "(identical)" in capsys.readouterr().out
    retest = json.loads((run / "retest.json").read_text())
    assert retest["max_abs_difference_from_results"] == 0.0
    assert retest["accuracy_matrix"] == json.loads((run / "results.json").read_text())["accuracy_matrix"]
    main(["test", str(run), "--data.spread", "3.0", "--out", str(tmp_path / "noisy.json")])  # harder test data
    noisy = json.loads((tmp_path / "noisy.json").read_text())
    assert noisy["overrides"] == ["--data.spread", "3.0"] and noisy["max_abs_difference_from_results"] > 0


def test_an_unfinished_run_or_another_stream_is_one_line(tmp_path: Path) -> None:
    from strategies import Naive

    fit_stream(Naive(seed=0), _stream("class-il"), trainer_factory(max_epochs=1), run_dir=tmp_path)
    with pytest.raises(ConfigError, match="2 experience checkpoint"):
        reevaluate(Naive(seed=0), ToySplit(n_experiences=3, seed=0), tmp_path)
    with pytest.raises(ConfigError, match="no experience checkpoints"):
        reevaluate(Naive(seed=0), _stream("class-il"), tmp_path / "nothing")
