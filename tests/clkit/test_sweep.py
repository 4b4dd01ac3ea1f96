"""``clkit sweep``: grid expansion, run ids, resumability (interrupt, kill), failures, parallel workers, sharding."""

from __future__ import annotations

import csv
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import yaml

from clkit.cli.fit import run_fit
from clkit.cli.report import sweep_report
from clkit.cli.sweep import main as sweep_main
from clkit.cli.sweep import parse_shard, plan, run_sweep
from clkit.cli.sweep_plan import expand, load_sweep, merge_value
from clkit.cli.sweep_state import OWNER, read_json
from clkit.errors import ClkitError, ConfigError

SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}
NAIVE = {"class_path": "strategies.Naive", "init_args": {"optimizer": SGD}}
EWC = {"class_path": "strategies.EWC", "init_args": {"optimizer": SGD, "ewc_lambda": 10.0, "fisher_samples": 64}}


def base(n_exp: int = 3) -> dict[str, Any]:
    return {"seed_everything": 0, "model": NAIVE,
            "data": {"class_path": "scenarios.ToySplit",
                     "init_args": {"n_experiences": n_exp, "classes_per_experience": 2, "setting": "task-il",
                                   "seed": "${seed_everything}", "val_fraction": 0.0}},
            "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_model_summary": False}}


def sweep_file(tmp_path: Path, grid: dict[str, list[Any]], name: str = "sweep", **extra: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": extra.pop("base", base()), "grid": grid,
                                    "sweep_dir": str(tmp_path / name), **extra}))
    return path


class InterruptAt(pl.Callback):
    """Raises KeyboardInterrupt (Ctrl-C) when training starts on ``experience`` while the file ``flag`` exists."""

    def __init__(self, flag: str, experience: int) -> None:
        self.flag, self.experience = flag, experience

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if Path(self.flag).exists() and pl_module.current_experience.index == self.experience:
            raise KeyboardInterrupt


# -- planning ---------------------------------------------------------------------------------------------------------
def test_grid_is_the_cross_product_with_resolved_interpolations(tmp_path: Path) -> None:
    spec = load_sweep(sweep_file(tmp_path, {"model": [NAIVE, EWC], "seed_everything": [0, 1, 2]}))
    runs = expand(spec)
    assert [(r.labels["model"], r.grid["seed_everything"]) for r in runs] == [
        (m, s) for m in ("Naive", "EWC") for s in (0, 1, 2)]
    for r in runs:
        assert r.config["data"]["init_args"]["seed"] == r.config["seed_everything"] == r.grid["seed_everything"]
        assert r.config["trainer"]["enable_progress_bar"] is False  # sweep default, base did not set it
    assert len({r.run_id for r in runs}) == 6
    assert [r.run_id for r in runs] == [r.run_id for r in expand(load_sweep(spec.path))]  # stable
    assert runs[0].run_id.startswith("Naive-ToySplit-s0-") and runs[5].run_id.startswith("EWC-ToySplit-s2-")


def test_a_different_class_replaces_init_args_and_the_same_class_merges() -> None:
    node = {"class_path": "strategies.EWC", "init_args": {"ewc_lambda": 5.0, "lr": 0.1}}
    assert merge_value(node, {"class_path": "strategies.Naive"}) == {"class_path": "strategies.Naive"}
    assert merge_value(node, "strategies.Naive") == {"class_path": "strategies.Naive"}
    same = merge_value(node, {"class_path": "strategies.EWC", "init_args": {"ewc_lambda": 7.0}})
    assert same == {"class_path": "strategies.EWC", "init_args": {"ewc_lambda": 7.0, "lr": 0.1}}
    assert node["init_args"]["ewc_lambda"] == 5.0  # inputs untouched


