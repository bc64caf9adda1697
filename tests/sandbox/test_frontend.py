"""What a frontend gets from a sandboxed kernel: rich outputs and stdin."""

from __future__ import annotations

import base64
import textwrap

import pytest

from .conftest import Sandbox

pytestmark = pytest.mark.sandbox

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_matplotlib_show_is_a_png(sandbox: Sandbox) -> None:
    code = textwrap.dedent("""
        import matplotlib.pyplot as plt
        plt.plot([1, 2, 3], [1, 4, 9])
        plt.show()
    """)
    result = await sandbox.run(code, timeout=60)  # first import builds the font cache
    assert result.status == "ok", result.describe()
    pngs = [
        d["data"]["image/png"] for d in result.of_type("display_data") if "image/png" in d["data"]
    ]
    assert len(pngs) == 1, result.outputs
    assert base64.b64decode(pngs[0]).startswith(PNG_MAGIC)


async def test_dataframe_is_html(sandbox: Sandbox) -> None:
    result = await sandbox.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert result.status == "ok", result.describe()
    (execute_result,) = result.of_type("execute_result")
    html = execute_result["data"]["text/html"]
    assert "<table" in html
    assert "<td>x</td>" in html


async def test_plotly_show_is_plotly_json(sandbox: Sandbox) -> None:
    code = textwrap.dedent("""
        import plotly.graph_objects as go
        fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))
        fig.show()
    """)
    result = await sandbox.run(code, timeout=60)
    assert result.status == "ok", result.describe()
    figures = [
        d["data"]["application/vnd.plotly.v1+json"]
        for d in result.of_type("display_data")
        if "application/vnd.plotly.v1+json" in d["data"]
    ]
    assert len(figures) == 1, result.outputs
    assert figures[0]["data"][0]["type"] == "scatter"


async def test_input_round_trips_over_stdin(sandbox: Sandbox) -> None:
    client = sandbox.client
    prompts: list[str] = []

    def answer(msg: dict) -> None:
        prompts.append(msg["content"]["prompt"])
        client.input("Ada")

    result = await sandbox.run(
        "name = input('Your name? ')\nprint('hello', name)", allow_stdin=True, stdin_hook=answer
    )
    assert result.status == "ok", result.describe()
    assert prompts == ["Your name? "]
    assert "hello Ada\n" in result.stdout
