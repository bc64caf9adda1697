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

_PROBE_CODE = r"""
import csv, json, os
import importlib.metadata as md
files = []
for root, dirs, names in os.walk("."):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
        if name.startswith(".") or len(files) >= 200:
            continue
        path = os.path.join(root, name)
        try:
            size = os.path.getsize(path)
        except OSError:
            continue
        columns, low = None, name.lower()
        try:
            if low.endswith((".csv", ".tsv")):
                with open(path, newline="", encoding="utf-8", errors="replace") as f:
                    columns = next(csv.reader(f, delimiter="\t" if low.endswith(".tsv") else ","))
            elif low.endswith(".parquet"):
                import pyarrow.parquet as pq
                columns = pq.read_schema(path).names
        except Exception:
            columns = None
        files.append(
            {"path": os.path.relpath(path, "."), "size": size, "columns": (columns or [])[:50]}
        )
libraries = []
for name in ("numpy", "pandas", "matplotlib", "plotly", "scipy", "scikit-learn", "seaborn",
             "statsmodels", "pyarrow", "polars", "sympy", "networkx"):
    try:
        libraries.append(name + " " + md.version(name))
    except Exception:
        pass
result = json.dumps({"files": files, "libraries": libraries})
"""

#: An expression, evaluated in the kernel, whose value is the JSON text of the workspace's files
#: and the kernel's libraries; it runs in a namespace of its own (no names left behind).
WORKSPACE_PROBE = f"(lambda g: (exec({_PROBE_CODE!r}, g), g['result'])[1])({{}})"

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


def system_prompt(workspace: dict[str, Any], cell_timeout: float, memory_limit: int) -> str:
    files = [
        {**f, "size_text": human_size(int(f.get("size", 0)))} for f in workspace.get("files", [])
    ]
    return _environment.get_template("system.md.j2").render(
        files=files,
        libraries=workspace.get("libraries", []),
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
