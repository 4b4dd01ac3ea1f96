"""``clkit fit`` end to end: outputs, determinism, resume after a crash or a kill, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clkit.cli import main
from clkit.metrics import stream_metrics
from clkit.results import RESULT_KEYS

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "2"]
PERMUTED = ["--data", "scenarios.PermutedDigits", "--data.init_args.n_experiences", "3", *QUIET]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_default_fit_writes_the_results_contract(tmp_path: Path) -> None:
    main(["fit", "--run_dir", str(tmp_path), *QUIET])
    res = _results(tmp_path)
    assert set(RESULT_KEYS) <= set(res)
    acc = torch.tensor(res["accuracy_matrix"])
    t = res["n_experiences"]
    assert acc.shape == (t, t) and ((acc >= 0) & (acc <= 1)).all()
    recomputed = stream_metrics(acc, torch.tensor(res["random_init_accuracy"]))
    assert res["metrics"] == pytest.approx(recomputed, abs=1e-5)
    assert res["strategy"] == "Naive" and res["scenario"] == "SplitDigits" and res["setting"] == "task-il"
    assert res["config"]["data"]["init_args"]["seed"] == res["seed"] == 0  # ${seed_everything} resolved
    assert len(res["per_experience"]) == t and all(p["epochs"] == 2 for p in res["per_experience"])
    for name in ("accuracy_matrix.png", "metrics.csv", "config.yaml", f"checkpoints/exp{t - 1}.pt"):
        assert (tmp_path / name).is_file(), name
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "stream/acc" in header and "exp0/acc" in header
    ckpt = torch.load(tmp_path / f"checkpoints/exp{t - 1}.pt", weights_only=True)
    assert ckpt["experience"] == t - 1


def test_seed_override_reaches_interpolated_keys(tmp_path: Path) -> None:
    main(["fit", "--run_dir", str(tmp_path / "a"), "--seed_everything", "3", *QUIET])  # default: seed: ${seed_everything}
    main(["fit", "--run_dir", str(tmp_path / "b"), "--seed_everything", "3", *QUIET])
    a, b = _results(tmp_path / "a"), _results(tmp_path / "b")
    assert a["config"]["data"]["init_args"]["seed"] == 3
    assert a["accuracy_matrix"] == b["accuracy_matrix"]


def test_resume_after_crash_gives_the_uninterrupted_matrix(tmp_path: Path) -> None:
    main(["fit", "--run_dir", str(tmp_path / "full"), *PERMUTED])
    crash = ["--trainer.callbacks+=tests.clkit.helpers.CrashAt", "--trainer.callbacks.experience", "2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", "--run_dir", str(tmp_path / "cut"), *PERMUTED, *crash])
    assert not (tmp_path / "cut" / "results.json").exists()
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["exp0.pt", "exp1.pt"]
    main(["fit", "--resume", str(tmp_path / "cut"), *PERMUTED, *crash[:1], "--trainer.callbacks.experience", "99"])
    full, resumed = _results(tmp_path / "full"), _results(tmp_path / "cut")
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["random_init_accuracy"] == full["random_init_accuracy"]


def test_resume_refuses_a_different_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["fit", "--run_dir", str(tmp_path), *PERMUTED])
    (tmp_path / "results.json").unlink()  # as if it had been cut after its last checkpoint
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--resume", str(tmp_path), *PERMUTED, "--model.init_args.seed", "5"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "differs" in err and "model.init_args.seed: None -> 5" in err, err


def test_a_run_directory_is_not_reused_without_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run into a finished run's directory would mix checkpoints; --resume would then load the old ones."""
    main(["fit", "--run_dir", str(tmp_path), *PERMUTED])
    before = (tmp_path / "results.json").read_bytes(), (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--run_dir", str(tmp_path), *PERMUTED, "--model", "strategies.EWC"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "already holds a run" in err and f"--resume {tmp_path}" in err, err
    assert ((tmp_path / "results.json").read_bytes(), (tmp_path / "config.yaml").read_bytes()) == before


def test_odd_run_directories_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["fit", "--run_dir", str(tmp_path / "run"), *PERMUTED])
    (tmp_path / "file").write_text("")
    cases = [(["--resume", str(tmp_path / "run")], "has finished"),  # a finished run is left alone
             (["--run_dir", str(tmp_path / "file")], "is a file")]
    for args, needle in cases:
        with pytest.raises(SystemExit) as exc:
            main(["fit", *args, *PERMUTED])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exc.value.code == 2 and needle in err, err
    stray = tmp_path / "other"
    (stray / "checkpoints").mkdir(parents=True)
    (stray / "checkpoints" / "exp_old.pt").write_text("not ours")  # not an experience checkpoint: ignored
    assert (main(["fit", "--run_dir", str(stray), *PERMUTED]) is None) and (stray / "results.json").is_file()


