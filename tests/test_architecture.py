"""Data flows one way: web → services → adapters; the sandbox stands alone (kernelspec only)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kernelagent"

FORBIDDEN = {
    "sandbox": ("kernelagent.",),  # except kernelagent.sandbox itself, checked below
    "services": ("kernelagent.web", "kernelagent.adapters", "kernelagent.sandbox", "tornado"),
    "adapters": ("kernelagent.web", "kernelagent.services", "kernelagent.sandbox", "tornado.web"),
    "web": ("kernelagent.adapters", "kernelagent.sandbox"),
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layers_import_only_downwards():
    problems = []
    for layer, forbidden in FORBIDDEN.items():
        for path in (PACKAGE / layer).rglob("*.py"):
            for name in imports(path):
                if layer == "sandbox" and name.startswith("kernelagent.sandbox"):
                    continue
                if name.startswith(forbidden):
                    problems.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not problems, "\n".join(problems)


def test_nothing_outside_the_sandbox_imports_it():
    for path in PACKAGE.rglob("*.py"):
        if "sandbox" in path.relative_to(PACKAGE).parts:
            continue
        assert not any(n.startswith("kernelagent.sandbox") for n in imports(path)), path
