"""The modules of ``harness/`` import each other without a cycle (issue 19).

The graph is read from the source with ``ast``, not by importing: an edge ``a -> b`` for
every ``import`` or ``from ... import`` in ``a`` that names a module ``b`` of ``harness``.
``from harness.x import name`` points at ``harness.x.name`` where that is a module, else at
``harness.x``. Function-level (lazy) imports count like module-level ones: a lazy import
only moves a cycle's failure from import time to the first call, and the layering is as
circular either way (``config`` and ``backends`` imported each other through one). Imports
under ``if TYPE_CHECKING:`` are left out: they never run and annotate only. Importing a
submodule runs its package's ``__init__`` first; that is Python's mechanism, not an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"
# Lazy back-edges allowed by name, each a plugin load rather than a layering dependency: the
# registry imports the module that registers the built-in detectors and rules on first use.
ALLOWED = {("harness.registry", "harness.gate")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(HARNESS.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree``, at any depth, except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for other in node.orelse:
                yield from _imports(other)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, modules: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    base = node.module or ""
    if node.level:  # relative: from the package that holds ``here``
        package = here.split(".") if is_package else here.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
    out = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    if len(out) < len(node.names) and base in modules:
        out.add(base)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in HARNESS.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for node in _imports(tree):
            edges |= _targets(node, name, path.name == "__init__.py", modules)
        graph[name] = {e for e in edges - {name} if (name, e) not in ALLOWED}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_harness_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "harness.config" in graph and "harness.backends.hf" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_sees_lazy_imports_and_finds_a_cycle() -> None:
    # the edge that made the cycle issue 19 names: a lazy import inside a function
    src = "def f():\n    from harness.backends import BACKENDS\n"
    node = next(_imports(ast.parse(src)))
    assert _targets(node, "harness.config", False, {"harness.backends", "harness.config"}) == {"harness.backends"}
    graph = {"harness.config": {"harness.backends"}, "harness.backends": {"harness.config"}}
    assert find_cycle(graph) == ["harness.backends", "harness.config", "harness.backends"]
    # imports that never run (TYPE_CHECKING) are no edges
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import harness.config\n"
    assert [type(n).__name__ for n in _imports(ast.parse(typed))] == ["ImportFrom"]


def test_the_layers_below_config_do_not_reach_up() -> None:
    """The leaves stay leaves: ``defaults``, ``options``, ``errors`` import nothing of harness
    above them, and the backends never import ``config`` (they declare their own options)."""
    graph = import_graph()
    assert graph["harness.defaults"] == set()
    assert graph["harness.options"] <= {"harness.errors"}
    for name, edges in graph.items():
        if name.startswith("harness.backends"):
            assert "harness.config" not in edges, name


def test_config_reads_every_backends_options_without_an_engine() -> None:
    """The flags of every backend come from the registry without torch, vllm or httpx imported."""
    import subprocess
    import sys

    code = (
        "import sys, dataclasses, harness.config as c; "
        "print(sorted(m for m in ('torch', 'vllm', 'httpx', 'transformers') if m in sys.modules)); "
        "print(' '.join(f.name for f in dataclasses.fields(c.BackendOptions)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    fields = set(out[1].split())
    # each backend's own fields, declared in its own module (config.py names none of them)
    assert {"batch_size", "device", "max_model_len", "base_urls", "api_model", "chunk_size"} <= fields
    config_src = (HARNESS / "config.py").read_text()
    assert not any(f"{name}:" in config_src for name in fields)
