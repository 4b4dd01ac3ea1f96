"""The package layout's two rules, checked over the source tree: the core imports no strategy or scenario (only
the face layer ``clkit/cli/`` may, to resolve names), and no import cycle exists among the three packages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clkit", "strategies", "scenarios")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module ``name`` imports, at module level or inside functions (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_the_core_imports_no_strategy_or_scenario() -> None:
    graph = _graph()
    core = [m for m in graph if m.split(".")[0] == "clkit" and not m.startswith("clkit.cli")]
    assert len(core) > 10
    bad = {m: sorted(t for t in graph[m] if t.split(".")[0] in ("strategies", "scenarios")) for m in core}
    assert not {m: t for m, t in bad.items() if t}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, set()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    assert not _cycles(_graph())


def test_the_checker_sees_a_cycle_and_a_core_import(tmp_path: Path) -> None:
    """The graph builder is not vacuous: a planted edge shows up."""
    known = {"clkit.a": tmp_path / "a.py", "strategies.b": tmp_path / "b.py"}
    known["clkit.a"].write_text("def f():\n    from strategies.b import thing\n")
    known["strategies.b"].write_text("from clkit import a\n")
    assert _imports("clkit.a", known["clkit.a"], known) == {"strategies.b"}
    assert _imports("strategies.b", known["strategies.b"], {**known, "clkit": tmp_path}) == {"clkit", "clkit.a"}
    assert _cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
