"""Kill a sweep mid-run (SIGKILL, the sweep process only), run it again, and check that nothing was lost or run twice.

    python scripts/kill_and_rerun.py SWEEP.yaml SWEEP_DIR [sweep flags, e.g. --launcher ray --num_cpus 1]

The sweep is killed once a run has finished and another is past its first experience. The rerun must end with every
run done; runs finished before the kill must be untouched (same bytes); cut runs must have resumed from their
checkpoint; a run directory per planned run and nothing else. Prints the evidence; exit code 1 on a failure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path


def main(sweep: str, sweep_dir: str, flags: list[str]) -> int:
    out = Path(sweep_dir)
    cmd = [sys.executable, "-m", "clkit.cli", "sweep", sweep, "--sweep_dir", sweep_dir, *flags]
    proc = subprocess.Popen(cmd, stdout=open(f"{sweep_dir}.first.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = [d for d in out.glob("*-*") if d.is_dir()]
        done = [d for d in dirs if (d / "results.json").exists()]
        cut = [d for d in dirs if (d / "checkpoints" / "exp0.pt").exists() and not (d / "results.json").exists()]
        if done and cut:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        print("the sweep ended before it could be killed")
        return 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = {d.name: (d / "results.json").read_bytes() for d in out.glob("*/") if (d / "results.json").exists()}
    cut_at = sorted(d.name for d in out.glob("*/") if (d / "checkpoints").is_dir() and d.name not in killed_at)
    print(f"killed the sweep with {len(killed_at)} run(s) finished and {len(cut_at)} started: {cut_at}")
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    print(rerun.stdout.strip())
    index = json.loads((out / "sweep.json").read_text())
    problems = []
    if rerun.returncode != 0:
        problems.append(f"the rerun exited with {rerun.returncode}: {rerun.stderr.strip()[-300:]}")
    planned = sorted(r["run_id"] for r in index["runs"])
    present = sorted(d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith("."))
    if planned != present:
        problems.append(f"run directories {present} != planned {planned}")
    for run_id in planned:
        d = out / run_id
        if not (d / "results.json").exists():
            problems.append(f"{run_id}: lost (no results.json)")
            continue
        res = json.loads((d / "results.json").read_text())
        if [p["experience"] for p in res["per_experience"]] != list(range(res["n_experiences"])):
            problems.append(f"{run_id}: experiences {[p['experience'] for p in res['per_experience']]}")
        status = json.loads((d / "status.json").read_text())
        print(f"  {run_id}: attempt {status['attempt']}, resumed_from {status['resumed_from']}, "
              f"{'finished before the kill' if run_id in killed_at else 'finished after'}")
    for run_id, data in killed_at.items():
        if (out / run_id / "results.json").read_bytes() != data:
            problems.append(f"{run_id}: finished before the kill, rewritten by the rerun")
    print("\n".join(problems) if problems else "nothing lost, nothing run twice")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
