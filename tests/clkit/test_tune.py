"""``clkit tune``: selection on the validation matrix only, pruning on the validation row, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from clkit.cli.report import sweep_report
from clkit.cli.sweep_state import read_json
from clkit.cli.tune import load_tune, main, run_tune
from clkit.errors import ConfigError
from tests.clkit.test_sweep import InterruptAt, base

SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.02}}


def ewc_digits(test_noise: float) -> dict[str, Any]:
    return {"seed_everything": 0,
            "model": {"class_path": "strategies.EWC",
                      "init_args": {"ewc_lambda": 1.0, "fisher_samples": 64, "optimizer": SGD}},
            "data": {"class_path": "tests.clkit.helpers.SplitDigitsTestNoise",
                     "init_args": {"n_experiences": 2, "setting": "class-il", "seed": "${seed_everything}",
                                   "val_fraction": 0.2, "batch_size": 64, "test_noise": test_noise}},
            "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_model_summary": False}}


def tune_file(tmp_path: Path, name: str, base_config: dict[str, Any], search: dict[str, Any],
              **tune: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": base_config, "search": search, "tune": tune,
                                    "sweep_dir": str(tmp_path / name)}))
    return path


def run(path: Path, **kwargs: Any) -> dict[str, Any]:
    from clkit.cli.launchers import LocalLauncher

    spec, settings, dims = load_tune(path, **kwargs)
    return run_tune(spec, settings, dims, LocalLauncher(0))


def test_the_choice_is_made_on_validation_and_the_test_data_cannot_move_it(tmp_path: Path) -> None:
    search = {"model.init_args.ewc_lambda": [0.1, 100.0, 5000.0]}
    picked = {}
    for noise in (0.0, 1.0):  # only the test images differ between the two studies
        path = tune_file(tmp_path, f"noise{noise}", ewc_digits(noise), search, n_trials=3, sampler="grid",
                         pruner="none", final_seeds=[0, 1])
        summary = run(path)
        values = {t["params"]["model.init_args.ewc_lambda"]: t["value"] for t in summary["trials"]}
        best = max(values, key=lambda k: values[k])
        sel = summary["selected"]
        assert sel["params"]["model.init_args.ewc_lambda"] == best and sel["value"] == values[best]
        res = json.loads((tmp_path / f"noise{noise}" / sel["run_id"] / "results.json").read_text())
        assert res["val_metrics"]["acc"] == pytest.approx(sel["value"])  # the objective is the validation acc
        report = sweep_report([tmp_path / f"noise{noise}"])
        assert "* " in report["text"] and "Selected configuration on test" in report["text"]
        finals = sorted(p.parent.name for p in (tmp_path / f"noise{noise}" / "final").glob("*/results.json"))
        assert len(finals) == 2
        picked[noise] = (values, best, report["selected_test"]["acc"])
    (values0, best0, test0), (values1, best1, test1) = picked[0.0], picked[1.0]
    assert values0 == values1 and best0 == best1  # same validation values, same choice
    assert test0 != test1  # while the test numbers did change


def test_a_trial_is_pruned_on_its_validation_row(tmp_path: Path) -> None:
    b = base(n_exp=3)
    b["data"]["init_args"]["val_fraction"] = 0.25
    search = {"model.init_args.optimizer.init_args.lr": [0.1, 1e-9]}  # the second learns nothing: pruned
    path = tune_file(tmp_path, "prune", b, search, n_trials=2, sampler="grid", pruner="median",
                     pruner_startup_trials=1)
    summary = run(path)
    first, second = summary["trials"]
    assert first["state"] == "complete" and second["state"] == "pruned"
    assert list(second["intermediate"]) == ["0"]  # reported after experience 0, stopped before experience 1
    assert second["intermediate"]["0"] < first["intermediate"]["0"]
    cut = tmp_path / "prune" / second["run_id"]
    assert read_json(cut / "status.json")["status"] == "pruned" and not (cut / "results.json").exists()
    assert [p.name for p in sorted((cut / "checkpoints").glob("exp*.pt"))] == ["exp0.pt"]
    text = sweep_report([tmp_path / "prune"])["text"]
    assert "pruned" in text and "experience 0" in text


def test_a_killed_study_resumes_its_cut_trial_from_its_checkpoint(tmp_path: Path, sigint_restored: None) -> None:
    flag = tmp_path / "interrupt"
    flag.touch()
    b = base(n_exp=3)
    b["data"]["init_args"]["val_fraction"] = 0.25
    b["trainer"]["callbacks"] = [{"class_path": "tests.clkit.test_sweep.InterruptAt",
                                  "init_args": {"flag": str(flag), "experience": 2}}]
    search = {"model.init_args.optimizer.init_args.lr": [0.05, 0.1]}
    path = tune_file(tmp_path, "kill", b, search, n_trials=2, sampler="grid", pruner="none")
    with pytest.raises(SystemExit):  # Ctrl-C inside the first trial's last experience
        run(path)
    study = optuna.load_study(study_name="clkit", storage=f"sqlite:///{tmp_path / 'kill' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["RUNNING", "WAITING"]
    flag.unlink()
    summary = run(path)
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete"]
    cut = read_json(tmp_path / "kill" / summary["trials"][0]["run_id"] / "status.json")
    assert cut["attempt"] == 2 and cut["resumed_from"] == 2  # continued, not started again
    dirs = [p for p in (tmp_path / "kill").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(dirs) == 2  # one run per trial, nothing duplicated
    assert InterruptAt  # (the callback the config names)


@pytest.mark.parametrize(("tune", "message"), [
    ({"objective": "acc"}, "validation matrix only"),
    ({"objective": "val_acc", "sampler": "cmaes"}, "valid samplers: tpe, random, grid"),
    ({"n_trial": 3}, "unknown setting"),
])
def test_bad_tune_settings_are_one_line_errors(tmp_path: Path, tune: dict[str, Any], message: str) -> None:
    path = tune_file(tmp_path, "bad", base(), {"model.init_args.optimizer.init_args.lr": [0.1]}, **tune)
    with pytest.raises(ConfigError, match=message):
        load_tune(path)


def test_a_search_key_cannot_be_overridden_and_a_range_needs_bounds(tmp_path: Path) -> None:
    path = tune_file(tmp_path, "t", base(), {"model.init_args.optimizer.init_args.lr": {"low": 0.01, "high": 1}})
    with pytest.raises(ConfigError, match="the search sweeps .*change the search instead"):
        main([str(path), "--model.init_args.optimizer.init_args.lr", "0.1"])
    bad = tune_file(tmp_path, "u", base(), {"model.init_args.optimizer.init_args.lr": {"low": 0.01}})
    with pytest.raises(ConfigError, match="low and high"):
        load_tune(bad)


def test_a_missing_engine_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from clkit.cli.launchers import engine

    for module, extra in (("optuna", "tune"), ("submitit", "slurm"), ("ray", "ray")):
        monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
        with pytest.raises(ConfigError, match=rf"^{module} is not installed; install it with pip install "
                                              rf"'clkit\[{extra}\]'"):
            engine(module)
