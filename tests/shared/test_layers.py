"""Each package imports only what its docstring allows: no upward imports between planes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Package → packages it must never import (see each package's __init__ docstring).
FORBIDDEN = {
    "gateway/proxy": (
        "gateway.containers",
        "gateway.sessions",
        "gateway.api",
        "gateway.controller",
    ),
    "gateway/containers": (
        "gateway.controller",
        "gateway.proxy",
        "gateway.api",
        "gateway.sessions",
    ),
    "gateway/sessions": ("gateway.api", "gateway.controller"),
    "gateway/observability": ("gateway.proxy", "gateway.controller", "gateway.api"),
    "gateway/api": ("gateway.controller",),
    "gateway/controller": ("gateway.proxy", "gateway.api"),
    "shared": ("gateway", "supervisor"),
    "supervisor": ("gateway",),
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_what_its_docstring_forbids(package: str) -> None:
    paths = sorted((ROOT / package).rglob("*.py"))
    assert paths
    wrong = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in paths
        for name in sorted(imports(path))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert not wrong
