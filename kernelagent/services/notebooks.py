"""A session's conversation as an nbformat 4.5 notebook, and notebooks read back into cells.

Pure: builds and reads ``nbformat`` nodes and bytes; no files, no kernels.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import platform
import re
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import nbformat
import nbformat.reader
import nbformat.v4
import nbformat.v4.convert
from nbformat.v4.nbbase import random_cell_id

from kernelagent.domain import Cell, Role
from kernelagent.services.outputs import PLOTLY_MIME_TYPE, clean_output

__all__ = [
    "CORE_METADATA_KEYS",
    "PLOTLY_JS_CDN",
    "build_notebook",
    "cells_from_notebook",
    "notebook_bytes",
    "notebook_cell_id",
    "plotly_html_fallback",
]

#: plotly.js for the HTML fallback of plotly outputs (JupyterLab draws the mimetype itself).
PLOTLY_JS_CDN = "https://cdn.plot.ly/plotly-2.35.2.min.js"

#: Keys of ``metadata.kernelagent`` that come from the cell itself, not from ``Cell.metadata``.
CORE_METADATA_KEYS = ("role", "status", "started_at", "duration_ms", "index")

_ROLES: frozenset[str] = frozenset(get_args(Role))
_CELL_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ID_UNSAFE_RE = re.compile(r"[^a-zA-Z0-9_-]+")


# --------------------------------------------------------------------------------------------
# Building


def notebook_cell_id(raw: str, salt: str = "") -> str:
    """``raw`` if it is a valid nbformat 4.5 cell id (1–64 of ``[a-zA-Z0-9-_]``), else a valid
    id derived from it deterministically: its safe characters (up to 40) plus 16 hex digits of
    the sha256 of ``raw`` (and ``salt``, used to tell duplicates apart)."""
    if not salt and _CELL_ID_RE.match(raw):
        return raw
    digest = hashlib.sha256(f"{raw}\0{salt}".encode()).hexdigest()[:16]
    stem = _ID_UNSAFE_RE.sub("-", raw).strip("-")[:40]
    return f"{stem}-{digest}" if stem else f"cell-{digest}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _script_json(value: Any) -> str:
    """JSON safe inside an HTML ``<script>``: ``</`` (``<\\/``) cannot close the tag, nor can
    ``<!--`` (``\\u003c!--``) open an HTML comment. Both only occur inside JSON strings."""
    return json.dumps(value).replace("</", "<\\/").replace("<!--", "\\u003c!--")


def plotly_html_fallback(figure: Mapping[str, Any], div_id: str) -> str:
    """A self-contained ``text/html`` rendering of a plotly figure (``{"data", "layout",
    "config"}`` as in ``application/vnd.plotly.v1+json``) for nbconvert's HTML and viewers
    without the plotly mimetype renderer: plotly.js from :data:`PLOTLY_JS_CDN`, then a script
    that draws the figure into its div once ``Plotly`` is there.

    An AMD ``define`` (require.js pages, e.g. classic notebook HTML) is hidden while plotly.js
    loads so that it sets ``window.Plotly``.
    """
    layout = figure.get("layout") if isinstance(figure.get("layout"), Mapping) else {}
    height = layout.get("height") if isinstance(layout, Mapping) else None
    height_css = f"{height}px" if isinstance(height, int | float) and height > 0 else "525px"
    fig_json = _script_json(
        {
            "data": figure.get("data") or [],
            "layout": layout or {},
            "config": figure.get("config") or {},
        }
    )
    id_json = _script_json(div_id)
    return (
        '<script type="text/javascript">'
        "if (window.define && window.define.amd) "
        "{ window.__kernelagentDefine = window.define; window.define = undefined; }"
        "</script>\n"
        f'<script src="{PLOTLY_JS_CDN}" charset="utf-8"></script>\n'
        f'<div id="{html.escape(div_id)}" class="plotly-graph-div" '
        f'style="height:{height_css}; width:100%;"></div>\n'
        '<script type="text/javascript">\n'
        "(function () {\n"
        "  if (window.__kernelagentDefine) {\n"
        "    window.define = window.__kernelagentDefine; delete window.__kernelagentDefine;\n"
        "  }\n"
        f"  var fig = {fig_json};\n"
        f"  var id = {id_json};\n"
        "  var tries = 0;\n"
        "  function draw() {\n"
        "    if (window.Plotly && document.getElementById(id)) {\n"
        "      window.Plotly.newPlot(id, fig.data, fig.layout, fig.config);\n"
        "    } else if (tries++ < 600) {\n"
        "      setTimeout(draw, 50);\n"
        "    }\n"
        "  }\n"
        "  draw();\n"
        "})();\n"
        "</script>\n"
    )


#: Mimetypes only kernelagent's own kernel setup adds (for the agent's view): not exported, so an
#: exported notebook re-run in a plain kernel gives the same outputs.
PRIVATE_MIME_PREFIX = "application/vnd.kernelagent."


def _export_output(output: Mapping[str, Any], div_id: str) -> dict[str, Any]:
    out = clean_output(output)
    data = out.get("data")
    if isinstance(data, dict):
        for mime in [m for m in data if m.startswith(PRIVATE_MIME_PREFIX)]:
            del data[mime]
    if isinstance(data, dict) and "text/html" not in data:
        figure = data.get(PLOTLY_MIME_TYPE)
        if isinstance(figure, Mapping):
            data["text/html"] = plotly_html_fallback(figure, div_id)
    return out


def _cell_metadata(cell: Cell, original_id: str | None) -> dict[str, Any]:
    extra = _jsonable(cell.metadata) if isinstance(cell.metadata, Mapping) else {}
    core = {
        "role": cell.role,
        "status": cell.status,
        "started_at": cell.started_at.isoformat() if cell.started_at is not None else None,
        "duration_ms": cell.duration_ms,
        "index": cell.index,
    }
    meta = {**extra, **core}
    if original_id is not None:
        meta["cell_id"] = original_id
    return meta


def build_notebook(
    cells: Sequence[Cell],
    *,
    title: str,
    session_id: str,
    kernel_display_name: str = "Python 3 (ipykernel)",
    kernel_name: str = "python3",
    language_version: str | None = None,
) -> nbformat.NotebookNode:
    """The session's record as an nbformat 4.5 notebook (valid for ``nbformat.validate``).

    Code cells keep source, outputs (inline; images base64) and execution count; markdown cells
    their source. Every cell gets ``id`` = the domain id (derived with
    :func:`notebook_cell_id` when invalid or repeated; the domain id is then kept as
    ``metadata.kernelagent.cell_id``) and ``metadata.kernelagent`` = ``Cell.metadata`` entries
    plus role, status, started_at (ISO or null), duration_ms and index. Plotly outputs without
    ``text/html`` get :func:`plotly_html_fallback`. ``language_version`` defaults to this
    interpreter's version: the sandboxed kernel runs the server's own environment.

    Cells are built as the dicts ``nbformat.v4.new_code_cell`` makes, without its schema check
    of each one (~0.3 ms a cell, on every save and every cell's answer): outputs are in
    nbformat's shape by construction (``clean_output``).
    """
    nb = nbformat.from_dict({"nbformat": 4, "nbformat_minor": 5, "cells": []})
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": {
                "name": kernel_name,
                "display_name": kernel_display_name,
                "language": "python",
            },
            "language_info": {
                "name": "python",
                "version": language_version or platform.python_version(),
                "mimetype": "text/x-python",
                "file_extension": ".py",
                "codemirror_mode": {"name": "ipython", "version": 3},
                "pygments_lexer": "ipython3",
                "nbconvert_exporter": "python",
            },
            "kernelagent": {"session_id": session_id, "title": title},
        }
    )
    used: set[str] = set()
    for position, cell in enumerate(cells):
        cell_id = notebook_cell_id(cell.id)
        if cell_id in used:
            salt = 0
            while cell_id in used:
                salt += 1
                cell_id = notebook_cell_id(cell.id, f"{position}:{salt}")
        used.add(cell_id)
        nb.cells.append(nbformat.from_dict(notebook_cell(cell, cell_id)))
    return nb


def notebook_cell(cell: Cell, cell_id: str | None = None) -> dict[str, Any]:
    """One cell as ``build_notebook`` writes it, as a plain dict (a cell's answer over HTTP);
    ``cell_id``: the notebook's id for it, by default derived from the domain id."""
    cell_id = cell_id or notebook_cell_id(cell.id)
    original = cell.id if cell_id != cell.id else None
    metadata = {"kernelagent": _cell_metadata(cell, original)}
    if cell.cell_type != "code":
        return {"id": cell_id, "cell_type": "markdown", "metadata": metadata,
                "source": cell.source}  # fmt: skip
    count = cell.execution_count
    return {
        "id": cell_id,
        "cell_type": "code",
        "metadata": metadata,
        "execution_count": count if isinstance(count, int) and count >= 0 else None,
        "source": cell.source,
        "outputs": [
            _export_output(out, f"kernelagent-plotly-{cell_id}-{n}")
            for n, out in enumerate(cell.outputs)
        ],
    }


def notebook_bytes(nb: Mapping[str, Any]) -> bytes:
    """The ``.ipynb`` file: ``nbformat.writes`` (v4) in UTF-8, ending with a newline."""
    text = nbformat.writes(nbformat.from_dict(dict(nb)), version=4)  # from_dict copies containers
    if not text.endswith("\n"):
        text += "\n"
    return text.encode("utf-8")


# --------------------------------------------------------------------------------------------
# Reading


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _read(nb: Any) -> nbformat.NotebookNode:
    """Any notebook (node, dict, JSON text or bytes) as a v4.5 node with valid unique ids."""
    text = nb if isinstance(nb, str | bytes | bytearray) else json.dumps(_plain(nb))
    node = nbformat.reader.reads(text)  # parses any version, rejoins split lines
    node = nbformat.convert(node, 4)  # v1–v3 → v4
    minor = node.get("nbformat_minor", 0)
    if minor < 5:
        node = nbformat.v4.convert.upgrade(node, from_version=4, from_minor=minor)
    seen: set[str] = set()
    for cell in node.cells:
        cell_id = cell.get("id")
        if not isinstance(cell_id, str) or not _CELL_ID_RE.match(cell_id) or cell_id in seen:
            cell_id = random_cell_id()  # a fresh random id, as nbformat's upgrade gives
            while cell_id in seen:
                cell_id = random_cell_id()
            cell["id"] = cell_id
        seen.add(cell_id)
    return node


def cells_from_notebook(nb: Any) -> list[dict[str, Any]]:
    """The cells of any valid ``.ipynb`` (node, dict, JSON text or bytes; v4.x, older versions
    converted by nbformat) as plain dicts for import, in order:

    ``{id, cell_type, source, outputs, execution_count, role, status, metadata}``

    - ``cell_type`` is ``"code"`` or ``"markdown"``; raw cells become markdown with
      ``metadata["raw"] = True``;
    - ``id``: the cell id when valid and unique, else a fresh one (notebooks before 4.5 have
      none; nbformat's upgrade assigns random ids);
    - ``outputs``: valid nbformat output dicts (code cells; ``[]`` otherwise);
    - ``role``: ``metadata.kernelagent.role`` when it is a known role, else ``"web"`` for code
      and ``"user"`` for markdown; ``status``: ``metadata.kernelagent.status`` or ``None``;
    - ``metadata``: the other ``metadata.kernelagent`` entries (turn_id, tool_call_id, ...),
      i.e. what goes back into ``Cell.metadata``.
    """
    node = _read(nb)
    cells: list[dict[str, Any]] = []
    for cell in node.cells:
        kind = cell.get("cell_type")
        source = cell.get("source", "")
        if not isinstance(source, str):
            source = "".join(source)
        meta = cell.get("metadata", {}).get("kernelagent")
        meta = _plain(meta) if isinstance(meta, Mapping) else {}
        is_code = kind == "code"
        role = meta.get("role")
        if role not in _ROLES:
            role = "web" if is_code else "user"
        status = meta.get("status")
        extra = {k: v for k, v in meta.items() if k not in CORE_METADATA_KEYS}
        if kind == "raw":
            extra["raw"] = True
        outputs: list[dict[str, Any]] = []
        count = None
        if is_code:
            for output in cell.get("outputs", []):
                try:
                    outputs.append(clean_output(output))
                except ValueError:  # an unknown output type: not representable, skip it
                    continue
            count = cell.get("execution_count")
            if not isinstance(count, int) or count < 0:
                count = None
        cells.append(
            {
                "id": cell["id"],
                "cell_type": "code" if is_code else "markdown",
                "source": source,
                "outputs": outputs,
                "execution_count": count,
                "role": role,
                "status": status if isinstance(status, str) else None,
                "metadata": extra,
            }
        )
    return cells
