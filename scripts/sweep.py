"""Run a sweep of clkit experiments; the same as ``clkit sweep`` (see ``docs/sweeps.md``).

    python scripts/sweep.py configs/sweeps/split_digits.yaml --workers 2 [--shard 0/4] [--sweep_dir DIR]
"""

from __future__ import annotations

import sys

from clkit.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
