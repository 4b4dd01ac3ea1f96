"""``clkit report RUN_DIR...``: a table of runs read from their ``results.json``."""

from __future__ import annotations

from pathlib import Path

from clkit.errors import DataError
from clkit.results import read_results

__all__ = ["main", "find_results", "format_runs"]

COLUMNS = ("acc", "bwt", "fwt", "forgetting")


def find_results(paths: list[str]) -> list[Path]:
    """Every ``results.json`` at or below the given paths, in path order."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == "results.json":
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("results.json")))
        else:
            raise DataError(f"{p} is neither a results.json nor a directory")
    if not found:
        raise DataError(f"no results.json under {', '.join(paths)}")
    return found


def format_runs(files: list[Path]) -> str:
    """A markdown table with one row per run."""
    head = ["run", "strategy", "scenario", "seed", *COLUMNS, "state MB", "wall s"]
    rows = []
    for f in files:
        r = read_results(f)
        m = r["metrics"]
        rows.append([str(f.parent), r["strategy"], r["scenario"], str(r["seed"]),
                     *(f"{m[c]:+.4f}" if c in ("bwt", "fwt") else f"{m[c]:.4f}" for c in COLUMNS),
                     f"{r['strategy_state_bytes'] / 2**20:.3f}", f"{r['wall_seconds']:.1f}"])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    lines = [fmt.format(*head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def main(args: list[str]) -> None:
    if not args:
        raise DataError("usage: clkit report RUN_DIR [RUN_DIR ...]")
    print(format_runs(find_results(args)))
