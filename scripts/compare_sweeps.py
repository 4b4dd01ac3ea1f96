"""Compare the results.json files of sweep directories byte for byte, wall times masked.

    python scripts/compare_sweeps.py SWEEP_DIR_A SWEEP_DIR_B [...]

Every run directory (by run id) must exist in every sweep directory and hold a results.json; the files must be equal
after the values of ``wall_seconds`` and ``train_seconds`` are replaced by ``_``. Prints one line per run and exits
with code 1 on any difference.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

WALL = re.compile(rb'("(?:wall_seconds|train_seconds)": )[0-9.eE+-]+')


def masked(path: Path) -> bytes:
    """The file's bytes with every wall time replaced by ``_``."""
    return WALL.sub(rb"\1_", path.read_bytes())


def compare(dirs: list[Path]) -> list[str]:
    """The differences (empty when every run's masked results.json is identical across ``dirs``)."""
    ids = [sorted(p.parent.name for p in d.glob("*/results.json")) for d in dirs]
    problems = [f"{d}: runs {sorted(set(ids[0]) ^ set(i))} differ from {dirs[0]}" for d, i in zip(dirs, ids)
                if i != ids[0]]
    for run_id in ids[0]:
        digests = [hashlib.sha256(masked(d / run_id / "results.json")).hexdigest()[:16] for d in dirs]
        same = len(set(digests)) == 1
        print(f"{'same' if same else 'DIFFERENT'}  {run_id}  {' '.join(digests)}")
        if not same:
            problems.append(f"{run_id}: masked results.json differ")
    return problems


if __name__ == "__main__":
    found = compare([Path(a) for a in sys.argv[1:]])
    print("\n".join(found) if found else "identical apart from wall times")
    sys.exit(1 if found else 0)
