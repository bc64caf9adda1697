"""The session record as nbformat 4.5, and notebooks read back into cells."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import json
import re

import nbformat
import nbformat.v4
import pytest

from kernelagent.domain import Cell
from kernelagent.services.notebooks import (
    PLOTLY_JS_CDN,
    build_notebook,
    cells_from_notebook,
    notebook_bytes,
    notebook_cell,
    notebook_cell_id,
    plotly_html_fallback,
)
from kernelagent.services.outputs import OutputCollector

PLOTLY = "application/vnd.plotly.v1+json"
SESSION = "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
START = dt.datetime(2025, 3, 1, 12, 30, 5, 250000, tzinfo=dt.UTC)


def png_b64() -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=50)
    fig.add_subplot().plot([0, 1, 2], [2, 0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def plotly_data(title: str = "sales") -> dict:
    import numpy as np
    import plotly.graph_objects as go
    import plotly.io as pio

    fig = go.Figure(
        go.Scatter(x=np.arange(3), y=np.array([1.5, 2.0, 0.5])), layout={"title": {"text": title}}
    )
    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(fig)
    bundle["text/plain"] = "Figure({...})"
    return json.loads(json.dumps(bundle))


def collect(*messages: tuple[str, dict]) -> list[dict]:
    collector = OutputCollector()
    for msg_type, content in messages:
        collector.feed(msg_type, content)
    return collector.outputs


def cell(index: int, cell_type: str = "code", **kw) -> Cell:
    values = {
        "id": f"00000000-0000-4000-8000-{index:012d}",
        "session_id": SESSION,
        "index": index,
        "cell_type": cell_type,
        "source": "",
        "role": "agent" if cell_type == "code" else "user",
        "outputs": [],
        "execution_count": None,
        "status": "ok",
        "started_at": None,
        "duration_ms": None,
        "metadata": {},
    }
    values.update(kw)
    return Cell(**values)


def conversation() -> list[Cell]:
    traceback = [
        "\x1b[0;31mKeyError\x1b[0m                      Traceback (most recent call last)",
        "\x1b[0;31mKeyError\x1b[0m: 'prix'",
    ]
    return [
        cell(0, "markdown", source="Montre-moi les ventes par région 📈 — données « été »"),
        cell(
            1,
            source="import pandas as pd\ndf = pd.read_csv('ventes.csv')\ndf.head(2)",
            execution_count=1,
            started_at=START,
            duration_ms=412,
            metadata={"turn_id": "t1", "tool_call_id": "call_abc"},
            outputs=collect(
                ("stream", {"name": "stdout", "text": "(120, 4)\n"}),
                (
                    "execute_result",
                    {
                        "data": {
                            "text/plain": "  région  prix\n0  Île  1.5",
                            "text/html": "<table><tr><td>Île</td><td>1.5</td></tr></table>",
                        },
                        "metadata": {},
                        "execution_count": 1,
                    },
                ),
            ),
        ),
        cell(
            2,
            source="df['prix'].sum()",
            execution_count=2,
            status="error",
            started_at=START,
            duration_ms=9,
            outputs=collect(
                ("error", {"ename": "KeyError", "evalue": "'prix'", "traceback": traceback})
            ),
        ),
        cell(
            3,
            source="fig, ax = plt.subplots()\nax.plot([0, 1, 2], [2, 0, 1])",
            execution_count=3,
            outputs=collect(
                (
                    "display_data",
                    {
                        "data": {"image/png": png_b64(), "text/plain": "<Figure size 100x75>"},
                        "metadata": {},
                        "transient": {},
                    },
                ),
            ),
        ),
        cell(
            4,
            source="px.scatter(df)",
            execution_count=4,
            role="web",
            outputs=collect(("display_data", {"data": plotly_data(), "metadata": {}})),
        ),
        cell(5, "markdown", role="assistant", source="Voilà : **Île** domine. $\\alpha$"),
        cell(6, source="while True: pass", status="pending", role="gateway"),
    ]


def test_built_notebook_is_valid_nbformat_4_5_with_kernel_metadata():
    nb = build_notebook(conversation(), title="Ventes 2025", session_id=SESSION)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    assert nb.metadata.kernelspec == {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    info = nb.metadata.language_info
    assert info["name"] == "python"
    assert re.fullmatch(r"3\.\d+\.\d+.*", info["version"])
    assert info["mimetype"] == "text/x-python"
    assert info["file_extension"] == ".py"
    assert info["codemirror_mode"] == {"name": "ipython", "version": 3}
    assert info["pygments_lexer"] == "ipython3"
    assert info["nbconvert_exporter"] == "python"
    assert nb.metadata.kernelagent == {"session_id": SESSION, "title": "Ventes 2025"}


def test_a_cell_alone_is_the_cell_the_notebook_holds():
    """A cell's HTTP answer (``notebook_cell``) is the cell as the exported notebook has it."""
    cells = conversation()
    nb = build_notebook(cells, title="t", session_id=SESSION)
    assert [notebook_cell(c) for c in cells] == nb.cells
    odd = dataclasses.replace(cells[1], id="not a valid id!")
    alone = notebook_cell(odd)
    assert alone == build_notebook([odd], title="t", session_id=SESSION).cells[0]
    assert alone["id"] != odd.id and alone["metadata"]["kernelagent"]["cell_id"] == odd.id


