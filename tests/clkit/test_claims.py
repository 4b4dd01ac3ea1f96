"""Claims of sweep run directories: one owner, even when two processes race for a run whose holder died."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clkit.cli.sweep_state import LOCK, OWNER, RunClaim, claim_free, claim_owner, read_json, run_state

TRIALS = 300


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def _stale(run_dir: Path, pid: int) -> None:
    """What a holder killed mid-run leaves: the lock file and an owner file naming a dead process."""
    (run_dir / LOCK).touch()
    (run_dir / OWNER).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier"}))


def _contender(run_dir: str, trials: int, barrier: Any, out: Any, name: str) -> None:
    """Each trial: wait for the stale state, claim, write a work file while holding, check nobody touched it."""
    path = Path(run_dir)
    outcomes = []
    for _ in range(trials):
        barrier.wait()
        claim = RunClaim(path)
        won = claim.acquire()
        if won:
            (path / "work").write_text(name)
        barrier.wait()  # both have tried
        intact = None
        if won:
            owner = read_json(path / OWNER) or {}
            intact = (path / "work").read_text() == name and owner.get("pid") == os.getpid()
            (path / "work").unlink()
            claim.release()
        outcomes.append((won, intact))
        barrier.wait()  # released: the stale state of the next trial is laid
    out.put((name, outcomes))


@pytest.mark.slow  # two spawned processes, 300 synchronised trials (a few seconds)
def test_two_processes_racing_for_a_stale_claim_never_both_win(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_contender, args=(str(tmp_path), TRIALS, barrier, out, n)) for n in "ab"]
    for p in procs:
        p.start()
    dead = _dead_pid()
    for _ in range(TRIALS):
        _stale(tmp_path, dead)
        barrier.wait()  # go
        barrier.wait()  # both tried
        barrier.wait()  # both released
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=10)
    wins = [int(a[0]) + int(b[0]) for a, b in zip(results["a"], results["b"])]
    assert wins.count(1) == TRIALS, f"double claims: {wins.count(2)}, no claim: {wins.count(0)} of {TRIALS}"
    assert all(intact for won, intact in results["a"] + results["b"] if won)  # nobody's files were touched


def test_a_claim_blocks_while_its_holder_lives_and_frees_when_it_is_killed(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from clkit.cli.sweep_state import RunClaim; "
            "c = RunClaim(Path(sys.argv[1])); assert c.acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    assert not RunClaim(tmp_path).acquire() and not claim_free(tmp_path)
    assert claim_owner(tmp_path)["pid"] == holder.pid and run_state(tmp_path)[0] == "running"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / OWNER).exists()  # the killed holder left its owner file: a stale claim
    assert claim_owner(tmp_path) is None and run_state(tmp_path)[0] == "pending"
    claim = RunClaim(tmp_path)
    assert claim.acquire() and read_json(tmp_path / OWNER)["pid"] == os.getpid()
    assert not RunClaim(tmp_path).acquire()  # a second claimant, even in the same process, is refused
    claim.release()
    assert not (tmp_path / OWNER).exists() and claim_free(tmp_path)


def _holder(run_dir: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process claiming ``run_dir`` for ``seconds``, then leaving without finishing the run."""
    code = ("import sys, time; from pathlib import Path; from clkit.cli.sweep_state import RunClaim; "
            "c = RunClaim(Path(sys.argv[1])); assert c.acquire(); print('held', flush=True); "
            "time.sleep(float(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow  # holder processes and two sweeps (about 10 s)
def test_a_sweep_waits_for_a_run_held_elsewhere_and_runs_it_when_the_holder_stops(tmp_path: Path) -> None:
    from clkit.cli.sweep import plan, run_sweep
    from clkit.cli.sweep_plan import load_sweep
    from tests.clkit.test_sweep import sweep_file

    spec = load_sweep(sweep_file(tmp_path, {"seed_everything": [0, 1]}))
    held = spec.sweep_dir / plan(spec)[0][0].run_id
    holder = _holder(held, 60)
    assert run_sweep(spec, workers=0, wait=False) == {"done": 1, "failed": 0, "skipped": 0, "busy": 1}
    assert not (held / "results.json").exists()  # left to its holder
    holder.kill()
    holder.wait()
    holder = _holder(held, 3)  # a holder that stops (dies) without finishing the run
    assert run_sweep(spec, workers=0) == {"done": 1, "failed": 0, "skipped": 1, "busy": 0}
    assert holder.poll() is not None and (held / "results.json").exists()
