"""Launchers: the same sweep through local workers, submitit's local executor and a local Ray gives the same run
directories and byte-identical results.json apart from wall times; a killed sweep is finished by a rerun, losing
and duplicating nothing; a tune study runs through every launcher."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from clkit.cli.launchers import LocalLauncher, make_launcher
from clkit.cli.sweep import plan, run_sweep
from clkit.cli.sweep_plan import load_sweep
from clkit.cli.sweep_state import read_json
from clkit.errors import ConfigError
from tests.clkit.test_sweep import EWC, NAIVE, base, sweep_file

ROOT = Path(__file__).parents[2]
WALL = re.compile(rb'("(?:wall_seconds|train_seconds)": )[0-9.eE+-]+')
ENGINES = {"submitit": {"cluster": "local", "array_parallelism": 2, "threads": 1},
           "ray": {"num_cpus": 1, "threads": 1}}


def masked(path: Path) -> bytes:
    return WALL.sub(rb"\1_", path.read_bytes())


def toy(n_exp: int = 3, **data: Any) -> dict[str, Any]:
    b = base(n_exp)
    b["data"]["init_args"].update(val_fraction=0.25, **data)
    return b


def test_unknown_launchers_and_settings_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="launcher 'slurm' is not one of local, submitit, ray"):
        make_launcher("slurm", {}, tmp_path)
    with pytest.raises(ConfigError, match="launcher local: unknown setting.*partition; valid: workers, threads"):
        make_launcher("local", {"partition": "gpu"}, tmp_path)


@pytest.mark.slow
@pytest.mark.engines  # two worker processes, four submitit jobs, a local Ray (about two minutes)
def test_every_launcher_gives_the_same_runs_and_results(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, {"model": [NAIVE, EWC], "seed_everything": [0, 1]}, base=toy())
    dirs = {}
    for name, options in [("local", {"workers": 2, "threads": 1}), *ENGINES.items()]:
        spec = load_sweep(path, str(tmp_path / name))
        counts = run_sweep(spec, launcher=make_launcher(name, options, spec.sweep_dir))
        assert counts == {"done": 4, "failed": 0, "skipped": 0, "busy": 0}
        dirs[name] = spec.sweep_dir
    ids = sorted(p.parent.name for p in dirs["local"].glob("*/results.json"))
    assert len(ids) == 4
    for name, d in dirs.items():
        assert sorted(p.parent.name for p in d.glob("*/results.json")) == ids
        for run_id in ids:
            assert masked(d / run_id / "results.json") == masked(dirs["local"] / run_id / "results.json"), name
        index = read_json(d / "sweep.json")
        assert [(r["run_id"], r["status"], r["grid"]) for r in index["runs"]] == \
            [(r["run_id"], r["status"], r["grid"]) for r in read_json(dirs["local"] / "sweep.json")["runs"]]
        assert read_json(d / ids[0] / "status.json")["launcher"] == name


def _kill_mid_run(cmd: list[str], dirs: list[Path], cwd: Path) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        done = [d for d in dirs if (d / "results.json").exists()]
        cut = [d for d in dirs if (d / "checkpoints" / "exp0.pt").exists() and not (d / "checkpoints" / "exp2.pt")
               .exists()]
        if done and cut:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be killed mid-run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.engines  # a sweep process killed mid-run, then rerun, for submitit-local and Ray (3 minutes each)
@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_killed_sweep_is_finished_by_a_rerun(tmp_path: Path, engine: str) -> None:
    b = toy(n_exp=4, samples_per_class=512)
    # experiences of ~2 s on the fast training path: time to kill the sweep between two of them, and long enough
    # that a Ray worker left by the killed driver is stopped before it finishes the cut run (with 20 epochs the
    # orphan finished it in 2.5 s and nothing was left to resume)
    b["trainer"]["max_epochs"] = 100
    path = sweep_file(tmp_path, {"model": [NAIVE, EWC], "seed_everything": [0, 1]}, base=b)
    spec = load_sweep(path)
    runs = plan(spec)[0]
    dirs = [spec.sweep_dir / r.run_id for r in runs]
    flags = [f"--{k}={v}" for k, v in ENGINES[engine].items()]
    cmd = [sys.executable, "-m", "clkit.cli", "sweep", str(path), "--launcher", engine, *flags]
    _kill_mid_run(cmd, dirs, ROOT)
    before = {d: (d / "results.json").read_bytes() for d in dirs if (d / "results.json").exists()}
    rerun = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {d: (d / "results.json").read_bytes() for d in before} == before  # finished runs untouched
    assert sorted(p.name for p in spec.sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == \
        sorted(r.run_id for r in runs)
    for d in dirs:
        res = json.loads((d / "results.json").read_text())
        assert [p["experience"] for p in res["per_experience"]] == [0, 1, 2, 3]
    resumed = [d for d in dirs if read_json(d / "status.json")["resumed_from"] > 0]
    assert resumed or engine == "submitit"  # submitit's jobs outlive the killed sweep and may finish themselves
    fresh = load_sweep(path, str(tmp_path / "fresh"))
    run_sweep(fresh, launcher=LocalLauncher(0, threads=1))
    for d in dirs:  # every run ends as it would have without the kill
        assert masked(d / "results.json") == masked(fresh.sweep_dir / d.name / "results.json")


@pytest.mark.slow
@pytest.mark.engines  # a two-trial study through submitit-local and a local Ray (about two minutes)
def test_a_study_runs_through_every_launcher(tmp_path: Path) -> None:
    """One trial at a time everywhere: what the median pruner sees (which trials finished) is then the same."""
    from clkit.cli.tune import load_tune, run_tune

    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({"base": toy(), "search": {"model.init_args.optimizer.init_args.lr": [0.05, 0.2]},
                                    "tune": {"n_trials": 2, "sampler": "grid", "pruner": "median",
                                             "pruner_startup_trials": 1}}))
    chosen = {}
    serial = {"submitit": {**ENGINES["submitit"], "array_parallelism": 1}, "ray": ENGINES["ray"]}
    for name, options in [("local", {"workers": 0, "threads": 1}), *serial.items()]:
        spec, settings, dims = load_tune(path, str(tmp_path / name))
        summary = run_tune(spec, settings, dims, make_launcher(name, options, spec.sweep_dir))
        chosen[name] = [(t["params"], t["state"], t["value"]) for t in summary["trials"]]
        assert read_json(spec.sweep_dir / summary["selected"]["run_id"] / "status.json")["launcher"] == name
    assert chosen["submitit"] == chosen["local"] == chosen["ray"]
    assert [state for _, state, _ in chosen["local"]] == ["complete", "pruned"]  # pruned on every launcher
