"""No function in hub_cutinit is longer than MAX_LINES (issue 11: small functions).

Length is ``end_lineno - lineno + 1`` of the ``def`` (decorators excluded, docstring and
nested functions included); methods and nested functions are checked too.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

MAX_LINES = 80


def _package_dir() -> Path:
    spec = importlib.util.find_spec("hub_cutinit")  # finds the package without importing torch
    assert spec is not None and spec.submodule_search_locations, "hub_cutinit is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def long_functions(source: str, name: str, limit: int = MAX_LINES) -> list[tuple[int, str]]:
    """``(lines, "file:line function")`` of every function in ``source`` over ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((length, f"{name}:{node.lineno} {node.name}"))
    return found


def test_long_functions_finds_a_long_function_and_only_it() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = f"def short():\n    return 1\n\n\ndef long():\n{body}\n"
    assert long_functions(source, "m.py") == [(MAX_LINES + 1, "m.py:5 long")]
    assert long_functions(source, "m.py", limit=MAX_LINES + 1) == []


def test_no_function_in_the_package_is_longer_than_the_limit() -> None:
    root = _package_dir()
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 20, f"found only {len(modules)} modules under {root}"
    found = []
    for path in modules:
        found += long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(root)))
    report = "\n".join(f"  {n} lines: {where}" for n, where in sorted(found, reverse=True))
    assert not found, (
        f"functions longer than {MAX_LINES} lines (split them into named helpers):\n{report}"
    )