def test_deeper_keys_apply_after_the_class_they_refine(tmp_path: Path) -> None:
    b = base()
    b["model"] = {"class_path": "strategies.EWC", "init_args": {"ewc_lambda": 5.0}}
    spec = load_sweep(sweep_file(tmp_path, {"model.init_args.lr": [0.3], "model": ["strategies.Naive", EWC]}, base=b))
    naive, ewc = (r.config["model"] for r in expand(spec))
    assert naive == {"class_path": "strategies.Naive", "init_args": {"lr": 0.3}}  # no ewc_lambda leaked
    assert ewc["init_args"] == {**EWC["init_args"], "lr": 0.3}


@pytest.mark.parametrize(("content", "message"), [
    ({"grid": {"seed_everything": [0]}, "sweepdir": "x"}, "unknown key"),
    ({"grid": {"seed_everything": 3}}, "grid.seed_everything must be a non-empty list"),
    ({"grid": {"modle.init_args.lr": [0.1]}}, "'modle' is not a section"),
    ({"grid": {"model..lr": [0.1]}}, "is not a dotted key"),
    ({"grid": {"seed_everything": [1, 1]}}, "give the same run config"),
    ({"base": "no/such.yaml", "grid": {}}, "no such file 'no/such.yaml'"),
    ({"grid": {"trainer.max_epochs": ["${nope}"]}}, "cannot resolve"),
])
def test_bad_sweep_files_name_the_bad_key(tmp_path: Path, content: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        expand(load_sweep(path))


def test_shards_partition_the_runs(tmp_path: Path) -> None:
    spec = load_sweep(sweep_file(tmp_path, {"model": [NAIVE, EWC], "seed_everything": [0, 1, 2]}))
    every = [r.run_id for r in plan(spec)[0]]
    parts = [[r.run_id for r in plan(spec, (i, 4))[1]] for i in range(4)]
    assert sorted(i for part in parts for i in part) == sorted(every) and all(parts)
    with pytest.raises(ConfigError, match="0 <= i < n"):
        parse_shard("4/4")


# -- running ----------------------------------------------------------------------------------------------------------
def test_sweep_table_equals_the_run_files_and_a_rerun_skips_everything(tmp_path: Path) -> None:
    spec = load_sweep(sweep_file(tmp_path, {"model": [NAIVE, EWC], "seed_everything": [0, 1]}))
    assert run_sweep(spec, workers=0)["done"] == 4
    index = read_json(spec.sweep_dir / "sweep.json")
    assert index["counts"]["done"] == 4 and len(index["runs"]) == 4
    results = {}
    for entry in index["runs"]:
        res = json.loads((spec.sweep_dir / entry["run_id"] / "results.json").read_text())
        assert res["strategy"] == entry["labels"]["model"] and res["seed"] == entry["grid"]["seed_everything"]
        results.setdefault(res["strategy"], []).append(res)
    report = sweep_report([spec.sweep_dir])
    rows = {r["strategy"]: r for r in csv.DictReader(report["csv"].splitlines())}
    assert set(rows) == {"Naive", "EWC"}
    for strategy, runs in results.items():
        row = rows[strategy]
        assert row["n_done"] == "2" and row["scenario"] == "ToySplit"
        for column, read in [("acc", lambda r: r["metrics"]["acc"]), ("bwt", lambda r: r["metrics"]["bwt"]),
                             ("forgetting", lambda r: r["metrics"]["forgetting"]),
                             ("wall_s", lambda r: r["wall_seconds"]),
                             ("state_mb", lambda r: r["strategy_state_bytes"] / 2**20)]:
            values = [read(r) for r in runs]
            assert float(row[f"{column}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert float(row[f"{column}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert all(f.is_file() and f.stat().st_size > 0 for f in report["files"])
    stamps = {p: p.stat().st_mtime_ns for p in spec.sweep_dir.glob("*/results.json")}
    assert run_sweep(spec, workers=0) == {"done": 0, "failed": 0, "skipped": 4, "busy": 0}
    assert {p: p.stat().st_mtime_ns for p in spec.sweep_dir.glob("*/results.json")} == stamps


def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    crash = [{"class_path": "tests.clkit.helpers.CrashAt", "init_args": {"experience": 1}}]
    path = sweep_file(tmp_path, {"trainer.callbacks": [crash, []], "seed_everything": [0]})
    with pytest.raises(ClkitError, match=r"1 run\(s\) failed"):
        sweep_main([str(path), "--workers", "0"])
    spec = load_sweep(path)
    index = read_json(spec.sweep_dir / "sweep.json")
    failed, done = index["runs"]
    assert failed["status"] == "failed" and "simulated crash at experience 1" in failed["error"]
    assert done["status"] == "done"
    report = sweep_report([spec.sweep_dir], plots=False)["markdown"]
    assert "## Not finished" in report and failed["run_id"] in report and "simulated crash" in report
    assert "1 done, 1 failed" in report
    assert run_sweep(spec, workers=0, skip_failed=True)["skipped"] == 2
    assert run_sweep(spec, workers=0)["failed"] == 1  # retried by default: resumes after experience 0, fails again
    status = read_json(spec.sweep_dir / failed["run_id"] / "status.json")
    assert status["attempt"] == 2 and status["resumed_from"] == 1
    assert "[1/2] failed" in capsys.readouterr().out


def _matrix(run_dir: Path) -> list[list[float]]:
    return json.loads((run_dir / "results.json").read_text())["accuracy_matrix"]


def test_an_interrupted_sweep_resumes_the_cut_run(tmp_path: Path, sigint_restored: None) -> None:
    flag = tmp_path / "interrupt"
    flag.touch()
    cb = [{"class_path": "tests.clkit.test_sweep.InterruptAt", "init_args": {"flag": str(flag), "experience": 2}}]
    spec = load_sweep(sweep_file(tmp_path, {"seed_everything": [0, 1]}, overrides={"trainer.callbacks": cb}))
    with pytest.raises(SystemExit):  # Ctrl-C inside the first run stops the sweep
        run_sweep(spec, workers=0)
    first, second = plan(spec)[0]
    cut = spec.sweep_dir / first.run_id
    assert read_json(cut / "status.json")["status"] == "running" and not (cut / "results.json").exists()
    assert not (spec.sweep_dir / second.run_id).exists()
    flag.unlink()
    assert run_sweep(spec, workers=0)["done"] == 2
    status = read_json(cut / "status.json")
    assert status["attempt"] == 2 and status["resumed_from"] == 2
    res = json.loads((cut / "results.json").read_text())
    assert [p["experience"] for p in res["per_experience"]] == [0, 1, 2]
    fresh = run_fit(["--config", str(cut / "run.yaml"), "--run_dir", str(tmp_path / "fresh")])
    assert _matrix(cut) == _matrix(fresh)  # the resumed run ends as an uninterrupted one


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow  # spawns 2 worker processes (~10 s of imports each) and kills the sweep mid-run
def test_a_killed_parallel_sweep_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    b = base(n_exp=4)
    b["data"]["init_args"]["samples_per_class"] = 1024
    b["trainer"]["max_epochs"] = 25  # experiences of ~1 s: a worker notices the killed sweep (0.25 s poll) mid-run
    path = sweep_file(tmp_path, {"model": [NAIVE, EWC], "seed_everything": [0, 1]}, base=b)
    spec = load_sweep(path)
    runs = plan(spec)[0]
    dirs = [spec.sweep_dir / r.run_id for r in runs]
    proc = subprocess.Popen([sys.executable, "-m", "clkit.cli", "sweep", str(path), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        done = [d for d in dirs if (d / "results.json").exists()]
        # a run past its first experience with at least two still to go (a run that is merely "unfinished" when
        # the first one ends is usually its twin, about to end too: both workers started together)
        ckpt = [d / "checkpoints" for d in dirs]
        cut = [c.parent for c in ckpt if (c / "exp0.pt").exists() and not (c / "exp2.pt").exists()]
        if done and cut:
            break
        time.sleep(0.02)
    assert proc.poll() is None and done and cut, "the sweep ended before it could be killed mid-run"
    locks = [read_json(d / OWNER) for d in dirs if (d / OWNER).exists()]  # every busy worker, cut run or not
    workers = [lock["pid"] for lock in locks if lock is not None]
    proc.send_signal(signal.SIGKILL)  # the sweep process only: its workers must notice and stop by themselves
    proc.wait()
    for pid in workers:
        for _ in range(100):
            if not _running(pid):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker {pid} outlived the killed sweep")
    done = [d for d in dirs if (d / "results.json").exists()]  # the state the kill left
    cut = [d for d in dirs if (d / "checkpoints" / "exp0.pt").exists() and not (d / "results.json").exists()]
    assert cut, "every cut run finished before its worker stopped"
    stamps = {d: (d / "results.json").read_bytes() for d in done}
    counts = run_sweep(spec, workers=0)
    assert counts["skipped"] == len(done) and counts["done"] == 4 - len(done) and counts["failed"] == 0
    assert {d: (d / "results.json").read_bytes() for d in done} == stamps  # finished runs untouched
    assert sorted(p.name for p in spec.sweep_dir.iterdir() if p.is_dir()) == sorted(r.run_id for r in runs)
    for d in dirs:
        res = json.loads((d / "results.json").read_text())
        assert [p["experience"] for p in res["per_experience"]] == [0, 1, 2, 3]
    for d in cut:
        assert read_json(d / "status.json")["resumed_from"] >= 1
    fresh = run_fit(["--config", str(cut[0] / "run.yaml"), "--run_dir", str(tmp_path / "fresh")])
    assert _matrix(cut[0]) == _matrix(fresh)
    index = read_json(spec.sweep_dir / "sweep.json")
    assert index["counts"]["done"] == 4 and len(index["runs"]) == 4


def test_grid_labels_name_a_class_alike_in_both_forms() -> None:
    from clkit.cli.sweep_plan import value_label

    assert value_label("strategies.GPM") == value_label({"class_path": "strategies.GPM"}) == "GPM"
    assert value_label("scenarios.classic.SplitMNIST") == "SplitMNIST"
    assert value_label("task-il") == "task-il" and value_label("a.b") == "a.b"  # plain strings stay


def test_command_line_overrides_reach_every_run_and_a_swept_key_is_refused(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    from clkit.cli.sweep_plan import parse_overrides

    assert parse_overrides(["x.yaml", "--trainer.max_epochs", "2", "--model.init_args.lr=0.5", "--workers", "0"]) == (
        {"trainer.max_epochs": 2, "model.init_args.lr": 0.5}, ["x.yaml", "--workers", "0"])
    path = sweep_file(tmp_path, {"model": [NAIVE, EWC], "seed_everything": [0]})
    plain = {r.run_id for r in plan(load_sweep(path))[0]}
    spec = load_sweep(path)
    spec.override({"trainer.max_epochs": 2})
    runs = plan(spec)[0]
    assert all(r.config["trainer"]["max_epochs"] == 2 for r in runs) and not plain & {r.run_id for r in runs}
    sweep_main([str(path), "--trainer.max_epochs", "2", "--dry_run"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[1:]] == [r.run_id for r in runs]
    assert out[1].endswith("model=Naive seed_everything=0") and "{" not in out[1]  # readable, not a dict repr
    with pytest.raises(ConfigError, match="the grid sweeps seed_everything"):
        sweep_main([str(path), "--seed_everything", "3"])
    with pytest.raises(ConfigError, match="needs a value"):
        sweep_main([str(path), "--trainer.max_epochs"])


def test_a_dry_run_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, {"seed_everything": list(range(400))})
    proc = subprocess.run(f"{sys.executable} -m clkit.cli sweep {path} --dry_run | head -2", shell=True,
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0 and proc.stderr == "" and len(proc.stdout.splitlines()) == 2
