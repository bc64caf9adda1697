"""``/mcp`` driven by the official SDK's own client over Streamable HTTP: tools, resources, long
cells by handle, errors a model can act on, the same sessions as the web API, users apart."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image
from sse import EventStream

pytestmark = pytest.mark.sandbox


@contextlib.asynccontextmanager
async def mcp_client(server, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        streamable_http_client(f"{server.base}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text_of(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def call(client: ClientSession, tool: str, **arguments) -> str:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    return text_of(result)


async def test_a_client_runs_python_in_a_session_the_web_sees_live(ka_server):
    async with mcp_client(ka_server, ka_server.token) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"list_sessions", "create_session", "open_session", "run_python", "get_cell",
                "read_artifact", "list_files", "read_file", "write_file", "upload_from_url",
                "interrupt", "branch", "export_notebook", "replay"} <= names  # fmt: skip
        created = await call(client, "create_session", title="from mcp")
        sid = created.split()[2]
        assert sid in await call(client, "list_sessions")
        events = EventStream(ka_server.port, f"/api/v1/sessions/{sid}/events", ka_server.token)
        async with events:
            answer = await call(client, "run_python", session_id=sid, code="x = 41\nx + 1")
            assert "42" in answer
            seen = await events.until(lambda e: e.type == "cell.completed")
        assert any(e.type == "cell.started" and e.data["code"] == "x = 41\nx + 1" for e in seen)

        await call(client, "write_file", session_id=sid, path="data.csv", content="a,b\n1,2\n")
        assert "data.csv" in await call(client, "list_files", session_id=sid)
        assert await call(client, "read_file", session_id=sid, path="data.csv") == "a,b\n1,2\n"
        answer = await call(
            client, "run_python", session_id=sid,
            code="import pandas as pd\nlen(open('data.csv').read()), x",
        )  # fmt: skip
        assert "(8, 41)" in answer
        web = f"/api/v1/sessions/{sid}/cells"  # and the other way round: the web's cell
        await ka_server.json(web, "POST", {"code": "y = 'typed in the web page'"})
        assert "typed in the web page" in await call(client, "open_session", session_id=sid)
        assert "typed in the web page" in await call(client, "run_python", session_id=sid, code="y")

    cells = await ka_server.json(f"/api/v1/sessions/{sid}/notebook")
    code = [c for c in cells["cells"] if c["cell_type"] == "code"]
    assert "x = 41\nx + 1" in ["".join(c["source"]) for c in code]
    record = await ka_server.services.db.cells.list(sid)
    assert [c.role for c in record if c.cell_type == "code"] == ["mcp", "mcp", "web", "mcp"]


async def test_an_image_comes_back_as_image_content_within_its_size(ka_server):
    async with mcp_client(ka_server, ka_server.token) as client:
        sid = (await call(client, "create_session")).split()[2]
        code = (
            "import matplotlib.pyplot as plt\n"
            "fig = plt.figure(figsize=(30, 20), dpi=100)\nplt.plot([1, 2, 3])\nplt.show()"
        )
        answer = await call(client, "run_python", session_id=sid, code=code)
        artifact_id = re.search(r"artifact ([0-9a-f-]{36})", answer)[1]
        result = await client.call_tool("read_artifact", {"artifact_id": artifact_id})
        assert not result.is_error, text_of(result)
        image = next(b for b in result.content if b.type == "image")
        assert image.mime_type == "image/png"
        with Image.open(io.BytesIO(base64.b64decode(image.data))) as picture:
            assert max(picture.size) <= 1024  # drawn at 3000 × 2000


async def test_a_long_cell_answers_a_handle_to_poll(ka_server):
    async with mcp_client(ka_server, ka_server.token) as client:
        sid = (await call(client, "create_session")).split()[2]
        code = "import time\ntime.sleep(2)\n'slept'"
        answer = await call(client, "run_python", session_id=sid, code=code, wait_seconds=0.3)
        assert "Still running" in answer
        cell_id = answer.split("(id ")[1].split(")")[0]
        done = await call(client, "get_cell", session_id=sid, cell_id=cell_id, wait_seconds=30)
        assert "'slept'" in done and "ok" in done


async def test_errors_come_back_as_tool_errors_and_users_stay_apart(ka_server):
    other = await ka_server.new_user("mallory")
    async with mcp_client(ka_server, ka_server.token) as client:
        sid = (await call(client, "create_session", title="private")).split()[2]
        failed = await call(client, "run_python", session_id=sid, code="1 / 0")
        assert "ZeroDivisionError" in failed  # the cell's error is an answer, not a tool error
        refused = await client.call_tool("upload_from_url", {"session_id": sid, "url": "http://x"})
        assert refused.is_error and "KERNELAGENT_MCP_URL_UPLOADS" in text_of(refused)
    async with mcp_client(ka_server, other) as intruder:
        assert sid not in await call(intruder, "list_sessions")
        result = await intruder.call_tool("run_python", {"session_id": sid, "code": "1"})
        assert result.is_error and "no such session" in text_of(result)
        with pytest.raises(Exception):  # noqa: B017 - the SDK's error for a failed read
            await intruder.read_resource(f"kernelagent://sessions/{sid}/notebook")
    assert len(await ka_server.services.db.cells.list(sid)) == 1  # nothing ran for mallory


async def test_no_token_no_mcp(ka_server):
    answer = await ka_server.fetch("/mcp", "POST", {"jsonrpc": "2.0"}, token=None)
    assert answer.code == 401
    assert json.loads(answer.body)["error"]["code"] == "unauthorized"


async def test_notebooks_are_resources(ka_server):
    async with mcp_client(ka_server, ka_server.token) as client:
        sid = (await call(client, "create_session", title="resourceful")).split()[2]
        await call(client, "run_python", session_id=sid, code="print('hello')")
        listed = await client.list_resources()
        uri = f"kernelagent://sessions/{sid}/notebook"
        assert uri in {str(r.uri) for r in listed.resources}
        read = await client.read_resource(uri)
        notebook = json.loads(read.contents[0].text)
        assert notebook["nbformat"] == 4
        assert any("print('hello')" in "".join(c["source"]) for c in notebook["cells"])
        templates = await client.list_resource_templates()
        assert "kernelagent://artifacts/{artifact_id}" in {
            t.uri_template for t in templates.resource_templates
        }


async def test_kernelagent_mcp_bridges_a_stdio_client_to_the_server(ka_server):
    command = StdioServerParameters(
        command=sys.executable,
        args=["-m", "kernelagent", "mcp", "--url", ka_server.base, "--token", ka_server.token],
        env={**os.environ},
    )
    async with (
        stdio_client(command) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        sid = (await call(client, "create_session", title="over stdio")).split()[2]
        assert "6" in await call(client, "run_python", session_id=sid, code="2 * 3")
        missing = await client.call_tool("open_session", {"session_id": "nope"})
        assert missing.is_error and "no such session" in text_of(missing)
    record = await ka_server.services.db.cells.list(sid)
    assert [c.source for c in record] == ["2 * 3"]


async def test_charts_tables_files_interrupt_branch_and_export_within_their_budgets(ka_server):
    budget = ka_server.services.settings.tool_result_chars
    async with mcp_client(ka_server, ka_server.token) as client:

        async def use(tool: str, **arguments) -> str:
            result = await client.call_tool(tool, arguments)
            assert not result.is_error, text_of(result)
            for block in result.content:
                if block.type == "text":
                    assert len(block.text) <= budget, (tool, len(block.text))
                else:
                    assert len(base64.b64decode(block.data)) <= 512 * 1024
            return text_of(result)

        sid = (await use("create_session", title="charts")).split()[2]
        code = (
            "import pandas as pd, plotly.express as px, matplotlib.pyplot as plt\n"
            "df = pd.DataFrame({'x': range(2000), 'y': [i * i for i in range(2000)]})\n"
            "plt.plot(df.x, df.y); plt.show()\n"
            "px.line(df, x='x', y='y', title='squares').show()\n"
            "df"
        )
        answer = await use("run_python", session_id=sid, code=code)
        first = re.search(r"\(id ([0-9a-f-]{36})\)", answer)[1]
        chart = next(line for line in answer.splitlines() if "plotly" in line.lower())
        chart_id = re.search(r"artifact ([0-9a-f-]{36})", chart)[1]
        assert "squares" in await use("read_artifact", artifact_id=chart_id)
        assert "2000" in answer  # the DataFrame's shape, in the summary

        await use("write_file", session_id=sid, path="notes.txt", content="n" * (budget * 3))
        assert len(await use("read_file", session_id=sid, path="notes.txt")) <= budget

        long = "import time\nfor i in range(600):\n    time.sleep(0.1)"
        running = await use("run_python", session_id=sid, code=long, wait_seconds=0.5)
        cell_id = re.search(r"\(id ([0-9a-f-]{36})\)", running)[1]
        await use("interrupt", session_id=sid)
        stopped = await use("get_cell", session_id=sid, cell_id=cell_id, wait_seconds=30)
        assert "interrupted" in stopped.lower()

        branched = await use("branch", session_id=sid, cell_id=first)
        child = re.search(r"session ([0-9a-f-]{36})", branched)[1]
        assert "2000" in await use("run_python", session_id=child, code="len(df)")
        exported = await use("export_notebook", session_id=sid)
        assert '"nbformat"' in exported and f"kernelagent://sessions/{sid}/notebook" in exported
