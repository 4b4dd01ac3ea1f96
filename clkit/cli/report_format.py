"""The formats of a report table: plain text (the terminal), markdown (``report.md``), CSV and LaTeX (booktabs).

A :class:`Table` is a header and rows of cell strings, plus the notes that explain it; each format renders the same
table. Cells are ``mean ± std`` strings; LaTeX gets ``$\\pm$`` and escaped text, so the output compiles.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field

from clkit.cli.aggregate import METRICS, Group

__all__ = ["HEADERS", "Table", "cell", "csv_text", "latex_escape", "latex_text", "markdown_text", "plain_text",
           "short"]

HEADERS = {"acc": "acc", "bwt": "bwt", "fwt": "fwt", "forgetting": "forgetting", "val_acc": "val acc",
           "wall_s": "wall s", "state_mb": "state MB"}


@dataclass
class Table:
    """A table and what belongs with it: a title, notes above, a second table of unfinished runs below."""

    head: list[str]
    rows: list[list[str]]
    title: str = ""
    notes: list[str] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)  # right-aligned columns (LaTeX)
    unfinished: list[list[str]] = field(default_factory=list)  # run, state, grid point, reason
    footer: list[str] = field(default_factory=list)


def short(text: str, width: int = 160) -> str:
    """``text`` cut to ``width`` characters (a run's reason in a table; the whole error is in its status.json)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def cell(group: Group, column: str) -> str:
    """``mean ± std`` of a metric over the group's finished runs, ``-`` without any."""
    mean, std = group.stat(column)
    if math.isnan(mean):
        return "-"
    fmt = METRICS[column][1]
    return fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std).lstrip("+"))


def _aligned(head: list[str], rows: list[list[str]], sep: str = "  ") -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = [sep.join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    rule = [sep.join("-" * w for w in widths)]
    return line + rule + [sep.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def plain_text(table: Table) -> str:
    """Aligned columns for a terminal: no markdown, no image links."""
    lines = ([table.title, ""] if table.title else []) + table.notes + ([""] if table.notes else [])
    lines += _aligned(table.head, table.rows)
    if table.unfinished:
        lines += ["", f"Not finished ({len(table.unfinished)}):"]
        lines += ["  " + ln for ln in _aligned(["run", "state", "grid point", "reason"], table.unfinished)]
    lines += ([""] + table.footer) if table.footer else []
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").ljust(w) for c, w in zip(cells, widths)) + " |"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x.replace("|", "\\|")) for x in col) for col in zip(head, *rows)]
    return [_md_row(head, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + \
        [_md_row(r, widths) for r in rows]


def markdown_text(table: Table, images: list[tuple[str, str]] = ()) -> str:  # type: ignore[assignment]
    """The table as markdown (``report.md``), with the plots linked below it."""
    lines = ([f"# {table.title}", ""] if table.title else []) + table.notes + ([""] if table.notes else [])
    lines += _md_table(table.head, table.rows)
    for alt, path in images:
        lines += ["", f"![{alt}]({path})"]
    if table.unfinished:
        lines += ["", "## Not finished", ""] + _md_table(["run", "state", "grid point", "reason"], table.unfinished)
    lines += ([""] + table.footer) if table.footer else []
    return "\n".join(lines) + "\n"


def csv_text(head: list[str], rows: list[list[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    writer.writerows(rows)
    return out.getvalue()


_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    """Text safe in a LaTeX table cell; ``±`` becomes ``$\\pm$`` and a leading minus a math minus."""
    out = "".join(_SPECIAL.get(ch, ch) for ch in text)
    out = out.replace("±", r"$\pm$").replace("…", r"\dots{}").replace("·", r"$\cdot$")
    return re.sub(r"(?<![\w.])-(?=\d)", "$-$", out)


def latex_text(table: Table, caption: str = "") -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    numeric = table.numeric or [False] * len(table.head)
    spec = "".join("r" if n else "l" for n in numeric)
    lines = ["% clkit report; needs \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.head) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
