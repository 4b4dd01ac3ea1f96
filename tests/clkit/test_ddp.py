"""Multi-process training through Lightning's DDP on CPU (two processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scenarios.digits import SplitDigits


@pytest.mark.slow
def test_clkit_fit_under_ddp_with_two_cpu_processes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "clkit.cli", "fit", "--trainer.strategy", "ddp_find_unused_parameters_true",
           "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
           "--trainer.max_epochs", "2", "--run_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["metrics"]["acc"] > 0.8
    last = torch.load(tmp_path / "checkpoints" / "exp4.pt", weights_only=True)
    totals = last["matrices"]["test"]["total"][4]  # rank 0's own counts: every rank evaluates all test data
    assert totals.tolist() == [float(len(e.test)) for e in SplitDigits().experiences]


def test_the_loop_turns_on_find_unused_parameters_for_task_il_under_ddp() -> None:
    import pytorch_lightning as pl

    from clkit.loop import _ddp_for
    from scenarios.toy import ToySplit
    from strategies import Naive

    for setting, unused in (("task-il", True), ("class-il", False)):
        strategy = Naive()
        strategy.bind(ToySplit(setting=setting).spec)  # type: ignore[arg-type]
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
        assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is False
        _ddp_for(strategy, trainer)
        assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is unused, setting


@pytest.mark.slow
def test_task_il_joint_under_plain_ddp_needs_no_strategy_flag(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "clkit.cli", "fit", "--model", "Joint", "--data", "ToySplit", "--data.setting", "task-il",
           "--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
           "--trainer.max_epochs", "2", "--run_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=600, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["strategy"] == "Joint" and res["setting"] == "task-il" and len(res["per_experience"]) == 3
