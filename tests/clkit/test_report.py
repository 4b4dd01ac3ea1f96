"""``clkit report``: single-run tables, and sweep aggregation on hand-made sweep directories (no training)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clkit.cli.aggregate import Group, SweepRun, group_runs
from clkit.cli.plots import mean_matrix
from clkit.cli.report import main, sweep_report
from clkit.errors import DataError

ORDERS = ([0, 1], [1, 0])


def fake_results(strategy: str, seed: int, acc: float, bwt: float, matrix: list[list[float]] | None = None,
                 state: int = 2**20, wall: float = 10.0) -> dict[str, Any]:
    return {"clkit_version": "0", "strategy": strategy, "scenario": "ToySplit", "setting": "task-il", "seed": seed,
            "n_experiences": 2, "accuracy_matrix": matrix or [[acc, 0.5], [acc, acc]],
            "random_init_accuracy": [0.5, 0.5], "per_experience": [], "config": {},
            "metrics": {"acc": acc, "bwt": bwt, "fwt": 0.0, "forgetting": -bwt, "learning_acc": acc},
            "strategy_state_bytes": state, "wall_seconds": wall,
            "evaluation": {"task_ids": True, "mode": "task-aware"}}


def make_sweep(root: Path, runs: list[tuple[str, int, list[int], dict[str, Any] | None, str]],
               keys: tuple[str, ...] = ("model", "seed_everything", "data.init_args.task_order")) -> Path:
    """A sweep directory: ``sweep.json`` plus one run directory per (strategy, seed, order, results, status)."""
    entries = []
    for i, (strategy, seed, order, results, status) in enumerate(runs):
        run_id = f"{strategy}-s{seed}-o{''.join(map(str, order))}"
        labels = dict(zip(keys, (strategy, str(seed), json.dumps(order, separators=(",", ":")))))
        grid = dict(zip(keys, (f"strategies.{strategy}", seed, order)))
        entries.append({"run_id": run_id, "index": i, "strategy": strategy, "scenario": "ToySplit", "labels": labels,
                        "grid": grid, "status": status})
        run_dir = root / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "status.json").write_text(json.dumps({"run_id": run_id, "index": i, "labels": labels,
                                                          "status": status, "error": "boom: bad lr"}))
        if results is not None:
            (run_dir / "results.json").write_text(json.dumps(results))
    (root / "sweep.json").write_text(json.dumps({"grid_keys": list(keys), "runs": entries}))
    return root


def rows(report: dict[str, Any]) -> list[dict[str, str]]:
    return list(csv.DictReader(report["csv"].splitlines()))


def test_mean_and_sample_std_over_seeds_per_strategy_and_order(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "s", [
        ("Naive", 0, [0, 1], fake_results("Naive", 0, acc=0.5, bwt=-0.2, wall=10.0), "done"),
        ("Naive", 1, [0, 1], fake_results("Naive", 1, acc=0.7, bwt=-0.4, wall=20.0), "done"),
        ("Naive", 0, [1, 0], fake_results("Naive", 0, acc=0.9, bwt=0.0), "done"),
        ("GPM", 0, [0, 1], fake_results("GPM", 0, acc=0.8, bwt=0.0, state=3 * 2**20), "done"),
    ])
    report = sweep_report([sweep])
    assert report["columns"] == ["strategy", "scenario", "evaluation", "data.init_args.task_order"]
    table = rows(report)
    assert [(r["strategy"], r["task_order"], r["n_done"]) for r in table] == [
        ("Naive", "[0,1]", "2"), ("Naive", "[1,0]", "1"), ("GPM", "[0,1]", "1")]
    first = table[0]
    assert float(first["acc_mean"]) == pytest.approx((0.5 + 0.7) / 2)
    assert float(first["acc_std"]) == pytest.approx(math.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / (2 - 1)))
    assert float(first["bwt_mean"]) == pytest.approx(-0.3) and float(first["wall_s_mean"]) == pytest.approx(15.0)
    assert table[1]["acc_std"] == "" and float(table[2]["state_mb_mean"]) == pytest.approx(3.0)
    md = report["markdown"]
    assert "| Naive    | ToySplit | task-aware | [0,1]" in md and "0.600 ± 0.141" in md and "-0.300 ± 0.141" in md
    assert "4 done, 0 failed, 0 not finished, of 4 planned" in md
    text = report["text"]  # the terminal's: aligned text, no markdown
    assert "Naive     ToySplit  task-aware  [0,1]" in text and "0.600 ± 0.141" in text
    assert not any(mark in text for mark in ("|", "![", "#", "`"))
    for name in ("report.md", "report.csv", "report.tex", "report_bars.png", "report_matrices.png"):
        assert (sweep / name).stat().st_size > 0


def test_over_averages_task_orders_too_and_rejects_unknown_keys(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "s", [
        ("Naive", 0, order, fake_results("Naive", 0, acc=acc, bwt=0.0), "done")
        for order, acc in zip(ORDERS, (0.4, 0.8))])
    report = sweep_report([sweep], over=["seed_everything", "data.init_args.task_order"], plots=False)
    (row,) = rows(report)
    assert row["n_done"] == "2" and float(row["acc_mean"]) == pytest.approx(0.6)
    with pytest.raises(DataError, match="not a grid key"):
        sweep_report([sweep], over=["data.init_args.seed"], plots=False)


def test_failed_and_unfinished_runs_are_reported_not_averaged(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "s", [
        ("Naive", 0, [0, 1], fake_results("Naive", 0, acc=0.5, bwt=0.0), "done"),
        ("Naive", 1, [0, 1], None, "failed"),
        ("Naive", 2, [0, 1], None, "pending"),
        ("GPM", 0, [0, 1], None, "failed"),
    ])
    report = sweep_report([sweep], plots=False)
    table = rows(report)
    assert (table[0]["n_done"], table[0]["n_runs"], float(table[0]["acc_mean"])) == ("1", "3", 0.5)
    assert (table[1]["strategy"], table[1]["n_done"], table[1]["acc_mean"]) == ("GPM", "0", "")
    md = report["markdown"]
    assert "1 done, 2 failed, 1 not finished, of 4 planned" in md
    assert "## Not finished" in md and "Naive-s1-o01" in md and "GPM-s0-o01" in md and "boom: bad lr" in md
    unfinished = {line.split()[0]: line for line in report["text"].split("Not finished (3):")[1].splitlines()[3:]}
    assert "failed" in unfinished["Naive-s1-o01"] and "boom: bad lr" in unfinished["Naive-s1-o01"]
    assert "pending" in unfinished["Naive-s2-o01"] and "not started" in unfinished["Naive-s2-o01"]


def test_shards_in_separate_directories_merge_and_stale_runs_are_ignored(tmp_path: Path) -> None:
    a = make_sweep(tmp_path / "a", [("Naive", 0, [0, 1], fake_results("Naive", 0, acc=0.2, bwt=0.0), "done"),
                                    ("Naive", 1, [0, 1], None, "pending")])
    b = make_sweep(tmp_path / "b", [("Naive", 0, [0, 1], None, "pending"),
                                    ("Naive", 1, [0, 1], fake_results("Naive", 1, acc=0.6, bwt=0.0), "done")])
    (a / "old-run").mkdir()  # a run of an older grid, not in sweep.json
    (a / "old-run" / "results.json").write_text(json.dumps(fake_results("Naive", 9, acc=0.0, bwt=0.0)))
    report = sweep_report([a, b], out=tmp_path / "merged", plots=False)
    (row,) = rows(report)
    assert (row["n_done"], row["n_runs"], float(row["acc_mean"])) == ("2", "2", pytest.approx(0.4))
    assert (tmp_path / "merged" / "report.md").is_file()


def test_every_row_says_whether_test_batches_carried_task_ids(tmp_path: Path) -> None:
    def res(strategy: str, seed: int, mode: str | None) -> dict[str, Any]:
        r = fake_results(strategy, seed, acc=0.5, bwt=0.0)
        if mode is None:
            r.pop("evaluation", None)
        else:
            r["evaluation"] = {"task_ids": mode == "task-aware", "mode": mode}
        return r

    sweep = make_sweep(tmp_path / "s", [
        ("TRGP", 0, [0, 1], res("TRGP", 0, "task-aware"), "done"),
        ("TRGP", 1, [0, 1], res("TRGP", 1, "task-aware"), "done"),
        ("GPM", 0, [0, 1], res("GPM", 0, "task-agnostic"), "done"),
        ("Naive", 0, [0, 1], res("Naive", 0, "task-agnostic"), "done"),
        ("Naive", 1, [0, 1], res("Naive", 1, "task-aware"), "done"),  # a row must not hide mixed modes
        ("EWC", 0, [0, 1], res("EWC", 0, None), "done"),  # written before results.json recorded it
    ])
    report = sweep_report([sweep], plots=False)
    assert [(r["strategy"], r["evaluation"]) for r in rows(report)] == [
        ("TRGP", "task-aware"), ("GPM", "task-agnostic"), ("Naive", "task-agnostic/task-aware"), ("EWC", "unknown")]
    head = report["markdown"].split("| strategy", 1)[1].splitlines()[0]
    assert "| evaluation" in head
    trgp = next(line for line in report["markdown"].splitlines() if line.startswith("| TRGP"))
    assert [c.strip() for c in trgp.split("|")[1:5]] == ["TRGP", "ToySplit", "task-aware", "2/2"]  # task_order does not vary


def test_mean_matrix_is_the_elementwise_mean() -> None:
    def run(m: list[list[float]]) -> SweepRun:
        return SweepRun("r", Path("."), {}, "done", fake_results("Naive", 0, 0.0, 0.0, matrix=m))

    group = Group({}, [run([[1.0, 0.0], [0.5, 1.0]]), run([[0.0, 0.0], [0.5, 0.0]])])
    assert np.allclose(mean_matrix(group), [[0.5, 0.0], [0.5, 0.5]])
    group.runs.append(run([[1.0]]))
    assert mean_matrix(group) is None  # sizes differ


def test_report_command_keeps_single_run_tables(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name, acc in (("r1", 0.25), ("r2", 0.75)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(fake_results("EWC", 0, acc=acc, bwt=-0.125)))
    main([str(tmp_path / "r1"), str(tmp_path / "r2"), "--per_run"])
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if str(tmp_path) in line]
    assert len(rows) == 2 and "0.250" in rows[0] and "0.750" in rows[1] and "-0.125" in rows[1]
    sweep = make_sweep(tmp_path / "s", [("Naive", 0, [0, 1], fake_results("Naive", 0, acc=0.5, bwt=0.0), "done")])
    with pytest.raises(DataError, match="not sweep directories"):
        main([str(sweep), str(tmp_path / "r1")])
    main([str(sweep), "--no_plots"])
    printed = capsys.readouterr().out
    assert printed.startswith("Sweep report\n") and "#" not in printed and not (sweep / "report_bars.png").exists()
    main([str(sweep), "--no_plots", "--markdown"])
    assert capsys.readouterr().out.startswith("# Sweep report")


def test_a_strategy_keeps_its_own_label_and_its_varying_init_args_get_columns(tmp_path: Path) -> None:
    """CUBER's label ("reconstruction") must show; init args that differ between grid values become columns."""
    def run(name: str, args: dict[str, Any], strategy: str | None) -> SweepRun:
        res = None if strategy is None else {"strategy": strategy, "scenario": "ToySplit"}
        params = {"model.class_path": f"strategies.{name}", **{f"model.init_args.{k}": v for k, v in args.items()}}
        return SweepRun(run_id=name, run_dir=tmp_path, labels={"model": name}, state="done" if res else "pending",
                        results=res, params=params, names={"strategy": name, "scenario": "ToySplit"})

    label = "CUBER (clkit reconstruction)"
    runs = [run("CUBER", {}, label), run("CUBER", {"eps_corr": 0.1}, label), run("GPM", {}, "GPM"),
            run("CUBER", {}, None)]
    columns, groups = group_runs(["model"], runs, [])
    assert columns == ["strategy", "scenario", "evaluation", "model.init_args.eps_corr"]
    assert [(g.labels["strategy"], g.labels["model.init_args.eps_corr"]) for g in groups] == [
        (label, "-"), (label, "0.1"), ("GPM", "-")]
    assert len(groups[0].runs) == 2  # a run without results yet joins its strategy's row


