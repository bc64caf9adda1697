"""``workspace()``: the JSON text of the workspace's files (with the columns of tables) and the
kernel's libraries, for the agent's system prompt.

The server evaluates ``EXPRESSION`` silently (``user_expressions``): the sandboxed kernel reads the
user's files, not the server, and it knows which libraries it can import.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import stat
from typing import Any

from kernelagent.kernelside import packages

MAX_FILES, MAX_COLUMNS = 200, 50
LIBRARIES = (
    "numpy",
    "pandas",
    "matplotlib",
    "plotly",
    "scipy",
    "scikit-learn",
    "seaborn",
    "statsmodels",
    "pyarrow",
    "polars",
    "duckdb",
    "sympy",
    "networkx",
)

#: What the server evaluates in the kernel; leaves no name in the user's namespace.
EXPRESSION = f'__import__("{__name__}", fromlist=["workspace"]).workspace()'


def columns(path: str) -> list[str]:
    """The column names of a CSV, TSV or Parquet file (none for other files or on failure)."""
    low = path.lower()
    try:
        if low.endswith((".csv", ".tsv")):
            # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
            with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
                delimiter = "\t" if low.endswith(".tsv") else ","
                return next(csv.reader(f, delimiter=delimiter), [])[:MAX_COLUMNS]
        if low.endswith(".parquet"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)[:MAX_COLUMNS]
    except Exception:  # noqa: BLE001 - a file that cannot be read has no columns to tell
        return []
    return []


def files(root: str = ".") -> list[dict[str, Any]]:
    """Up to ``MAX_FILES`` regular files under ``root``, hidden ones left out, in a stable
    order (each directory's files, then its subdirectories). A FIFO, socket or device is never
    opened: reading one would block the kernel."""
    found: list[dict[str, Any]] = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            if len(found) >= MAX_FILES:
                return found
            path = os.path.join(directory, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            rel = os.path.relpath(path, root)
            found.append({"path": rel, "size": info.st_size, "columns": columns(path)})
    return found


def libraries() -> list[str]:
    present = []
    for name in LIBRARIES:
        try:
            present.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return present


def workspace() -> str:
    return json.dumps(
        {
            "files": files(),
            "libraries": libraries(),
            "packages": packages.installed(),  # what the session installed with %pip
            "can_install": packages.root() is not None,
        }
    )
