"""scripts/bench.py: its CPU path on a tiny stream, and its one-line refusal of --device cuda without a GPU (the
timings themselves are benchmarks, never tests)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_contestants_train_the_same_stream() -> None:
    b = bench()
    stream = b.PermutedTensors(n_experiences=2, n_train=256, n_test=128, batch_size=32)
    stream.setup()
    fast, slow = b.run_clkit(stream, 1, 0.05, 32), b.run_clkit(stream, 1, 0.05, 32, fast=False)
    assert fast == slow  # the fast path is bit-identical, so is the accuracy
    assert 0.0 <= b.run_hand(stream, 1, 0.05, 32) <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: --device cuda would run")
def test_device_cuda_without_a_gpu_is_a_one_line_error() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", "cuda", "--only", "core"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "no CUDA device" in done.stderr
    assert done.stdout == ""
