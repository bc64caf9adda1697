"""Three real ``kernelagent serve`` replicas behind one client that spreads its requests over
them (round robin, as a plain load balancer without sticky sessions would), sharing PostgreSQL,
Redis and S3 (moto's server). Every route works whichever replica a request reaches; a replica
killed with SIGKILL mid-turn and mid-upload loses nothing that was completed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid

import pytest
from llm_server import tool_call
from test_processes import (  # noqa: F401 - the llm and shared_env fixtures
    LEASE,
    TOKEN,
    Process,
    _port,
    ended,
    llm,
    shared_env,
)
from tornado.httpclient import HTTPClientError

pytestmark = [pytest.mark.sandbox, pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]


class RoundRobin:
    """One client, each request to the next live replica."""

    def __init__(self, replicas: list[Process]):
        self.replicas = replicas
        self._next = itertools.cycle(range(len(replicas)))
        self.dead: set[str] = set()

    def pick(self) -> Process:
        while True:
            replica = self.replicas[next(self._next)]
            if replica.name not in self.dead:
                return replica

    async def json(self, path: str, method: str = "GET", body: object = None) -> dict:
        return await self.pick().json(path, method, body)


@pytest.fixture
async def replicas(tmp_path, shared_env):  # noqa: F811 - the fixture imported above
    env = shared_env
    started = [Process(name, _port(), env, tmp_path / f"{name}.log") for name in "abc"]
    try:
        await asyncio.gather(*(p.ready() for p in started))
        yield started
    finally:
        for process in started:
            await process.stop()


def _text(cell: dict) -> str:
    out = cell["cell"]["outputs"][0]
    return out["data"]["text/plain"] if "data" in out else out["text"]


async def test_every_route_works_whichever_replica_it_reaches(replicas):
    client = RoundRobin(replicas)
    sid = (await client.json("/api/v1/sessions", "POST", {"title": "spread"}))["id"]
    cells = [await client.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": f"v{i} = {i}"})
             for i in range(6)]  # fmt: skip
    assert all(c["cell"]["metadata"]["kernelagent"]["status"] == "ok" for c in cells)
    total = await client.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "v0+v3+v5"})
    assert _text(total) == "8"
    holders = [r for r in replicas if r.kernel_pids()]
    assert len(holders) == 1, "one kernel, in one replica, served every cell"

    for i, replica in enumerate(replicas):  # uploads through each replica land in the kernel
        assert (await replica.upload(sid, f"in{i}.txt", f"file {i}".encode())).code == 201
    files = await client.json(f"/api/v1/sessions/{sid}/files")
    assert sorted(f["path"] for f in files["files"]) == ["in0.txt", "in1.txt", "in2.txt"]
    for replica in replicas:
        download = await replica.fetch(f"/api/v1/sessions/{sid}/files/in2.txt")
        assert download.body == b"file 2"

    # an artifact's signed URL, made by one replica, works on each; so does its id
    plot = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()"
    drawn = await client.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": plot})
    (png,) = [a for a in drawn["artifacts"] if a["mime_type"] == "image/png"]
    for replica in replicas:
        signed = await replica.fetch(png["url"], token=None)
        assert signed.code == 200 and signed.body[:4] == b"\x89PNG"
        assert (await replica.fetch(f"/api/v1/artifacts/{png['id']}")).body == signed.body
        assert (await replica.fetch("/signin", token=None)).code == 200  # the web pages

    # a notebook imported (its state rebuilt) through one replica runs through the others
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "outputs": [],
                     "execution_count": None, "source": "imported = 7"}]}  # fmt: skip
    made = await replicas[1].client.fetch(
        f"{replicas[1].base}/api/v1/notebooks?replay=true", method="POST", body=json.dumps(nb),
        headers={"Authorization": f"token {TOKEN}"},
    )  # fmt: skip
    assert made.code == 201, made.body
    imported = json.loads(made.body)["id"]
    again = await client.json(f"/api/v1/sessions/{imported}/cells", "POST", {"code": "imported"})
    assert _text(again) == "7"

    notebook = await client.json(f"/api/v1/sessions/{sid}/notebook")
    assert sum(c["cell_type"] == "code" for c in notebook["cells"]) >= 7
    session = await client.json(f"/api/v1/sessions/{sid}")
    assert session["id"] == sid
    listed = await client.json("/api/v1/sessions")
    assert sid in [s["id"] for s in listed["sessions"]]

    # events: streamed from one replica, resumed on another from the middle
    async with replicas[0].events(sid) as first:
        await first.until(lambda e: e.type == "cell.completed", timeout=30)
    middle = first.events[len(first.events) // 2]
    async with replicas[2].events(sid, last_event_id=middle.id) as rest:
        await rest.until(lambda e: e.id == first.events[-1].id, timeout=30)
    assert [e.id for e in rest.events] == [e.id for e in first.events[len(first.events) // 2 + 1 :]]

    # replay, branch and the Kernel Gateway API, each through whichever replica
    replayed = await client.json(f"/api/v1/sessions/{sid}/replay", "POST")
    assert replayed
    branch = await client.json(
        f"/api/v1/sessions/{sid}/branch", "POST", {"cell_id": cells[3]["cell"]["id"]}
    )
    in_branch = await client.json(f"/api/v1/sessions/{branch['id']}/cells", "POST", {"code": "v3"})
    assert _text(in_branch) == "3"
    kernel = await client.json(f"/api/kernels/{sid}")
    assert kernel["id"] == sid
    for replica in replicas:  # the channels WebSocket, opened on each replica
        ws = await replica.channels(sid)
        try:
            msg_id = uuid.uuid4().hex
            header = {"msg_id": msg_id, "msg_type": "execute_request", "session": "rr",
                      "username": "rr", "version": "5.3", "date": ""}  # fmt: skip
            frame = {"header": header, "parent_header": {}, "metadata": {}}
            content = {"code": "v5 * 2", "silent": False}
            await ws.write_message(json.dumps({**frame, "content": content, "channel": "shell"}))
            async with asyncio.timeout(30):
                while True:
                    msg = json.loads(await ws.read_message())
                    if msg["msg_type"] == "execute_result":
                        assert msg["content"]["data"]["text/plain"] == "10"
                        break
        finally:
            ws.close()
    assert (await client.pick().fetch(f"/api/v1/sessions/{branch['id']}", "DELETE")).code == 204
    assert (await client.pick().fetch(f"/api/v1/sessions/{sid}", "DELETE")).code == 204
    assert (await client.pick().fetch(f"/api/v1/sessions/{imported}", "DELETE")).code == 204
    async with asyncio.timeout(10):
        while any(r.kernel_pids() for r in replicas):
            await asyncio.sleep(0.1)


async def test_a_replica_killed_mid_turn_and_mid_upload_loses_nothing_completed(replicas, llm):  # noqa: F811
    client = RoundRobin(replicas)
    sid = (await client.json("/api/v1/sessions", "POST", {"title": "survives"}))["id"]
    await client.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "kept = 'yes'"})
    holder = next(r for r in replicas if r.kernel_pids())
    assert (await holder.upload(sid, "done.csv", b"a,b\n1,2\n")).code == 201
    others = [r for r in replicas if r is not holder]

    llm.script(tool_call("run_python", {"code": "import time\ntime.sleep(120)"}))
    async with others[0].events(sid) as watch:
        turn = (await holder.json(f"/api/v1/sessions/{sid}/messages", "POST", {"content": "x"}))[
            "turn_id"
        ]
        await watch.until(lambda e: e.type == "cell.started", timeout=30)
        big = os.urandom(30 * 1024 * 1024)
        upload = asyncio.create_task(holder.upload(sid, "half.bin", big))
        await asyncio.sleep(0.2)  # the upload's body is on its way
        holder.popen.kill()  # SIGKILL: no goodbye
        holder.popen.wait()
        client.dead.add(holder.name)
        try:
            answered = (await upload).code
        except (OSError, HTTPClientError):  # the connection died with the replica
            answered = None
        seen = await watch.until(ended(turn), timeout=4 * LEASE + 20)
    failed = seen[-1]  # the turn's end is its last event: after the note that says why
    assert failed.type == "turn.failed" and "stopped" in failed.data["error"], failed
    assert seen[-2].type == "cell.added" and "The turn stopped" in seen[-2].data["source"]

    # the others serve the session: its state restored or replayed, its completed upload there
    async with asyncio.timeout(4 * LEASE + 20):
        while True:
            cell = await client.pick().fetch(
                f"/api/v1/sessions/{sid}/cells", "POST", {"code": "kept"}
            )
            if cell.code == 200:
                break
            assert cell.code == 503, cell.body
            await asyncio.sleep(0.2)
    assert _text(json.loads(cell.body)) == "'yes'"
    done = await client.pick().fetch(f"/api/v1/sessions/{sid}/files/done.csv")
    assert done.body == b"a,b\n1,2\n"
    files = {
        f["path"]: f["size"] for f in (await client.json(f"/api/v1/sessions/{sid}/files"))["files"]
    }
    if answered == 201:  # the upload finished before the kill: it is all there
        assert files.get("half.bin") == len(big)
    else:  # it did not: no part of it is
        assert "half.bin" not in files
    notebook = json.dumps(await client.json(f"/api/v1/sessions/{sid}/notebook"))
    # rebuilt elsewhere: restored from the last namespace snapshot stored, or replayed
    assert "a new one was started and its state" in notebook
