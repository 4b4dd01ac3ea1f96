"""Loggers and callbacks that understand experiences (``clkit fit`` with TensorBoard, CSV, W&B offline,
EarlyStopping and ModelCheckpoint)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from clkit.cli import main

TOY = ["--data", "scenarios.ToySplit", "--data.n_experiences", "3", "--data.val_fraction", "0.2"]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_tensorboard_csv_and_early_stopping_with_redirected_output(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    main(["fit", *TOY, "--run_dir", str(run), "--trainer.max_epochs", "8",
          "--trainer.logger+=TensorBoardLogger", "--trainer.logger+=CSVLogger",
          "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/acc",
          "--trainer.callbacks.mode=max", "--trainer.callbacks.patience=1"])
    err = capsys.readouterr().err.splitlines()
    # redirected output (pytest captures it): one line per experience, no progress bar redraws
    assert [line.split(":")[0] for line in err if line.strip()] == [f"[clkit] experience {i}/3 (classes {2 * i - 2},"
                                                                     f"{2 * i - 1})" for i in (1, 2, 3)]
    assert not any("it/s" in line or "\r" in line for line in err)
    # EarlyStopping restarts with every experience: each one stops early, none after a single epoch
    epochs = [p["epochs"] for p in _results(run)["per_experience"]]
    assert all(2 <= e < 8 for e in epochs), epochs
    # metrics.csv in run_dir, whatever else is configured, with its experience column
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["experience"] for r in rows} == {"0", "1", "2"}
    assert any(r.get("stream/acc") for r in rows) and any(r.get("train/loss") for r in rows)
    # event files under run_dir; steps increase across experiences; every stream scalar and the matrix figure
    events = sorted(run.rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "val/acc", "exp0/acc", "exp2/acc", "stream/acc", "stream/bwt", "experience"):
        assert tag in tags["scalars"], tag
    assert "stream/accuracy_matrix" in tags["images"] and "hp_metric" not in tags["scalars"]
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and len(steps) == sum(epochs)
    experience_of_step = {e.step: e.value for e in acc.Scalars("experience")}
    assert [experience_of_step[s] for s in steps] == sorted(experience_of_step[s] for s in steps)
    assert [e.step for e in acc.Scalars("stream/acc")] == sorted(e.step for e in acc.Scalars("stream/acc"))
    # the user's CSVLogger also gets the stream scalars (every configured logger does, not only the first)
    user_csv = [p for p in run.rglob("metrics.csv") if p.parent != run]
    assert len(user_csv) == 1 and "stream/acc" in user_csv[0].read_text().splitlines()[0]


def test_loggers_without_a_save_dir_write_under_run_dir_from_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: strategies.Naive\ndata: {class_path: scenarios.ToySplit, init_args: {n_experiences: 2}}\n"
                   "trainer:\n  max_epochs: 1\n  enable_progress_bar: false\n  logger:\n"
                   "    - class_path: TensorBoardLogger\n    - {class_path: CSVLogger, init_args: {name: mine}}\n")
    run = tmp_path / "run"
    main(["fit", "--config", str(cfg), "--run_dir", str(run)])
    assert len(list(run.rglob("events.out.tfevents.*"))) == 1
    assert (run / "mine").is_dir() and (run / "metrics.csv").is_file()
    recorded = (run / "config.yaml").read_text()
    assert "<run_dir>" not in recorded and f"save_dir: {run}" in recorded


def test_a_logger_with_its_own_save_dir_keeps_it(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "tb"
    main(["fit", *TOY, "--run_dir", str(run), "--trainer.max_epochs", "1", "--trainer.logger", "TensorBoardLogger",
          "--trainer.logger.save_dir", str(elsewhere)])
    assert len(list(elsewhere.rglob("events.out.tfevents.*"))) == 1
    assert not list(run.rglob("events.out.tfevents.*")) and (run / "metrics.csv").is_file()


def test_model_checkpoint_writes_a_folder_per_experience(tmp_path: Path) -> None:
    run = tmp_path / "run"
    main(["fit", *TOY, "--run_dir", str(run), "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=val/acc",
          "--trainer.callbacks.mode=max"])
    for i in range(3):
        files = list((run / "checkpoints" / f"exp{i}").glob("*.ckpt"))
        assert files and all(f.name.startswith(f"exp{i}-epoch=") for f in files), files
        assert (run / "checkpoints" / f"exp{i}.pt").is_file()  # clkit's own experience checkpoints are untouched
    assert not list((run / "checkpoints").glob("*.ckpt"))


def test_wandb_offline_holds_the_config_the_stream_scalars_and_the_matrix(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    main(["fit", *TOY, "--run_dir", str(run), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.logger", "WandbLogger", "--trainer.logger.offline", "true"])
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"model/class_path", b"data/init_args/n_experiences", b"seed_everything", b"stream/acc",
                b"exp2/acc", b"train/loss"):
        assert key in record, key
    images = list((runs[0] / "files" / "media" / "images" / "stream").glob("accuracy_matrix_*.png"))
    assert len(images) == 3  # the matrix figure after each experience


def test_user_callbacks_do_not_turn_the_progress_bars_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["fit", *TOY, "--run_dir", str(tmp_path / "run"), "--trainer.max_epochs", "2",
          "--trainer.callbacks+=LearningRateMonitor"])
    err = capsys.readouterr().err
    assert len(err) < 2000 and "Epoch 0" not in err and "Testing" not in err
