"""The import graph, read from the source (every import, lazy ones inside functions included):
no circles in ``hbt`` and ``hbt.bench``, and nothing outside ``hbt/index/`` reaches past ``hbt.index``'s face."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"hbt": REPO / "hbt", "hbt.bench": REPO / "bench", "hbt.export": REPO / "export"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``hbt.bench`` and ``hbt.export`` are installed from their
    top-level folders)."""
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            if "static" in path.parts or "resources" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, str, int]]:
    """(imported name as written, the module it loads, line) for each import in the file; ``from a import b``
    loads ``a.b`` when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0], base]))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((target if target in known else base, target if target in known else base, node.lineno))
    return [(written, loaded, line) for written, loaded, line in found if loaded in known]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: {loaded for _, loaded, _ in imports(name, path, known) if loaded != name}
            for name, path in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle_through_a_lazy_import():
    """The check can fail: two modules that import each other, one of them inside a function."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    edges = graph()
    assert "hbt.openvino_runtime" in edges and "hbt.index.ops" in edges  # the walk sees the package
    # and the benchmarks, where a circle once ran (encode_speed took sample_questions from latency, lazily)
    assert "hbt.bench.encode_speed" in edges["hbt.bench.latency"]
    assert circles(edges) == []


def test_only_the_index_imports_its_inner_modules():
    """Outside ``hbt/index/`` (benchmarks aside), the index is imported as ``hbt.index``, never a module in it."""
    found = modules()
    known = set(found)
    leaks = [f"{path.relative_to(REPO)}:{line} imports {loaded}"
             for name, path in found.items() if not name.startswith(("hbt.index", "hbt.bench"))
             for _, loaded, line in imports(name, path, known) if loaded.startswith("hbt.index.")]
    assert leaks == []


@pytest.mark.parametrize("source, leaks", [("from hbt.index import Index", False),
                                           ("from hbt.index import durable", True),
                                           ("def f():\n    from hbt.index.writer import open_writer", True)])
def test_an_inner_import_is_seen(tmp_path, source, leaks):
    path = tmp_path / "module.py"
    path.write_text(source)
    loaded = [target for _, target, _ in imports("hbt.other", path, set(modules()))]
    assert any(target.startswith("hbt.index.") for target in loaded) == leaks
