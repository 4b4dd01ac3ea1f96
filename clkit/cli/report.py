"""``clkit report``: tables of runs, aggregated: mean ± std over seeds, a column per hyper-parameter that varies.

- ``clkit report SWEEP_DIR...``: every planned run of the sweeps (merged), grouped by strategy, scenario and the
  varying grid values; cells are mean ± sample std over the seeds of acc, bwt, fwt, forgetting, val acc, wall time
  and strategy memory; failed, pruned, running and pending runs are listed with their reason. Written as
  ``report.md``, ``report.csv``, ``report.tex`` with ``report_bars.png`` and ``report_matrices.png``.
- ``clkit report RUN_DIR...``: runs of ``clkit fit``, grouped the same way by their configs (``--per_run``: a row
  per run).
- A ``clkit tune`` directory: the trials on the validation matrix, the selected configuration marked, and its test
  metrics (over the final seeds) after selection.

The terminal gets plain text (``--markdown``, ``--csv``, ``--latex`` print those instead). Every table has an
``evaluation`` column (task-aware or task-agnostic test predictions), so a table never mixes them silently.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from clkit.cli.aggregate import (
    METRICS,
    Group,
    SweepRun,
    collect,
    column_names,
    group_runs,
    is_sweep_dir,
    plain_runs,
    seed_keys,
)
from clkit.cli.report_format import HEADERS, Table, cell, csv_text, latex_text, markdown_text, plain_text, short
from clkit.cli.sweep_state import write_text_atomic
from clkit.errors import ConfigError, DataError

__all__ = ["build_table", "find_results", "format_runs", "main", "runs_report", "sweep_report"]

FORMATS = ("text", "markdown", "csv", "latex")
IMAGES = [("acc and bwt, mean ± std over seeds", "report_bars.png"), ("mean accuracy matrices", "report_matrices.png"),
          ("accuracy on each task after each experience", "report_stream.png")]
"""The report's figures (each also written as a PDF beside the PNG)."""


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


def _point(run: SweepRun) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in run.labels.items()) or run.run_id


def build_table(columns: list[str], groups: list[Group], runs: list[SweepRun], over: list[str],
                metrics: tuple[str, ...] = tuple(METRICS), title: str = "", sources: str = "") -> Table:
    """The report table: group columns, ``runs`` (finished / planned), a ``mean ± std`` cell per metric."""
    names = column_names(columns[3:])
    states = {s: sum(r.state == s for r in runs) for s in ("done", "failed", "pruned")}
    rest = len(runs) - sum(states.values())
    notes = [f"{sources}Runs: {states['done']} done, {states['failed']} failed"
             + (f", {states['pruned']} pruned" if states["pruned"] else "") + f", {rest} not finished, "
             f"of {len(runs)} planned.",
             f"Cells: mean ± sample std over {', '.join(over) or 'nothing (one run each)'}; runs = finished / planned; "
             "acc, bwt, fwt, forgetting on the test matrix, val acc on the validation matrix (fractions); wall s "
             "excludes worker start-up."]
    if len({g.labels["evaluation"] for g in groups if g.done}) > 1:
        notes.append("Rows differ in evaluation (task-aware vs task-agnostic test predictions): compare within one.")
    head = ["strategy", "scenario", "evaluation", *(names[c] for c in columns[3:]), "runs",
            *(HEADERS[m] for m in metrics)]
    rows = [[g.labels[c] for c in columns] + [f"{len(g.done)}/{len(g.runs)}"] + [cell(g, m) for m in metrics]
            for g in groups]
    unfinished = [[r.run_id, r.state, _point(r), short(r.reason)] for r in runs if r.state != "done"]
    startups = [r.startup for r in runs if r.startup]
    footer = [f"Worker start-up (not in wall s): {sum(startups) / len(startups):.1f} s on average over "
              f"{len(startups)} worker(s)."] if startups else []
    return Table(head, rows, title, notes, [False] * (len(columns) + 1) + [True] * len(metrics), unfinished, footer)


