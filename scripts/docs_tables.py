"""Keep the tables in the docs equal to the reports they come from, so no table is edited by hand.

A table in a markdown file is tied to its source by two comments::

    <!-- table from docs/example_sweep/report.md -->
    | strategy | ... |
    <!-- end table -->

The source is a report written by ``clkit report`` (``report.md``: its first markdown table is used) or any markdown
file. ``python scripts/docs_tables.py`` rewrites every tied table from its source; ``--check`` only compares and
exits with 1, naming each stale table (the test suite runs it). Regenerate a source by rerunning what produced it
(e.g. ``clkit sweep`` then ``clkit report ... --out docs/example_sweep``), then run this script.

    python scripts/docs_tables.py            # rewrite
    python scripts/docs_tables.py --check    # compare only
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"^<!-- table from (\S+) -->\s*$")
END = "<!-- end table -->"


def first_table(text: str) -> list[str]:
    """The first block of consecutive ``|``-lines of a markdown text."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return []
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def tied_tables(path: Path) -> list[tuple[int, int, Path]]:
    """``(first, last, source)`` line spans (exclusive of the comments) of every tied table of ``path``."""
    lines = path.read_text().splitlines()
    spans = []
    for i, line in enumerate(lines):
        match = BEGIN.match(line)
        if match:
            end = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == END), None)
            if end is None:
                raise SystemExit(f"{path}:{i + 1}: '<!-- table from ... -->' without '{END}'")
            spans.append((i + 1, end, ROOT / match.group(1)))
    return spans


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def sync(path: Path, write: bool) -> list[str]:
    """Stale tables of ``path`` (rewritten when ``write``); each as ``file:line: from source``."""
    lines = path.read_text().splitlines()
    stale, out, cursor = [], [], 0
    for first, last, source in tied_tables(path):
        if not source.is_file():
            raise SystemExit(f"{_name(path)}:{first}: the source {_name(source)} does not exist")
        table = first_table(source.read_text())
        if lines[first:last] != table:
            stale.append(f"{_name(path)}:{first}: from {_name(source)}")
        out += lines[cursor:first] + table
        cursor = last
    out += lines[cursor:]
    if write and stale:
        path.write_text("\n".join(out) + "\n")
    return stale


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    stale = [s for path in markdown_files() for s in sync(path, write=not args.check)]
    for line in stale:
        print(("stale: " if args.check else "rewrote: ") + line)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
