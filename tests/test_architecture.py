"""Data flows one way: web → services → adapters; the sandbox stands alone (kernelspec only)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kernelagent"

FORBIDDEN = {
    "sandbox": ("kernelagent.",),  # except kernelagent.sandbox itself, checked below
    "kernelside": ("kernelagent.",),  # runs in the kernel: only itself
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


def within(name: str, package: str) -> bool:
    """``name`` is ``package`` or one of its modules ("tornado.websocket" is not "tornado.web")."""
    prefix = package if package.endswith(".") else f"{package}."
    return name == package.rstrip(".") or name.startswith(prefix)


def test_layers_import_only_downwards():
    problems = []
    for layer, forbidden in FORBIDDEN.items():
        for path in (PACKAGE / layer).rglob("*.py"):
            for name in imports(path):
                if layer in ("sandbox", "kernelside") and name.startswith(f"kernelagent.{layer}"):
                    continue
                if any(within(name, package) for package in forbidden):
                    problems.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not problems, "\n".join(problems)


def test_nothing_outside_the_sandbox_imports_it():
    for path in PACKAGE.rglob("*.py"):
        if "sandbox" in path.relative_to(PACKAGE).parts:
            continue
        assert not any(n.startswith("kernelagent.sandbox") for n in imports(path)), path


# What drives a kernel (jupyter_client's managers, clients and Session, ZMQ, nbclient) belongs to
# the kernel adapters and the sandbox: everything else speaks the ``KernelBackend`` port.
KERNEL_MACHINERY = (
    "zmq",
    "nbclient",
    "jupyter_client.manager",
    "jupyter_client.multikernelmanager",
    "jupyter_client.client",
    "jupyter_client.asynchronous",
    "jupyter_client.blocking",
    "jupyter_client.threaded",
    "jupyter_client.channels",
    "jupyter_client.session",
    "jupyter_client.ioloop",
)
KERNEL_MACHINERY_NAMES = {
    "KernelManager",
    "AsyncKernelManager",
    "MultiKernelManager",
    "AsyncMultiKernelManager",
    "KernelClient",
    "AsyncKernelClient",
    "BlockingKernelClient",
    "Session",
    "launch_kernel",
}


def kernel_machinery(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(KERNEL_MACHINERY)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(KERNEL_MACHINERY):
                found.append(node.module)
            elif node.module == "jupyter_client":
                found += [
                    f"jupyter_client.{a.name}"
                    for a in node.names
                    if a.name in KERNEL_MACHINERY_NAMES
                ]
    return found


def test_only_the_kernel_adapters_drive_kernels():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0]
        if layer in ("adapters", "sandbox"):
            continue
        problems += [f"{path.relative_to(PACKAGE)} imports {n}" for n in kernel_machinery(path)]
    assert not problems, "\n".join(problems)


def test_the_machinery_check_sees_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import zmq\nfrom jupyter_client import AsyncKernelClient, kernelspec\n"
        "from jupyter_client.session import Session\nfrom nbclient import NotebookClient\n"
    )
    assert kernel_machinery(sample) == [
        "zmq",
        "jupyter_client.AsyncKernelClient",
        "jupyter_client.session",
        "nbclient",
    ]
