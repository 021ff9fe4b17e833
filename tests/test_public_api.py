"""The public surface and the habits that keep it.

- Every module declares its public names in ``__all__`` (what ``from m import *`` and the docs
  show); a name outside ``__all__`` is internal to its module.
- No module reaches into another module's internals: no ``from hub_cutinit.x import _name``
  and no ``module._name`` of the package across modules.
- No private name of another library where a public one exists: the few exceptions are listed
  below with the reason (no public equivalent).
- The names users call (README) stay importable from where the README says.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hub_cutinit"
MODULES = sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)
LIBRARIES = {"torch", "timm", "accelerate", "datasets", "transformers", "huggingface_hub", "np"}
#: Private names of other libraries still used, each because no public equivalent exists.
ALLOWED_PRIVATE = {
    ("hub/serialization.py", "timm.models._hub"): "save_config_for_hf: timm exports no "
    "config-only save (save_for_hf also writes the weights)",
    ("methods/base.py", "torch._foreach_lerp_"): "the EMA in one fused kernel; the public "
    "swa_utils.get_ema_multi_avg_fn needs torch 2.2 (the project supports 2.1)",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_module_declares_its_public_names(path: Path) -> None:
    if path.name in ("__main__.py", "_version.py"):
        return
    names = {
        target.id
        for node in _tree(path).body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    assert "__all__" in names, f"{path.relative_to(SRC)} has no __all__"
    module = importlib.import_module(_module_name(path))
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{path.relative_to(SRC)}: __all__ names {missing} that do not exist"


def _private_package_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hub_cutinit"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"from {node.module} import {alias.name}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_another_modules_private_names(path: Path) -> None:
    assert _private_package_imports(path) == []


def _private_library_names(path: Path) -> set[str]:
    """``lib._name`` attributes and ``from lib._module import ...`` of the big libraries."""
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module:
            root, *rest = node.module.split(".")
            if root in LIBRARIES and any(p.startswith("_") for p in rest):
                found.add(node.module)
            for alias in node.names:
                if root in LIBRARIES and alias.name.startswith("_"):
                    found.add(f"{node.module}.{alias.name}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if not node.attr.startswith("__") and isinstance(node.value, ast.Name):
                if node.value.id in LIBRARIES:
                    found.add(f"{node.value.id}.{node.attr}")
    return found


def test_no_private_names_of_other_libraries_beyond_the_listed_exceptions() -> None:
    used = {
        (str(path.relative_to(SRC)), name)
        for path in MODULES
        for name in _private_library_names(path)
    }
    unlisted = sorted(used - set(ALLOWED_PRIVATE))
    assert unlisted == [], f"private names of other libraries: {unlisted}"
    stale = sorted(set(ALLOWED_PRIVATE) - used)
    assert stale == [], f"listed exceptions no longer used (drop them): {stale}"


def test_the_names_the_readme_uses_are_public() -> None:
    import hub_cutinit
    import hub_cutinit.training as training

    for name in ("cut_init", "create_ssl_model", "ConvergenceMonitor", "list_methods"):
        assert name in hub_cutinit.__all__
    for name in ("train", "main", "TrainConfig", "Trainer", "TrainerCallback", "RunRecord"):
        assert name in training.__all__
    assert callable(hub_cutinit.load_ssl_model)  # lazily loaded
    from hub_cutinit.integrations.transformers import ConvergenceMonitorCallback

    assert ConvergenceMonitorCallback.__module__ == "hub_cutinit.integrations.transformers"
