"""Gradient projection under DDP: every rank ends each experience with the same CL memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import sys, torch, pytorch_lightning as pl
    from clkit.loop import StreamRun, trainer_factory
    from clkit.nets import MLP
    from scenarios.digits import PermutedDigits
    from strategies import CUBER, GPM, TRGP

    out, name = sys.argv[1], sys.argv[2]
    pl.seed_everything(0, verbose=False)
    cls = {"GPM": GPM, "TRGP": TRGP, "CUBER": CUBER}[name]
    strategy = cls(backbone=MLP(hidden=[32, 32], bias=False), threshold=0.95, rep_samples=100, optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}})
    stream = PermutedDigits(n_experiences=3, seed=0, val_fraction=0.0)
    make = trainer_factory(max_epochs=2, strategy="ddp", devices=2, accelerator="cpu")
    acc = StreamRun(strategy, stream, make).run().accuracy_matrix
    state = {"memory": strategy.memory_state(), "weights": strategy.state_dict(), "acc": acc}
    torch.save(state, f"{out}/rank{strategy.global_rank}.pt")
''')


@pytest.mark.slow
@pytest.mark.parametrize("name", ["GPM", "TRGP", "CUBER"])
def test_projection_memory_is_identical_on_every_rank(tmp_path: Path, name: str) -> None:
    script = tmp_path / "run_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, str(script), str(tmp_path), name], check=True, capture_output=True, env=env,
                   timeout=600, cwd=Path(__file__).resolve().parents[2])
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    bases0, bases1 = r0["memory"]["bases"], r1["memory"]["bases"]
    assert any(b.shape[1] > 0 for b in bases0)  # the memory is not trivially empty
    for b0, b1 in zip(bases0, bases1):
        assert torch.equal(b0, b1)
    for key in r0["weights"]:
        assert torch.equal(r0["weights"][key], r1["weights"][key]), key
    assert torch.equal(r0["acc"], r1["acc"])
