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
