"""Arrows point down only: the library never imports its task layers.

opskit/tasks (invoke) and opskit/remote (fabric) are thin layers that parse, call the
library, print and exit. Nothing else in opskit/ may import them, at the top of a module
or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

OPSKIT = Path(__file__).resolve().parents[2] / "opskit"
LAYERS = ("opskit.tasks", "opskit.remote")


def imported_modules(path: Path, root: Path = OPSKIT) -> list[tuple[int, str]]:
    """(line, module) for every import in a file, `from opskit import tasks` as opskit.tasks."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[: len(parts) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def upward_imports(root: Path = OPSKIT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tasks", "remote"):
            continue
        for line, module in imported_modules(path, root):
            if any(module == layer or module.startswith(layer + ".") for layer in LAYERS):
                bad.append(f"opskit/{rel}:{line} imports {module}")
    return bad


def test_the_library_never_imports_the_task_layers():
    assert upward_imports() == []


def test_an_upward_import_is_found(tmp_path):
    # the check itself can fail: a copy of the tree with one upward import in the library
    lib = tmp_path / "opskit"
    (lib / "deploy").mkdir(parents=True)
    (lib / "tasks").mkdir()
    (lib / "deploy" / "steps.py").write_text("def f():\n    from ..remote import backup\n")
    (lib / "health.py").write_text("import opskit.tasks._common\nfrom opskit import remote\n")
    (lib / "tasks" / "dev.py").write_text("from opskit.remote import deploy\n")  # allowed
    assert upward_imports(lib) == [
        "opskit/deploy/steps.py:2 imports opskit.remote",
        "opskit/deploy/steps.py:2 imports opskit.remote.backup",
        "opskit/health.py:1 imports opskit.tasks._common",
        "opskit/health.py:2 imports opskit.remote",
    ]
