"""Config semantics of ``clkit fit``: stacked configs, ``--print_config``, ``--version``, ``fast_dev_run`` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clkit.cli import main
from clkit.cli.report import format_runs


def _printed(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as done:
        main(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _printed_resolved(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config=resolved"])
    return yaml.safe_load(capsys.readouterr().out)


def test_a_later_config_with_another_class_replaces_the_init_args(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    a.write_text("model:\n  class_path: strategies.GPM\n  init_args:\n    threshold: 0.9\n"
                 "    backbone: {class_path: clkit.nets.MLP, init_args: {hidden: [77, 77], bias: false}}\n")
    b.write_text("model: strategies.Naive\n")
    c.write_text("model: {init_args: {threshold: 0.8}}\n")
    naive = _printed(["--config", str(a), "--config", str(b)], capsys)["model"]
    assert naive["class_path"] == "strategies.Naive" and naive["init_args"]["backbone"] is None
    # the same class again keeps (and updates) the arguments
    gpm = _printed(["--config", str(a), "--config", str(c)], capsys)["model"]["init_args"]
    assert gpm["threshold"] == 0.8 and gpm["backbone"]["init_args"]["hidden"] == [77, 77]


def test_a_class_given_on_the_command_line_starts_its_section_afresh(capsys: pytest.CaptureFixture[str]) -> None:
    # the embedded default config gives Naive an SGD lr of 0.05; GPM's own default (0.01) applies instead
    gpm = _printed(["--model", "GPM"], capsys)["model"]["init_args"]
    assert gpm["optimizer"]["init_args"]["lr"] == 0.01
    naive = _printed(["--model", "Naive"], capsys)["model"]["init_args"]  # the same class: kept
    assert naive["optimizer"]["init_args"]["lr"] == 0.05


def test_print_config_keeps_interpolations_so_a_reused_config_follows_the_seed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    printed = _printed([], capsys)
    assert printed["data"]["init_args"]["seed"] == "${seed_everything}"
    saved = tmp_path / "printed.yaml"
    saved.write_text(yaml.safe_dump(printed))
    resolved = _printed_resolved(["--config", str(saved), "--seed_everything", "3"], capsys)
    assert resolved["seed_everything"] == 3 and resolved["data"]["init_args"]["seed"] == 3


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import clkit

    main(["--version"])
    out = capsys.readouterr().out
    assert out.startswith(f"clkit {clkit.__version__} (python ") and "torch" in out and "pytorch-lightning" in out


def test_fast_dev_run_is_marked_and_skipped_by_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smoke, real = tmp_path / "smoke", tmp_path / "real"
    common = ["--data", "scenarios.ToySplit", "--data.n_experiences", "2", "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--run_dir", str(smoke), "--trainer.fast_dev_run", "true"])
    assert "smoke test" in capsys.readouterr().out
    main(["fit", *common, "--run_dir", str(real), "--trainer.max_epochs", "1"])
    assert json.loads((smoke / "results.json").read_text())["fast_dev_run"] is True
    assert "fast_dev_run" not in json.loads((real / "results.json").read_text())
    table = format_runs([smoke / "results.json", real / "results.json"])
    body, skipped = table.split("Skipped 1 run(s)")
    assert "Runs: 1 done" in body and str(smoke) not in body  # the real run only
    assert str(smoke) in skipped and "fast_dev_run smoke test" in skipped


def test_the_deprecated_num_experiences_still_works_and_warns() -> None:
    from clkit.errors import ConfigError
    from scenarios import ToySplit

    assert ToySplit(n_experiences=4).n_experiences == 4
    with pytest.warns(DeprecationWarning, match="use n_experiences"):
        assert ToySplit(num_experiences=2).n_experiences == 2
    with pytest.raises(ConfigError, match="give n_experiences only"):
        ToySplit(n_experiences=3, num_experiences=2)
