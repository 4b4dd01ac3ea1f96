"""``clkit report``: a table of single runs, or the aggregated report of one or more sweep directories.

- ``clkit report RUN_DIR...``: one row per ``results.json`` found.
- ``clkit report SWEEP_DIR... [--out DIR] [--over KEY] [--no_plots]``: mean ± std over seeds of acc, bwt, fwt,
  forgetting, wall time and strategy memory, grouped by strategy, scenario and every other swept key; printed and
  written as ``report.md`` and ``report.csv`` with ``report_bars.png`` (acc and bwt with error bars) and
  ``report_matrices.png`` (mean accuracy matrices). Several sweep directories (e.g. shards copied from machines
  without a shared disk, or one sweep per scenario) are merged.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Any

from clkit.cli.aggregate import (
    METRICS,
    Group,
    SweepRun,
    collect,
    column_names,
    evaluation_mode,
    group_runs,
    is_sweep_dir,
    read_run,
    seed_keys,
)
from clkit.cli.sweep_state import write_text_atomic
from clkit.errors import ConfigError, DataError

__all__ = ["SweepReport", "find_results", "format_runs", "main", "sweep_report"]

COLUMNS = ("acc", "bwt", "fwt", "forgetting")
HEADERS = {"acc": "acc", "bwt": "bwt", "fwt": "fwt", "forgetting": "forgetting", "wall_s": "wall s",
           "state_mb": "state MB"}
SweepReport = dict[str, Any]


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


def _markdown_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    lines = [fmt.format(*head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + [fmt.format(*row) for row in rows])


def format_runs(files: list[Path]) -> str:
    """A markdown table with one row per run."""
    head = ["run", "strategy", "scenario", "evaluation", "seed", *COLUMNS, "state MB", "wall s"]
    rows = []
    for f in files:
        r = read_run(f)
        m = r["metrics"]
        rows.append([str(f.parent), r["strategy"], r["scenario"], evaluation_mode(r), str(r["seed"]),
                     *(f"{m[c]:+.4f}" if c in ("bwt", "fwt") else f"{m[c]:.4f}" for c in COLUMNS),
                     f"{r['strategy_state_bytes'] / 2**20:.3f}", f"{r['wall_seconds']:.1f}"])
    return _markdown_table(head, rows)


def _cell(group: Group, column: str) -> str:
    mean, std = group.stat(column)
    if math.isnan(mean):
        return "-"
    fmt = METRICS[column][1]
    return fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std).lstrip("+"))


def _csv(columns: list[str], names: dict[str, str], groups: list[Group]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([names.get(c, c) for c in columns] + ["evaluation", "n_done", "n_runs"]
                    + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
    for g in groups:
        stats = [g.stat(m) for m in METRICS]
        writer.writerow([g.labels[c] for c in columns] + [g.evaluation, len(g.done), len(g.runs)]
                        + [("" if v is None or math.isnan(v) else repr(v)) for st in stats for v in st])
    return out.getvalue()


def _markdown(paths: list[Path], columns: list[str], names: dict[str, str], groups: list[Group],
              runs: list[SweepRun], over: list[str], plots: bool) -> str:
    states = {s: sum(r.state == s for r in runs) for s in ("done", "failed")}
    unfinished = len(runs) - states["done"] - states["failed"]
    runs_line = (f"Sweeps: {', '.join(f'`{p}`' for p in paths)}. Runs: {states['done']} done, "
                 f"{states['failed']} failed, {unfinished} not finished, of {len(runs)} planned.")
    over_line = (f"Cells are mean ± sample std over {', '.join(f'`{k}`' for k in over) or 'nothing (one run each)'}; "
                 "`evaluation`: whether test batches carried task ids (task-aware) or not (task-agnostic), never "
                 "compared as one kind; `runs` = finished / planned runs in the row; acc, bwt, fwt, forgetting are "
                 "fractions.")
    lines = ["# Sweep report", "", runs_line, over_line, ""]
    head = [names.get(c, c) for c in columns] + ["evaluation", "runs"] + [HEADERS[m] for m in METRICS]
    rows = [[g.labels[c] for c in columns] + [g.evaluation, f"{len(g.done)}/{len(g.runs)}"]
            + [_cell(g, m) for m in METRICS]
            for g in groups]
    lines.append(_markdown_table(head, rows))
    if plots:
        lines += ["", "![acc and bwt, mean ± std over seeds](report_bars.png)", "",
                  "![mean accuracy matrices](report_matrices.png)"]
    failed = [r for r in runs if r.state == "failed"]
    if failed:
        lines += ["", "## Failed runs", "", _markdown_table(
            ["run", "grid point", "error"],
            [[r.run_id, ", ".join(f"{k}={v}" for k, v in r.labels.items()), (r.error or "").replace("|", "\\|")]
             for r in failed])]
    return "\n".join(lines) + "\n"


def sweep_report(paths: list[Path], out: Path | None = None, over: list[str] | None = None,
                 plots: bool = True) -> SweepReport:
    """Aggregate sweep directories and write ``report.md``, ``report.csv`` and the plots into ``out``.

    Args:
        paths: Sweep directories (merged).
        out: Output directory; default the first sweep directory.
        over: Grid keys to average over; default the seed keys (``seed_everything``, ``*.seed``).
        plots: Also write ``report_bars.png`` and ``report_matrices.png``.

    Returns:
        ``{"markdown", "csv", "columns", "groups", "runs", "files"}``.
    """
    keys, runs = collect(paths)
    over = seed_keys(keys) if over is None else over
    columns, groups = group_runs(keys, runs, over)
    names = column_names(columns)
    out = Path(out or paths[0])
    markdown = _markdown(paths, columns, names, groups, runs, over, plots)
    table = _csv(columns, names, groups)
    files = [out / "report.md", out / "report.csv"]
    write_text_atomic(files[0], markdown)
    write_text_atomic(files[1], table)
    if plots and any(g.done for g in groups):
        from clkit.cli.plots import plot_bars, plot_matrix_grid

        files += [out / "report_bars.png", out / "report_matrices.png"]
        plot_bars(files[2], groups, columns[2:], ", ".join(names[c] for c in columns[2:]))
        plot_matrix_grid(files[3], groups, columns[1:])
    return {"markdown": markdown, "csv": table, "columns": columns, "groups": groups, "runs": runs, "files": files}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clkit report", exit_on_error=False, allow_abbrev=False,
                                description="Tables of runs, or the aggregated report of sweep directories.")
    p.add_argument("paths", nargs="+", help="run directories / results.json files, or sweep directories")
    p.add_argument("--out", default=None, help="where a sweep report goes (default: the first sweep directory)")
    p.add_argument("--over", action="append", default=None,
                   help="grid key to average over (repeatable; default: the seed keys)")
    p.add_argument("--no_plots", "--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(args: list[str]) -> None:
    from clkit.cli.errors import parse_subcommand

    ns = parse_subcommand(_parser(), args, "report")
    if ns is None:
        return
    paths = [Path(p) for p in ns.paths]
    sweeps = [is_sweep_dir(p) for p in paths]
    if not any(sweeps):
        if ns.over or ns.out:
            raise ConfigError("--over and --out apply to sweep directories only")
        print(format_runs(find_results(ns.paths)))
        return
    if not all(sweeps):
        raise DataError(f"not sweep directories: {[str(p) for p, s in zip(paths, sweeps) if not s]}; "
                        "give either sweep directories or run directories")
    report = sweep_report(paths, Path(ns.out) if ns.out else None, ns.over, plots=not ns.no_plots)
    print(report["markdown"], end="")
    print("wrote " + ", ".join(str(f) for f in report["files"]))