def test_kernel_arguments():
    nb = build_notebook(
        [],
        title="t",
        session_id=SESSION,
        kernel_display_name="My kernel",
        kernel_name="kernelagent-python3",
        language_version="3.12.1",
    )
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "kernelagent-python3"
    assert nb.metadata.kernelspec.display_name == "My kernel"
    assert nb.metadata.language_info.version == "3.12.1"
    assert nb.cells == []


def test_cells_keep_their_content_ids_and_kernelagent_metadata():
    cells = conversation()
    nb = build_notebook(cells, title="t", session_id=SESSION)
    assert [c.cell_type for c in nb.cells] == [
        "markdown",
        "code",
        "code",
        "code",
        "code",
        "markdown",
        "code",
    ]
    for domain, node in zip(cells, nb.cells, strict=True):
        assert node.id == domain.id
        assert node.source == domain.source
        meta = node.metadata.kernelagent
        assert meta["role"] == domain.role
        assert meta["status"] == domain.status
        assert meta["index"] == domain.index
        assert meta["duration_ms"] == domain.duration_ms
        if node.cell_type == "code":
            assert node.execution_count == domain.execution_count
        else:
            assert "outputs" not in node
    first = nb.cells[1].metadata.kernelagent
    assert first == {
        "turn_id": "t1",
        "tool_call_id": "call_abc",
        "role": "agent",
        "status": "ok",
        "started_at": "2025-03-01T12:30:05.250000+00:00",
        "duration_ms": 412,
        "index": 1,
    }
    assert nb.cells[0].metadata.kernelagent["started_at"] is None
    assert nb.cells[1].outputs[0] == {
        "output_type": "stream",
        "name": "stdout",
        "text": "(120, 4)\n",
    }
    assert nb.cells[1].outputs[1].execution_count == 1
    assert nb.cells[2].outputs[0].ename == "KeyError"
    assert nb.cells[3].outputs[0].data["image/png"] == cells[3].outputs[0]["data"]["image/png"]
    assert nb.cells[6].outputs == [] and nb.cells[6].execution_count is None


def test_core_metadata_wins_over_extras_and_values_become_json():
    c = cell(0, metadata={"role": "spoofed", "when": START, "tags": ("a", "b")})
    nb = build_notebook([c], title="t", session_id=SESSION)
    nbformat.validate(nb)
    meta = nb.cells[0].metadata.kernelagent
    assert meta["role"] == "agent"
    assert meta["when"] == START.isoformat()
    assert meta["tags"] == ["a", "b"]


def test_round_trip_through_bytes():
    nb = build_notebook(conversation(), title="Ventes « été » 📈", session_id=SESSION)
    raw = notebook_bytes(nb)
    assert isinstance(raw, bytes) and raw.endswith(b"\n")
    text = raw.decode("utf-8")
    assert "Montre-moi les ventes par région 📈" in text  # UTF-8, not \u escapes
    again = nbformat.reads(raw, as_version=4)
    nbformat.validate(again)
    assert again == nb
    assert notebook_bytes(again) == raw


