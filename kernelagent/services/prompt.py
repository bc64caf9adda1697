"""The system prompt: a jinja2 template told what the kernel has (files, columns, libraries).

What is in the workspace is asked of the kernel itself (``WORKSPACE_PROBE``, evaluated silently):
the sandboxed kernel reads the user's files, not the server, and it knows which libraries it can
import.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import jinja2

from kernelagent.kernelside import probe

#: An expression, evaluated in the kernel, whose value is the JSON text of the workspace's files
#: and the kernel's libraries (``kernelside.probe``); no name is left behind.
WORKSPACE_PROBE = probe.EXPRESSION

_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("kernelagent", "prompts"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # a prompt is plain text, not HTML
)


def parse_probe(text_plain: str) -> dict[str, Any]:
    """The probe's value as the kernel displayed it (the repr of a str) → its JSON."""
    value = ast.literal_eval(text_plain)
    return json.loads(value)  # type: ignore[no-any-return]


def system_prompt(
    workspace: dict[str, Any], cell_timeout: float, memory_limit: int, packages: str = "off"
) -> str:
    """``packages``: what ``%pip install`` may install (any, "only a, b", off); a kernel that
    has no package directory (``can_install`` false in the probe) can install nothing."""
    files = [
        {**f, "size_text": human_size(int(f.get("size", 0)))} for f in workspace.get("files", [])
    ]
    return _environment.get_template("system.md.j2").render(
        files=files,
        libraries=workspace.get("libraries", []),
        installed=workspace.get("packages", {}),
        packages=packages if workspace.get("can_install") else "off",
        cell_timeout=cell_timeout,
        memory=human_size(memory_limit),
    )


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"
