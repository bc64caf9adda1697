"""Limits an operator sets: live kernels per user and in all (the least recently used idle one
hibernated to make room, 429 when none is idle), and API requests per user per minute."""

from __future__ import annotations

import asyncio
import json
import time

import nbformat
import pytest
from conftest import backend_settings, running

pytestmark = pytest.mark.sandbox


async def live(server, session_id: str) -> bool:
    """Whether the session holds a kernel now (the API keeps its gateway id either way)."""
    return (await server.services.db.sessions.get(session_id)).kernel_id is not None


@pytest.fixture(params=["embedded", "networked"])
def backend(request, tmp_path, unused_port):
    return lambda **overrides: backend_settings(request, tmp_path, unused_port, **overrides)


async def test_requests_past_the_rate_limit_get_429_naming_it(backend):
    async with running(backend(rate_limit=5)) as server:
        left = 60 - time.time() % 60
        if left < 5:  # not across a minute's end
            await asyncio.sleep(left + 0.1)
        codes = [(await server.fetch("/api/v1/sessions")).code for _ in range(8)]
        assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}, codes
        refused = await server.fetch("/api/v1/sessions")
        error = json.loads(refused.body)["error"]
        assert error["code"] == "limit_exceeded"
        assert error["limit"] == {"setting": "KERNELAGENT_RATE_LIMIT", "value": 5}
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        other = await server.new_user("bob")  # another user has requests of their own
        assert (await server.fetch("/api/v1/sessions", token=other)).code == 200


async def test_a_user_at_the_kernel_limit_hibernates_their_idle_kernel_or_gets_429(backend):
    async with running(backend(max_kernels_per_user=2)) as server:
        a = (await server.session("a"))["id"]
        await server.run(a, "x = 'kept'")
        b = (await server.session("b"))["id"]
        await server.run(b, "y = 2")
        c = (await server.session("c"))["id"]  # a is the least recently used: hibernated
        await server.run(c, "z = 3")
        notebook = json.dumps(await server.json(f"/api/v1/sessions/{a}/notebook"))
        assert "hibernated to make room" in notebook
        assert "KERNELAGENT_MAX_KERNELS_PER_USER=2" in notebook
        assert not await live(server, a)
        back = await server.run(a, "x")  # its state comes back; now b makes room
        assert back["cell"]["outputs"][0]["data"]["text/plain"] == "'kept'"
        assert not await live(server, b) and await live(server, a)

        long = "import time\ntime.sleep(4)"  # a and c busy: nothing can make room for b
        busy = [asyncio.create_task(server.run(s, long)) for s in (a, c)]
        async with asyncio.timeout(20):
            while len(await server.services.state.running([a, c])) < 2:
                await asyncio.sleep(0.05)
        refused = await server.fetch(f"/api/v1/sessions/{b}/cells", "POST", {"code": "y"})
        assert refused.code == 429, refused.body
        error = json.loads(refused.body)["error"]
        assert error["limit"] == {"setting": "KERNELAGENT_MAX_KERNELS_PER_USER", "value": 2}
        assert "none is idle" in error["message"]
        await asyncio.gather(*busy)
        again = await server.run(b, "y")  # once idle, room is made again
        assert again["cell"]["outputs"][0]["data"]["text/plain"] == "2"


async def test_the_server_wide_kernel_limit_takes_the_least_recently_used_of_anyone(backend):
    async with running(backend(max_kernels=2, max_kernels_per_user=0)) as server:
        bob = await server.new_user("bob")
        mine = (await server.session("mine"))["id"]
        await server.run(mine, "x = 1")
        theirs = (await server.json("/api/v1/sessions", "POST", {}, token=bob))["id"]
        await server.json(f"/api/v1/sessions/{theirs}/cells", "POST", {"code": "1"}, token=bob)
        third = (await server.session("third"))["id"]
        await server.run(third, "3")
        assert not await live(server, mine) and await live(server, theirs)
        notebook = json.dumps(await server.json(f"/api/v1/sessions/{mine}/notebook"))
        assert "KERNELAGENT_MAX_KERNELS=2" in notebook


async def test_a_full_workspace_refuses_uploads_and_says_so_in_the_cell(backend):
    async with running(backend(workspace_limit=1_000_000)) as server:
        sid = (await server.session("full"))["id"]
        assert (await server.upload(sid, "a.bin", b"a" * 600_000)).code == 201
        refused = await server.upload(sid, "b.bin", b"b" * 600_000)
        assert refused.code == 413, refused.body
        error = json.loads(refused.body)["error"]
        assert error["limit"] == {"setting": "KERNELAGENT_WORKSPACE_LIMIT", "value": 1_000_000}
        files = await server.json(f"/api/v1/sessions/{sid}/files")
        assert [f["path"] for f in files["files"]] == ["a.bin"]  # nothing half-written

        cell = await server.run(sid, "open('c.bin', 'wb').write(b'c' * 700_000)")
        full = [o for o in cell["cell"]["outputs"] if o["output_type"] == "error"]
        assert full and full[0]["ename"] == "WorkspaceFull"
        assert "KERNELAGENT_WORKSPACE_LIMIT=1,000,000" in full[0]["evalue"]
        cell = await server.run(sid, "import os; os.remove('c.bin')")
        assert not [o for o in cell["cell"]["outputs"] if o["output_type"] == "error"]
        assert (await server.upload(sid, "d.bin", b"d" * 100_000)).code == 201


async def test_notebooks_past_the_import_limits_are_refused_naming_them(backend):
    async with running(backend(import_limit=200_000, import_cells=50)) as server:
        many = nbformat.v4.new_notebook()
        many.cells = [nbformat.v4.new_code_cell(f"x = {i}") for i in range(51)]
        refused = await server.fetch(
            "/api/v1/notebooks", "POST", raw=nbformat.writes(many).encode()
        )
        assert refused.code == 413, refused.body
        error = json.loads(refused.body)["error"]
        assert error["limit"] == {"setting": "KERNELAGENT_IMPORT_CELLS", "value": 50}
        big = nbformat.v4.new_notebook()
        big.cells = [nbformat.v4.new_markdown_cell("x" * 250_000)]
        refused = await server.fetch("/api/v1/notebooks", "POST", raw=nbformat.writes(big).encode())
        assert json.loads(refused.body)["error"]["limit"]["setting"] == "KERNELAGENT_IMPORT_LIMIT"
        assert not (await server.json("/api/v1/sessions"))["sessions"]  # nothing was made
        many.cells = many.cells[:50]
        made = await server.fetch("/api/v1/notebooks", "POST", raw=nbformat.writes(many).encode())
        assert made.code == 201
