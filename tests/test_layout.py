"""Package layout: imports inside `ternary_hf` flow one way.

Every module is parsed with `ast` (nothing is imported), and each `import` / `from ... import` that names another
`ternary_hf` module becomes an edge, whether it sits at module level or inside a function: a function-level import
that goes back up the layers is still a cycle, only a deferred one. Imports under `if TYPE_CHECKING:` are left out
(they never run), as is the `if __name__ == "__main__":` block of a module run as a script.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "ternary_hf"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _skipped_block(node: ast.If) -> bool:
    """`if TYPE_CHECKING:` and `if __name__ == "__main__":` bodies do not run on import."""
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
        return True
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, skipping the blocks of :func:`_skipped_block`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _skipped_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a module or `module.attribute`) starts with."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the `ternary_hf` modules it imports (a package's import of `pkg.sub` counts as `pkg.sub`)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import sub` imports the submodule when `sub` is one
                targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
            for target in targets:
                if not target.startswith(PACKAGE):
                    continue
                resolved = _resolve(target, modules)
                if resolved and resolved != module:
                    graph[module].add(resolved)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list.

    A package's `__init__` counts as a module: a submodule that imports from its own package while the package's
    `__init__` imports that submodule is a cycle (it works only in one import order).
    """
    edges = graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    lines = [f"  {a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "cycle among " + ", ".join(component) + ":\n" + "\n".join(lines)


def test_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "ternary_hf.ternarize" in graph["ternary_hf.layer"]  # module level, relative
    assert "ternary_hf.evaluation.models" in graph["ternary_hf.evaluation.suite"]  # module level, absolute
    assert "ternary_hf.ternarize" in graph["ternary_hf.training.trainer"]  # inside a method


def test_find_cycles_reports_a_cycle():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}, "p": {"p.a"}, "p.e": {"p"}}
    assert find_cycles(graph) == [["p.a", "p.b", "p.c"]]
    assert find_cycles({"p": {"p.a"}, "p.a": {"p"}}) == [["p", "p.a"]]  # a module importing its package back
    assert find_cycles({"p": {"p.a"}, "p.a": set(), "p.b": {"p"}}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    if cycles:
        pytest.fail("import cycles inside ternary_hf (move the shared piece into a lower module):\n"
                    + "\n\n".join(_describe(c, graph) for c in cycles))


def test_the_library_does_not_go_through_the_command_line():
    """Only the CLI (`ternary_hf.cli`, `ternary_hf.commands.*`) imports the command modules: the quickstart, the
    training recipe and everything else call typed functions, not argv parsers."""
    cli = ("ternary_hf.cli", "ternary_hf.commands")
    offenders = sorted(f"{module} -> {target}" for module, targets in import_graph().items()
                       if not module.startswith(cli) for target in targets if target.startswith(cli))
    assert offenders == []
