"""``clkit report --latex`` compiles: a LaTeX-free structural check (and pdflatex where it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clkit.cli.report import main, sweep_report
from clkit.cli.report_format import Table, latex_text
from tests.clkit.test_report import fake_results, make_sweep

KNOWN = {"begin", "end", "centering", "small", "toprule", "midrule", "bottomrule", "caption", "pm", "textbackslash",
         "textasciitilde", "textasciicircum", "textless", "textgreater", "dots", "cdot"}
ESCAPED = set("&%$#_{}")


def check_latex(text: str) -> int:
    """Raise AssertionError where pdflatex would fail on a booktabs table; returns the number of body rows.

    Checks: ASCII only, known commands only, balanced braces and environments, math shifts paired in every cell,
    no special character unescaped, and every row with as many cells as the column spec has columns.
    """
    assert text.isascii(), "non-ASCII characters need packages the table does not load"
    body = "\n".join(re.sub(r"(?<!\\)%.*$", "", line) for line in text.splitlines())  # drop comments
    for cmd in re.findall(r"\\([A-Za-z]+)", body):
        assert cmd in KNOWN, f"undefined control sequence \\{cmd}"
    depth, stack = 0, []
    for m in re.finditer(r"\\begin\{(\w+)\}|\\end\{(\w+)\}|(?<!\\)\{|(?<!\\)\}", body):
        if m.group(1):
            stack.append(m.group(1))
        elif m.group(2):
            assert stack and stack.pop() == m.group(2), f"\\end{{{m.group(2)}}} does not close the open environment"
        else:
            depth += 1 if m.group(0) == "{" else -1
            assert depth >= 0, "a } closes nothing"
    assert depth == 0 and not stack, f"unclosed: braces {depth}, environments {stack}"
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", body)
    assert spec, "no tabular with a column spec"
    rows = re.search(r"\\toprule(.*)\\bottomrule", body, flags=re.S)
    assert rows
    lines = [ln.strip() for ln in rows.group(1).replace(r"\midrule", "").strip().split("\n") if ln.strip()]
    for line in lines:
        assert line.endswith(r"\\"), f"a row must end with \\\\: {line}"
        cells = re.split(r"(?<!\\)&", line[:-2])
        assert len(cells) == len(spec.group(1)), f"{len(cells)} cells for {len(spec.group(1))} columns: {line}"
        for c in cells:
            assert len(re.findall(r"(?<!\\)\$", c)) % 2 == 0, f"unpaired $ in {c!r}"
            text_part = re.sub(r"(?<!\\)\$[^$]*(?<!\\)\$", "", c)
            for ch in "_^#~":
                assert not re.search(rf"(?<!\\){re.escape(ch)}", text_part.replace(r"\textasciitilde{}", "")
                                     .replace(r"\textasciicircum{}", "")), f"unescaped {ch} in {c!r}"
    return len(lines) - 1


def test_the_checker_catches_what_breaks_a_build() -> None:
    good = latex_text(Table(["a", "b"], [["x_1", "0.5 ± 0.1"]], numeric=[False, True]))
    assert check_latex(good) == 1
    for bad in (good.replace(r"x\_1", "x_1"), good.replace(r"\\" + "\n" + r"\bottomrule", "\n" + r"\bottomrule"),
                good.replace(r"$\pm$", "±"), good.replace(r"\end{tabular}", ""), good.replace(" & ", " & & ", 1),
                good.replace(r"\midrule", r"\midrul")):
        with pytest.raises(AssertionError):
            check_latex(bad)


def test_report_latex_compiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weird = {"class_path": "strategies.CUBER", "init_args": {"note": "50% of #1 & {x}_y ~ ^"}}
    sweep = make_sweep(tmp_path / "s", [
        ("Naive", 0, [0, 1], fake_results("Naive", 0, acc=0.5, bwt=-0.25), "done"),
        ("Naive", 1, [0, 1], fake_results("Naive", 1, acc=0.75, bwt=-0.125), "done"),
        ("CUBER", 0, [1, 0], fake_results("CUBER (clkit reconstruction)", 0, acc=0.9, bwt=0.0), "done"),
        ("CUBER", 0, [0, 1], fake_results("CUBER (clkit reconstruction)", 0, acc=0.8, bwt=0.0), "done"),
        ("GPM", 0, [0, 1], None, "failed"),
    ])
    # the odd setting on one CUBER run only, so that it varies within CUBER and becomes a column
    index = (sweep / "sweep.json").read_text().replace('"strategies.CUBER"', __import__("json").dumps(weird), 1)
    (sweep / "sweep.json").write_text(index)
    report = sweep_report([sweep], plots=False)
    assert check_latex(report["latex"]) == 4  # data rows: Naive, the two CUBER settings, GPM (failed)
    assert (sweep / "report.tex").read_text() == report["latex"]
    assert r"0.625 $\pm$ 0.177" in report["latex"] and r"$-$0.188 $\pm$ 0.088" in report["latex"]
    assert r"50\% of \#1 \& \{x\}\_y" in report["latex"]
    main([str(sweep), "--latex", "--no_plots"])
    printed = capsys.readouterr().out
    assert printed == report["latex"]
    if shutil.which("pdflatex"):  # a real build too, where TeX is installed
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + printed
                       + "\\end{document}\n")
        build = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
        assert build.returncode == 0, build.stdout[-2000:]