def test_plain_runs_are_averaged_over_seeds_with_a_column_per_differing_setting(tmp_path: Path) -> None:
    from clkit.cli.report import runs_report

    files = []
    for name, lam, seed, acc in (("a", 1.0, 0, 0.5), ("b", 1.0, 1, 0.7), ("c", 50.0, 0, 0.9)):
        res = fake_results("EWC", seed, acc=acc, bwt=0.0)
        res["config"] = {"seed_everything": seed, "model": {"class_path": "strategies.EWC",
                                                            "init_args": {"ewc_lambda": lam}},
                         "data": {"class_path": "scenarios.ToySplit", "init_args": {"seed": seed}},
                         "trainer": {"max_epochs": 1, "enable_progress_bar": seed == 0}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
        files.append(tmp_path / name / "results.json")
    report = runs_report(files)
    assert report["columns"] == ["strategy", "scenario", "evaluation", "model.init_args.ewc_lambda"]
    table = rows(report)
    assert [(r["ewc_lambda"], r["n_done"]) for r in table] == [("1.0", "2"), ("50.0", "1")]
    assert float(table[0]["acc_mean"]) == pytest.approx(0.6) and float(table[0]["acc_std"]) == pytest.approx(0.1414, 1e-3)
    assert "0.600 ± 0.141" in report["text"] and "task-aware" in report["text"]