def _csv(columns: list[str], groups: list[Group]) -> str:
    names = column_names(columns[3:])
    head = ["strategy", "scenario", "evaluation", *(names[c] for c in columns[3:]), "n_done", "n_runs"] + \
        [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    rows: list[list[object]] = []
    for g in groups:
        stats = [g.stat(m) for m in METRICS]
        row: list[object] = [g.labels[c] for c in columns]
        rows.append(row + [len(g.done), len(g.runs)]
                    + [("" if v is None or math.isnan(v) else repr(v)) for st in stats for v in st])
    return csv_text(head, rows)


def _outputs(table: Table, csv: str, images: list[tuple[str, str]]) -> dict[str, str]:
    return {"text": plain_text(table), "markdown": markdown_text(table, images), "csv": csv,
            "latex": latex_text(table, caption=" ".join(table.notes[1:2]))}


def sweep_report(paths: list[Path], out: Path | None = None, over: list[str] | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Aggregate sweep directories; write ``report.md``, ``report.csv``, ``report.tex`` and the plots into ``out``.

    Args:
        paths: Sweep directories (merged).
        out: Output directory; default the first sweep directory.
        over: Keys to average over; default the seed keys (``seed_everything``, ``*.seed``).
        plots: Also write ``report_bars``, ``report_matrices`` and ``report_stream`` (PNG and PDF each).

    Returns:
        ``{"text", "markdown", "csv", "latex", "columns", "groups", "runs", "files"}``.
    """
    from clkit.cli.tune_report import is_tune_dir, tune_report

    if len(paths) == 1 and is_tune_dir(paths[0]):
        return tune_report(paths[0], out)
    keys, runs = collect(paths)
    over = seed_keys(keys) if over is None else over
    columns, groups = group_runs(keys, runs, over)
    out = Path(out or paths[0])
    sources = "Sweeps: " + ", ".join(str(p) for p in paths) + ". "
    table = build_table(columns, groups, runs, over, title="Sweep report", sources=sources)
    images = IMAGES if plots and any(g.done for g in groups) else []
    report = _outputs(table, _csv(columns, groups), images)
    files = [out / "report.md", out / "report.csv", out / "report.tex"]
    for f, key in zip(files, ("markdown", "csv", "latex")):
        write_text_atomic(f, report[key])
    if images:
        from clkit.cli.plots import plot_bars, plot_matrix_grid, plot_stream_grid

        hyper = columns[3:]
        files += plot_bars(out / "report_bars.png", groups, hyper, ", ".join(column_names(hyper).values()))
        files += plot_matrix_grid(out / "report_matrices.png", groups, ["scenario", *hyper])
        files += plot_stream_grid(out / "report_stream.png", groups, ["scenario", *hyper])
    return {**report, "columns": columns, "groups": groups, "runs": runs, "files": files}


def runs_report(files: list[Path], over: list[str] | None = None, per_run: bool = False) -> dict[str, Any]:
    """Runs of ``clkit fit`` grouped by config (mean ± std over seeds), or one row each with ``per_run``."""
    runs, skipped = plain_runs(files)
    if not runs:
        raise DataError("no readable results.json: " + "; ".join(skipped))
    keys = list(dict.fromkeys(k for r in runs for k in r.params))
    over = ([] if per_run else seed_keys(keys)) if over is None else over
    if per_run:  # every run its own group: the run directory is a column
        for r in runs:
            r.params = {"run": r.run_id, **r.params}
    columns, groups = group_runs(keys, runs, over)
    table = build_table(columns, groups, runs, over, title="")
    if skipped:
        table.footer.append(f"Skipped {len(skipped)} run(s), unreadable or smoke tests: " + "; ".join(skipped))
    return {**_outputs(table, _csv(columns, groups), []), "columns": columns, "groups": groups, "runs": runs}


def format_runs(files: list[Path]) -> str:
    """A plain-text table with one row per run; unreadable runs are listed after it, not fatal."""
    return str(runs_report(files, per_run=True)["text"])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clkit report", exit_on_error=False, allow_abbrev=False,
                                description="Tables of runs or sweeps: mean ± std over seeds, a column per varying "
                                            "hyper-parameter, unfinished runs with their reason.")
    p.add_argument("paths", nargs="+", help="run directories / results.json files, or sweep (or tune) directories")
    p.add_argument("--out", default=None, help="where a sweep report goes (default: the first sweep directory)")
    p.add_argument("--over", action="append", default=None,
                   help="key to average over (repeatable; default: the seed keys)")
    p.add_argument("--per_run", "--per-run", action="store_true", help="run directories: a row per run")
    p.add_argument("--no_plots", "--no-plots", action="store_true", help="skip the PNG plots")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--format", choices=FORMATS, default="text", help="what to print (default: text)")
    for name in FORMATS[1:]:
        fmt.add_argument(f"--{name}", dest="format", action="store_const", const=name, help=f"print {name}")
    return p


def main(args: list[str]) -> None:
    from clkit.cli.errors import parse_subcommand

    ns = parse_subcommand(_parser(), args, "report")
    if ns is None:
        return
    paths = [Path(p) for p in ns.paths]
    sweeps = [is_sweep_dir(p) for p in paths]
    if not any(sweeps):
        if ns.out:
            raise ConfigError("--out applies to sweep directories only")
        print(runs_report(find_results(ns.paths), ns.over, ns.per_run)[ns.format], end="")
        return
    if not all(sweeps):
        raise DataError(f"not sweep directories: {[str(p) for p, s in zip(paths, sweeps) if not s]}; "
                        "give either sweep directories or run directories")
    report = sweep_report(paths, Path(ns.out) if ns.out else None, ns.over, plots=not ns.no_plots)
    print(report[ns.format], end="")
    if ns.format == "text":
        print("wrote " + ", ".join(str(f) for f in report["files"]))

