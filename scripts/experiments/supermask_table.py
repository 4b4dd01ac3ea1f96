"""Markdown tables (mean ± std over seeds) from the JSON lines of ``supermask_density.py``.

    python scripts/experiments/supermask_table.py runs/density.jsonl [--tags final] [--by method density] [--pivot]

One row per group of runs (default: method, scenario, density, tag): test ACC, validation ACC, the per-task range
of the diagonal, the mean number of a task's classes that no input reaches through its masks, the weight epochs
kept (ExSSNeT), the seeds and the mean wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    m = statistics.mean(values) * scale
    s = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def table(rows: list[dict[str, Any]], by: list[str]) -> str:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(json.dumps(r.get(k), sort_keys=True) for k in by)].append(r)
    head = [*by, "test ACC %", "val ACC %", "min task %", "dead classes / task", "weight epochs kept", "seeds", "s / run"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rs in sorted(groups.items()):
        seeds = sorted(r["seed"] for r in rs)
        kept = [v["weight"] for r in rs for v in r.get("kept_epochs", {}).values()]
        dead = [d for r in rs for d in r.get("unreachable_classes", [])]
        cells = [*(json.loads(k) for k in key), mean_std([r["acc"] for r in rs]),
                 mean_std([r["val_acc"] for r in rs if r.get("val_acc") is not None]),
                 mean_std([min(r["diag"]) for r in rs]),
                 f"{statistics.mean(dead):.2f}" if dead else "–",
                 f"{statistics.mean(kept):.1f}" if kept else "–",
                 ",".join(str(s) for s in seeds), f"{statistics.mean(r['seconds'] for r in rs):.0f}"]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def pivot(rows: list[dict[str, Any]], by: list[str]) -> str:
    """Rows by ``by``, one column per density: test ACC mean ± std (validation ACC mean) and the seed count."""
    densities = sorted({r["density"] for r in rows})
    groups: dict[tuple[Any, ...], dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[tuple(str(r.get(k)) for k in by)][r["density"]].append(r)
    head = [*by, *(f"{100 * d:g} %: test (val) ACC %, seeds" for d in densities)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, cells in sorted(groups.items()):
        row = list(key)
        for d in densities:
            rs = cells.get(d, [])
            vals = [r["val_acc"] for r in rs if r.get("val_acc") is not None]
            val = f" ({100 * statistics.mean(vals):.1f})" if vals else ""
            row.append(f"{mean_std([r['acc'] for r in rs])}{val}, {len(rs)}" if rs else "–")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--tags", nargs="*", default=None)
    parser.add_argument("--by", nargs="+", default=["method", "scenario", "density", "tag"])
    parser.add_argument("--pivot", action="store_true", help="one column per density (rows: --by without density)")
    a = parser.parse_args()
    rows = [json.loads(line) for f in a.files for line in f.read_text().splitlines() if line.strip()]
    if a.tags is not None:
        rows = [r for r in rows if r.get("tag") in a.tags]
    print(pivot(rows, [k for k in a.by if k != "density"]) if a.pivot else table(rows, a.by))


if __name__ == "__main__":
    main()