def test_plotly_outputs_get_an_html_fallback():
    cells = conversation()
    nb = build_notebook(cells, title="t", session_id=SESSION)
    output = nb.cells[4].outputs[0]
    figure = cells[4].outputs[0]["data"][PLOTLY]
    assert output.data[PLOTLY] == figure  # the mimetype for JupyterLab stays
    fallback = output.data["text/html"]
    assert f'<script src="{PLOTLY_JS_CDN}"' in fallback
    assert PLOTLY_JS_CDN == "https://cdn.plot.ly/plotly-2.35.2.min.js"
    div_id = f"kernelagent-plotly-{cells[4].id}-0"
    assert f'<div id="{div_id}"' in fallback
    assert "Plotly.newPlot" in fallback
    (fig_json,) = re.findall(r"var fig = (.*);\n", fallback)
    assert json.loads(fig_json) == {
        "data": figure["data"],
        "layout": figure["layout"],
        "config": {},
    }
    # the domain cell is not changed by the export
    assert "text/html" not in cells[4].outputs[0]["data"]
    # deterministic
    again = build_notebook(cells, title="t", session_id=SESSION)
    assert notebook_bytes(again) == notebook_bytes(nb)


def test_plotly_fallback_json_cannot_close_the_script_tag():
    evil = "</script><script>alert('x')</script><!--"
    figure = {"data": [{"type": "bar", "name": evil, "y": [1]}], "layout": {"height": 300}}
    html = plotly_html_fallback(figure, "fig-1")
    assert evil not in html
    assert html.count("</script>") == 3  # the three script tags of the fallback itself
    assert 'style="height:300px; width:100%;"' in html
    (fig_json,) = re.findall(r"var fig = (.*);\n", html)
    assert json.loads(fig_json)["data"][0]["name"] == evil


def test_existing_html_is_kept_and_mimebundles_without_plotly_untouched():
    data = {PLOTLY: {"data": [], "layout": {}}, "text/html": "<div>own</div>"}
    c = cell(0, outputs=[{"output_type": "display_data", "data": data, "metadata": {}}])
    d = cell(1, outputs=[{"output_type": "display_data", "data": {"text/html": "<b>x</b>"}}])
    nb = build_notebook([c, d], title="t", session_id=SESSION)
    nbformat.validate(nb)
    assert nb.cells[0].outputs[0].data["text/html"] == "<div>own</div>"
    assert nb.cells[1].outputs[0].data == {"text/html": "<b>x</b>"}
    assert nb.cells[1].outputs[0].metadata == {}


def test_stored_outputs_with_transient_or_split_text_are_cleaned():
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
        {
            "output_type": "display_data",
            "data": {"text/plain": ["x", "y"]},
            "metadata": {},
            "transient": {"display_id": "d"},
        },
    ]
    nb = build_notebook([cell(0, outputs=outputs)], title="t", session_id=SESSION)
    nbformat.validate(nb)
    assert nb.cells[0].outputs[0].text == "a\nb\n"
    assert "transient" not in nb.cells[0].outputs[1]


@pytest.mark.parametrize(
    "raw",
    ["cell 1/α", "", "x" * 65, "has.dot", "ok-id_1"],
)
def test_cell_ids_are_valid_and_derived_deterministically(raw):
    derived = notebook_cell_id(raw)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", derived)
    assert notebook_cell_id(raw) == derived
    if raw == "ok-id_1":
        assert derived == raw
    else:
        assert derived != raw


def test_invalid_and_duplicate_domain_ids_get_valid_unique_ids():
    cells = [
        cell(0, id="turn 1 / step α"),
        cell(1, id="dup"),
        cell(2, id="dup"),
        cell(3, "markdown", id="dup"),
    ]
    nb = build_notebook(cells, title="t", session_id=SESSION)
    nbformat.validate(nb)
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == 4
    assert ids[0] == notebook_cell_id("turn 1 / step α") and ids[0].startswith("turn-1-step")
    assert ids[1] == "dup"
    assert nb.cells[0].metadata.kernelagent["cell_id"] == "turn 1 / step α"
    assert nb.cells[2].metadata.kernelagent["cell_id"] == "dup"
    assert "cell_id" not in nb.cells[1].metadata.kernelagent
    assert [c.id for c in build_notebook(cells, title="t", session_id=SESSION).cells] == ids


