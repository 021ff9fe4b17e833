"""The import graph of ``src/hub_cutinit`` has no cycle, and the registry is a leaf.

Every ``import`` counts: module level and inside functions (lazy imports), except those under
``if TYPE_CHECKING:``. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module
of ours, else to ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "hub_cutinit"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def _module_names() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # only the `else:` branch runs
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    targets: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        source = _resolve_from(node, module, path.name == "__init__.py")
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            targets.add(sub if sub in modules else source)
    return {t for t in targets if t in modules and t != module}


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of ours it imports}`` for every module of the package."""
    modules = _module_names()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_covers_lazy_imports_and_skips_type_checking():
    graph = import_graph()
    assert "hub_cutinit.factory" in graph["hub_cutinit"]
    # a lazy import inside __getattr__ is an edge:
    assert "hub_cutinit.hub" in graph["hub_cutinit"]
    # registry imports SSLModel under TYPE_CHECKING only:
    assert "hub_cutinit.methods.base" not in graph["hub_cutinit.registry"]


def test_no_import_cycle_in_src():
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import cycle in src/hub_cutinit: " + " -> ".join(cycle))


def test_registry_is_a_leaf():
    tree = ast.parse((ROOT / "registry.py").read_text(encoding="utf-8"))
    ours = []
    for node in _import_nodes(tree):
        names = (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or "." * node.level]
        )
        ours += [n for n in names if n.split(".")[0] == PACKAGE or n.startswith(".")]
        heavy = [n for n in names if n.split(".")[0] in ("torch", "timm")]
        assert not heavy, f"registry.py imports {heavy}; it must stay free of model code"
    assert not ours, f"registry.py imports {ours} from hub_cutinit; it must be a leaf"
