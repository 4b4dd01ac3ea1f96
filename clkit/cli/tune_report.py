"""The report of a ``clkit tune`` directory: the trials on the validation matrix, the selected one marked, then
the selected configuration's test metrics (over the final seeds, when they ran), shown only after selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clkit.cli.aggregate import Group, collect, column_names, group_runs, seed_keys
from clkit.cli.report_format import HEADERS, Table, cell, csv_text, latex_text, markdown_text, plain_text, short
from clkit.cli.sweep_state import read_json, write_text_atomic

__all__ = ["is_tune_dir", "tune_report"]

TRIAL_METRICS = ("val_acc", "wall_s")
TEST_METRICS = ("acc", "bwt", "fwt", "forgetting", "val_acc", "wall_s", "state_mb")


def is_tune_dir(path: Path) -> bool:
    return (Path(path) / "tune.json").is_file()


def _trials_table(path: Path, tune: dict[str, Any]) -> tuple[Table, list[list[object]]]:
    _, runs = collect([path])
    columns, groups = group_runs([], runs, [])
    hyper = columns[3:]
    names = column_names(hyper)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for t in tune["trials"]:
        by_run.setdefault(str(t["run_id"]), []).append(t)
    selected = (tune.get("selected") or {}).get("run_id")
    objective = tune["objective"]
    head = ["selected", "trials", *(names[c] for c in hyper), "state", f"{objective} (objective)",
            *(HEADERS[m] for m in TRIAL_METRICS), "pruned at"]
    rows: list[list[str]] = []
    csv_rows: list[list[object]] = []
    for g in groups:
        run = g.runs[0]
        trials = by_run.get(run.run_id, [])
        value = next((t["value"] for t in trials if t["value"] is not None), None)
        steps = [int(k) for t in trials for k in t.get("intermediate", {})]
        mark = "*" if run.run_id == selected else ""
        rows.append([mark, ",".join(str(t["number"]) for t in trials), *(g.labels[c] for c in hyper), run.state,
                     "-" if value is None else f"{value:.4f}", *(cell(g, m) for m in TRIAL_METRICS),
                     f"experience {max(steps)}" if run.state == "pruned" and steps else ""])
        csv_rows.append([mark, ";".join(str(t["number"]) for t in trials), *(g.labels[c] for c in hyper),
                         run.state, "" if value is None else repr(value), run.run_id])
    notes = [f"Study: {len(tune['trials'])} trials, {tune['sampler']} sampler, {tune['pruner']} pruner; "
             f"objective {objective} ({tune['direction']}) read from the validation matrix only; * = selected."]
    table = Table(head, rows, f"Tune report: {path}", notes, [False] * (3 + len(hyper)) + [True] * 4,
                  [[r.run_id, r.state, " ".join(f"{k}={v}" for k, v in r.labels.items()),
                    short(r.reason)]
                   for r in runs if r.state not in ("done", "pruned")])
    csv_head: list[object] = ["selected", "trials", *(names[c] for c in hyper), "state", f"{objective}", "run_id"]
    return table, [csv_head, *csv_rows]


def _selected_table(path: Path, tune: dict[str, Any]) -> Table:
    selected = tune.get("selected") or {}
    final = path / "final"
    if (final / "sweep.json").is_file():
        keys, runs = collect([final])
        over, where = seed_keys(keys), f"the final seeds {tune.get('final_seeds')}"
    else:
        runs = [r for r in collect([path])[1] if r.run_id == selected.get("run_id")]
        keys, over, where = [], [], "the selected trial's own run (no final seeds)"
    columns, groups = group_runs(keys, runs, over)
    group = groups[0] if groups else Group({})
    values = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in selected.get("params", {}).items())
    head = ["selected configuration", "evaluation", "runs", *(HEADERS[m] for m in TEST_METRICS)]
    row = [values or "-", group.labels.get("evaluation", "-"), f"{len(group.done)}/{len(group.runs)}",
           *(cell(group, m) for m in TEST_METRICS)]
    notes = [f"Chosen by {tune['objective']} on validation (trial {selected.get('number', '-')}); test metrics "
             f"after selection, mean ± sample std over {where}."]
    return Table(head, [row], "Selected configuration on test", notes, [False] * 3 + [True] * len(TEST_METRICS))


def tune_report(path: Path, out: Path | None = None) -> dict[str, Any]:
    """The tune directory's report: ``report.md``, ``report.csv``, ``report.tex`` in ``out`` (default ``path``)."""
    path = Path(path)
    tune = read_json(path / "tune.json") or {}
    trials, csv_rows = _trials_table(path, tune)
    chosen = _selected_table(path, tune)
    text = plain_text(trials) + "\n" + plain_text(chosen)
    markdown = markdown_text(trials) + "\n" + markdown_text(chosen).replace("# Selected", "## Selected", 1)
    latex = latex_text(trials, caption=trials.notes[0]) + "\n" + latex_text(chosen, caption=chosen.notes[0])
    test = {m: cell_value for m, cell_value in zip(TEST_METRICS, chosen.rows[0][3:])}
    csv_rows[0] += [f"test_{m}" for m in TEST_METRICS]
    for row in csv_rows[1:]:
        row += [test[m] if row[0] == "*" else "" for m in TEST_METRICS]
    csv = csv_text([str(c) for c in csv_rows[0]], csv_rows[1:])
    out = Path(out or path)
    files = [out / "report.md", out / "report.csv", out / "report.tex"]
    for f, body in zip(files, (markdown, csv, latex)):
        write_text_atomic(f, body)
    return {"text": text, "markdown": markdown, "csv": csv, "latex": latex, "files": files, "tune": tune,
            "selected_test": test, "columns": [], "groups": [], "runs": []}