# -- reading --------------------------------------------------------------------------------

V40_NOTEBOOK = {
    "nbformat": 4,
    "nbformat_minor": 0,
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Title\n", "Some text"]},
        {
            "cell_type": "code",
            "metadata": {"collapsed": False},
            "source": ["x = 1\n", "print(x)"],
            "execution_count": 3,
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["1\n"]},
                {
                    "output_type": "execute_result",
                    "execution_count": 3,
                    "metadata": {},
                    "data": {"text/plain": ["1"], "application/json": {"a": 1}},
                },
                {
                    "output_type": "display_data",
                    "metadata": {},
                    "data": {"image/png": "iVBORw0KGgo=\n"},
                },
            ],
        },
        {"cell_type": "raw", "metadata": {"format": "text/latex"}, "source": "\\LaTeX"},
        {"cell_type": "code", "metadata": {}, "source": "", "execution_count": None, "outputs": []},
    ],
}


@pytest.mark.parametrize("form", ["dict", "json", "bytes", "node"])
def test_reads_a_v4_0_notebook_without_ids(form):
    source = {
        "dict": V40_NOTEBOOK,
        "json": json.dumps(V40_NOTEBOOK),
        "bytes": json.dumps(V40_NOTEBOOK).encode(),
        "node": nbformat.from_dict(V40_NOTEBOOK),
    }[form]
    cells = cells_from_notebook(source)
    assert [c["cell_type"] for c in cells] == ["markdown", "code", "markdown", "code"]
    ids = [c["id"] for c in cells]
    assert len(set(ids)) == 4
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids)
    md, code, raw, empty = cells
    assert md == {
        "id": md["id"],
        "cell_type": "markdown",
        "source": "# Title\nSome text",
        "outputs": [],
        "execution_count": None,
        "role": "user",
        "status": None,
        "metadata": {},
    }
    assert code["source"] == "x = 1\nprint(x)"
    assert code["role"] == "web"
    assert code["execution_count"] == 3
    assert code["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "1\n"},
        {
            "output_type": "execute_result",
            "execution_count": 3,
            "metadata": {},
            "data": {"text/plain": "1", "application/json": {"a": 1}},
        },
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=\n"}},
    ]
    assert raw["source"] == "\\LaTeX" and raw["metadata"] == {"raw": True}
    assert raw["role"] == "user"
    assert empty["execution_count"] is None and empty["outputs"] == []
    # plain dicts, not NotebookNodes, and the input is untouched
    assert type(code["outputs"][0]) is dict
    assert "id" not in V40_NOTEBOOK["cells"][0]
    # the outputs are valid nbformat as they are
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(code["source"], outputs=code["outputs"]))
    nbformat.validate(nb)


def test_reads_back_what_it_exported():
    cells = conversation()
    records = cells_from_notebook(notebook_bytes(build_notebook(cells, title="t", session_id="s")))
    assert [r["id"] for r in records] == [c.id for c in cells]
    assert [r["role"] for r in records] == [c.role for c in cells]
    assert [r["status"] for r in records] == [c.status for c in cells]
    assert [r["source"] for r in records] == [c.source for c in cells]
    assert [r["execution_count"] for r in records] == [c.execution_count for c in cells]
    assert records[1]["metadata"] == {"turn_id": "t1", "tool_call_id": "call_abc"}
    assert records[1]["outputs"] == cells[1].outputs
    assert records[2]["outputs"] == cells[2].outputs
    assert records[4]["outputs"][0]["data"][PLOTLY] == cells[4].outputs[0]["data"][PLOTLY]


def test_reads_a_4_5_notebook_with_duplicate_ids_and_unknown_roles():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("a", id="same", metadata={"kernelagent": {"role": "hacker"}}),
        nbformat.v4.new_markdown_cell("b", id="same"),
    ]
    cells = cells_from_notebook(nb)
    assert cells[0]["id"] == "same" and cells[1]["id"] != "same"
    assert cells[0]["role"] == "web" and cells[1]["role"] == "user"
