"""The package's shape, pinned: the import graph has no circle, modules stay
readable in one sitting, the engine names no store method by string."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.pysource import parse

PACKAGE = Path(__file__).resolve().parent.parent / "async_accept"
#: The longest module a maintainer should have to read in one sitting.
MAX_LINES = 650


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module ``name`` imports, at module level or inside a function."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                mod = f"{prefix}.{node.module}" if node.module else prefix
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{alias.name}" for alias in node.names]
        for target in targets:
            # The deepest known module the target names (a name imported from a
            # package's __init__ counts as importing that __init__).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_parent_package(a: str, b: str) -> bool:
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_circle() -> None:
    """No two modules of async_accept import each other, directly or around a loop
    (a package's __init__ re-exporting its own submodules does not count)."""
    graph = _graph()
    # A package re-exporting from its children is not a circle of layers: drop the
    # edges from a package __init__ down into its own subtree.
    pruned = {
        name: {t for t in targets if not t.startswith(name + ".")}
        for name, targets in graph.items()
    }
    assert _cycles(pruned) == []


def test_cycle_finder_finds_a_planted_circle() -> None:
    """The circle check itself sees a loop of three modules (it can fail)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert not _is_parent_package("a.b", "c")


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_fits_one_sitting(name: str) -> None:
    """Every module stays under MAX_LINES lines."""
    lines = _modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by what it decides"


def test_engine_names_no_store_method_by_string() -> None:
    """The engine yields typed operations: no getattr on a store, no type: ignore."""
    engine = PACKAGE / "engine"
    assert engine.is_dir()
    for path in engine.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "type: ignore" not in text, path.name
        assert "getattr(" not in text or "store" not in text.split("getattr(", 1)[1][:40], path.name


def test_each_store_backend_is_one_folder() -> None:
    """Each store backend keeps its store, outbox and connection setup in its own folder."""
    stores = PACKAGE / "stores"
    for backend in ("memory", "sqlite", "redis"):
        folder = stores / backend
        assert (folder / "store.py").is_file(), backend
        assert (folder / "outbox.py").is_file(), backend
