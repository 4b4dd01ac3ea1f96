"""The examples the docs show run as shown: the README's Python API and the "Write a strategy" page."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_python_api_example_runs_and_matches_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clkit.cli import main

    text = (ROOT / "README.md").read_text()
    api = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", api, flags=re.S).group(1)  # type: ignore[union-attr]
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    written = json.loads((tmp_path / "runs/ewc-digits/results.json").read_text())
    assert written["strategy"] == "EWC" and written["n_experiences"] == 5

    # The same run through the command line: the same matrices.
    config = tmp_path / "ewc.yaml"
    config.write_text("""seed_everything: 0
model:
  class_path: strategies.EWC
  init_args: {ewc_lambda: 100.0}
data:
  class_path: scenarios.SplitDigits
  init_args: {n_experiences: 5, setting: class-il, seed: 0, batch_size: 32}
trainer: {max_epochs: 3, enable_progress_bar: false, accelerator: cpu, devices: 1}
""")
    main(["fit", "--config", str(config), "--run_dir", str(tmp_path / "cli")])
    cli = json.loads((tmp_path / "cli/results.json").read_text())
    assert cli["accuracy_matrix"] == written["accuracy_matrix"]
    assert cli["val_accuracy_matrix"] == written["val_accuracy_matrix"]


def _replay_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type:
    code = _python_blocks(ROOT / "docs/write_a_strategy.md")[0]
    body = [line for line in code.splitlines() if line.strip() and not line.strip().startswith(("#", '"""'))]
    assert len(body) <= 30  # "about 20 lines": imports, class and three methods
    (tmp_path / "my_replay.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_replay", None)
    import my_replay  # type: ignore[import-not-found]

    return my_replay.Replay


@pytest.mark.parametrize("setting", ["class-il", "task-il", "domain-il"])
def test_the_write_a_strategy_replay_passes_the_conformance_battery(setting: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.strategies.test_conformance import test_conformance

    replay = _replay_module(tmp_path, monkeypatch)
    test_conformance(replay, setting, tmp_path / "battery")


def test_the_replay_remembers_and_runs_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clkit.cli import main
    from clkit.loop import fit_stream, trainer_factory
    from scenarios import SplitDigits
    from strategies import Naive

    replay = _replay_module(tmp_path, monkeypatch)
    run = _python_blocks(ROOT / "docs/write_a_strategy.md")[1]
    namespace: dict[str, object] = {}
    exec(compile(run, "write_a_strategy.md", "exec"), namespace)
    result = namespace["result"]
    replay_sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}  # the page's optimizer
    stream = SplitDigits(setting="class-il", seed=0)
    naive = fit_stream(Naive(seed=0, optimizer=replay_sgd), stream, trainer_factory(max_epochs=3))
    assert result.metrics["acc"] > naive.metrics["acc"] + 0.2  # type: ignore[attr-defined]  # replay helps, class-IL
    assert result.strategy.strategy_state_bytes() > 0 and isinstance(result.strategy, replay)  # type: ignore[attr-defined]
    x, y, t = result.strategy.buffer  # type: ignore[attr-defined]
    assert len(y) == 200 and torch.equal(y.unique(), torch.arange(10))  # every class keeps its share

    # ``--model my_replay.Replay`` from the working directory, with no PYTHONPATH.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(tmp_path), "")])
    sys.modules.pop("my_replay", None)
    main(["fit", "--model", "my_replay.Replay", "--model.init_args.buffer_size", "50", "--data", "scenarios.SplitDigits",
          "--data.init_args.setting", "class-il", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--run_dir", str(tmp_path / "cli")])
    assert json.loads((tmp_path / "cli/results.json").read_text())["strategy"] == "Replay"


def test_every_strategy_is_in_the_readme_table_and_every_scenario_in_the_catalogue() -> None:
    import scenarios
    from strategies import STRATEGIES

    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.split("## Strategies", 1)[1].split("\n## ", 1)[0].splitlines()
             if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == [cls.__name__ for cls in STRATEGIES]
    for line, cls in zip(table, STRATEGIES):
        config = line.split("|")[-2].strip().strip("`").split("`")[0]
        assert list(ROOT.glob(config)), (cls.__name__, config)
    catalogue = (ROOT / "docs" / "scenarios.md").read_text().split("## Catalogue", 1)[1].split("\n## ", 1)[0]
    listed = {name for line in catalogue.splitlines() if line.startswith("| `")
              for name in line.split("|")[1].replace("`", "").replace(" ", "").split(",")}
    assert set(scenarios.__all__) <= listed, set(scenarios.__all__) - listed


def test_tied_tables_equal_their_sources_and_a_stale_one_is_found(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import docs_tables
    finally:
        sys.path.pop(0)
    assert docs_tables.main(["--check"]) == 0  # every table in README.md and docs/ equals its report
    source = tmp_path / "report.md"
    source.write_text("# Report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nafter\n")
    doc = tmp_path / "doc.md"
    doc.write_text(f"text\n<!-- table from {source} -->\n| a | b |\n|---|---|\n| 1 | 9 |\n<!-- end table -->\nend\n")
    docs_tables.ROOT = Path("/")  # sources named by absolute path here
    try:
        assert docs_tables.sync(doc, write=False) == [f"{doc.relative_to('/')}:2: from {source.relative_to('/')}"]
        docs_tables.sync(doc, write=True)
        assert docs_tables.sync(doc, write=False) == []
        assert doc.read_text().splitlines()[2:5] == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    finally:
        docs_tables.ROOT = ROOT