@pytest.mark.parametrize("args, needle", [
    (["--model", "strategies.Nope"], "Nope"),
    (["--model", "GPMM"], "valid strategies: AGEM, CUBER, DER, ER, EWC,"),
    (["--data", "SplitDigit"], "SplitDigits"),
    (["--model.init_args.nope", "1"], "nope"),
    (["--model.init_args.nope", "1"], "valid arguments of Naive: backbone, optimizer, lr_scheduler, seed"),
    (["--trainer.bogus_key", "7"], "max_epochs"),
    (["--trainer.max_epoch", "1"], "unrecognized arguments: --trainer.max_epoch"),  # no silent abbreviations
    (["--optimizer", "adamw"], "adamw"),
    (["--data.init_args.n_experiences", "3"], "n_experiences=3 does not divide"),
    (["--model", "tests.clkit.helpers.TaskILOnly", "--data", "scenarios.PermutedDigits"], "domain-il"),
    (["--config", "/nonexistent/cfg.yaml"], "does not exist"),
    (["--data", "scenarios.PermutedDigits", "--optimizer.lr", "1e9"], "loss is"),
])
def test_bad_configs_give_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   args: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--run_dir", str(tmp_path), *QUIET, *args])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and err.startswith("clkit: error:") and needle in err, err


def test_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {class_path: strategies.Naive\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cfg)])
    assert exc.value.code == 2 and "clkit: error:" in capsys.readouterr().err


@pytest.mark.slow  # three CLI processes, one killed: an integration check (~60 s under load)
def test_killed_process_resumes(tmp_path: Path) -> None:
    """A real SIGKILL after the first checkpoint; --resume finishes with the uninterrupted matrix."""
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "clkit.cli", "fit", *PERMUTED, "--trainer.max_epochs", "30"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*args, "--run_dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "exp0.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "exp0.pt").exists() and not (run / "results.json").exists()
    subprocess.run([*args, "--resume", str(run)], check=True, capture_output=True, env=env)
    subprocess.run([*args, "--run_dir", str(tmp_path / "full")], check=True, capture_output=True, env=env)
    assert _results(run)["accuracy_matrix"] == _results(tmp_path / "full")["accuracy_matrix"]
    resumed, full = _csv_rows(run), _csv_rows(tmp_path / "full")  # the log keeps experience 0's rows, once
    assert [r["experience"] for r in resumed] == [r["experience"] for r in full]
    assert [r["stream/acc"] for r in resumed] == [r["stream/acc"] for r in full]


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_nan_loss_stops_and_keeps_completed_experiences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--run_dir", str(tmp_path), *PERMUTED, "--model", "tests.clkit.helpers.NaNAt"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "loss is nan at experience 1" in err and "--resume" in err, err
    partial = json.loads((tmp_path / "results.partial.json").read_text())
    assert partial["completed_experiences"] == 1 and len(partial["accuracy_matrix_rows"]) == 1
    assert (tmp_path / "checkpoints" / "exp0.pt").is_file() and not (tmp_path / "results.json").exists()


def test_redirected_output_is_one_line_per_experience(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["fit", "--run_dir", str(tmp_path), *PERMUTED[:4], "--trainer.max_epochs", "2"])  # bar on by default
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.startswith("[clkit] experience")]
    assert len(lines) == len(_results(tmp_path)["accuracy_matrix"])
    assert "epoch 0" not in out.out + out.err and len(out.out + out.err) < 5000


@pytest.mark.parametrize("model", ["strategies.Naive", "strategies.GPM"])
def test_an_injected_optimizer_and_scheduler_drive_training(model: str, tmp_path: Path) -> None:
    log = tmp_path / "opt.txt"
    main(["fit", "--run_dir", str(tmp_path / "run"), "--model", model, "--optimizer", "torch.optim.AdamW",
          "--optimizer.lr", "0.001", "--lr_scheduler", "torch.optim.lr_scheduler.StepLR",
          "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5",
          "--trainer.callbacks+=tests.clkit.helpers.RecordOptimizer", "--trainer.callbacks.path", str(log),
          "--data.init_args.n_experiences", "2", *QUIET])
    rows = [line.split() for line in log.read_text().splitlines()]
    # a fresh AdamW and scheduler per experience: the lr restarts at 0.001 and halves after each epoch
    assert rows == [[e, ep, "AdamW", lr] for e in ("0", "1") for ep, lr in (("0", "0.001"), ("1", "0.0005"))]
    described = _results(tmp_path / "run")["config"]["model"]["init_args"]["optimizer"]
    assert described["class_path"].endswith("AdamW") and described["init_args"]["lr"] == 0.001
