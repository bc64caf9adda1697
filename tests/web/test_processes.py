"""Two real ``kernelagent serve`` processes sharing PostgreSQL, Redis and S3 (moto's server).

A turn runs in process A (its session's kernel is there); process B, reached by the same client,
interrupts it, answers its ``ask_user``, approves its cell, and streams its events live and from a
``Last-Event-ID``, each taking effect within a second. What needs A's kernel (a cell, files, the
Kernel Gateway API and its WebSocket, deleting the session) B passes on to A, transparently.
Starting B does not fail A's running turn; killing A does, within the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from gateways import gateway
from llm_server import ScriptedLLM, respond, text, tool_call
from sse import EventStream
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse
from tornado.testing import bind_unused_port
from tornado.websocket import WebSocketClientConnection, websocket_connect

from kernelagent.adapters.runtime import RedisRuntime

pytestmark = [pytest.mark.sandbox, pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]

TOKEN = "two-processes-owner-token"
LEASE = 2.0  # seconds: a killed process's turns fail within this (and a recovery period)
PROMPTLY = 1.0  # what "takes effect within 1 s" means here


class Process:
    """A ``kernelagent serve`` subprocess and a client for it."""

    def __init__(self, name: str, port: int, env: dict[str, str], log: Path):
        self.name, self.port, self.log = name, port, log
        self.base = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "kernelagent", "serve", "--port", str(port)],
                env={**env, "KERNELAGENT_DATA_DIR": str(log.parent / name)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = AsyncHTTPClient()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    async def ready(self, timeout: float = 60) -> None:
        """Until health answers; then the owner's token must work at once."""
        async with asyncio.timeout(timeout):
            while True:
                assert self.popen.poll() is None, f"{self.name} exited:\n{self.tail()}"
                with contextlib.suppress(OSError):
                    if (await self.fetch("/api/v1/health", token=None)).code == 200:
                        break
                await asyncio.sleep(0.1)
        sessions = await self.fetch("/api/v1/sessions")
        assert sessions.code == 200, (sessions.code, self.tail())

    async def fetch(
        self, path: str, method: str = "GET", body: object = None, token: str | None = TOKEN
    ) -> HTTPResponse:
        data = json.dumps(body) if body is not None else (b"" if method == "POST" else None)
        headers = {"Authorization": f"token {token}"} if token else {}
        return await self.client.fetch(
            self.base + path,
            method=method,
            body=data,
            headers=headers,
            raise_error=False,
            request_timeout=60,
        )

    async def json(self, path: str, method: str = "GET", body: object = None) -> dict:
        response = await self.fetch(path, method, body)
        assert response.code < 300, (self.name, path, response.code, response.body, self.tail())
        return json.loads(response.body) if response.body else {}

    async def upload(self, session_id: str, path: str, content: bytes) -> HTTPResponse:
        boundary = "two-processes-boundary"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path}"'
        return await self.client.fetch(
            f"{self.base}/api/v1/sessions/{session_id}/files",
            method="POST",
            body=f"{head}\r\n\r\n".encode() + content + f"\r\n--{boundary}--\r\n".encode(),
            headers={
                "Authorization": f"token {TOKEN}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
            raise_error=False,
        )

    async def channels(self, kernel_id: str) -> WebSocketClientConnection:
        url = f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={TOKEN}"
        return await websocket_connect(url)

    def events(self, session_id: str, last_event_id: str | None = None) -> EventStream:
        path = f"/api/v1/sessions/{session_id}/events"
        return EventStream(self.port, path, TOKEN, last_event_id)

    def kernel_pids(self) -> list[int]:
        """The sandboxed kernels this process started (its children's trees)."""
        try:
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in children if "ipykernel" in " ".join(_cmdline(c))]

    async def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.popen.wait, 30)
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def _cmdline(process: psutil.Process) -> list[str]:
    with contextlib.suppress(psutil.Error):
        return process.cmdline()
    return []


def _port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


@pytest.fixture
async def llm() -> AsyncIterator[ScriptedLLM]:
    server = await ScriptedLLM.start(api_key="sk-two")
    yield server
    await server.stop()


@pytest.fixture
def shared_env(postgres_url, redis_url, moto_s3, llm) -> dict[str, str]:
    """What server processes sharing one service are started with."""
    return {
        **os.environ,
        "KERNELAGENT_DATABASE_URL": postgres_url,
        "KERNELAGENT_REDIS_URL": redis_url,
        "KERNELAGENT_STORAGE_URL": moto_s3.url("kernelagent"),
        "KERNELAGENT_S3_ENDPOINT_URL": moto_s3.endpoint_url,
        "KERNELAGENT_TOKEN": TOKEN,
        "KERNELAGENT_SECRET": "processes-share-the-signing-key",  # as the README asks
        "KERNELAGENT_POOL_SIZE": "0",
        "KERNELAGENT_PROCESS_LEASE": str(LEASE),
        "OPENAI_API_KEY": "sk-two",
        "OPENAI_BASE_URL": llm.base_url,
        "KERNELAGENT_MODEL": "scripted",
    }


@pytest.fixture
async def processes(tmp_path, shared_env):
    env = shared_env
    started: list[Process] = []

    async def start(name: str, **extra: str) -> Process:
        process = Process(name, _port(), {**env, **extra}, tmp_path / f"{name}.log")
        started.append(process)
        await process.ready()
        return process

    yield start
    for process in started:
        await process.stop()


def ended(turn_id: str):
    return lambda e: e.type in ("turn.completed", "turn.failed") and e.data["turn_id"] == turn_id


async def timed_until(stream: EventStream, predicate) -> float:
    started = time.monotonic()
    await stream.until(predicate, timeout=30)
    return time.monotonic() - started


async def test_another_process_controls_a_turn_and_streams_it(processes, llm):
    a = await processes("a")
    session = await a.json("/api/v1/sessions", "POST", {"title": "shared"})
    sid = session["id"]
    b = await processes("b")  # started while A holds the session: nothing of A's is touched
    llm.script(
        tool_call(
            "run_python", {"code": "import time\nprint('started', flush=True)\ntime.sleep(60)"}
        )
    )
    async with b.events(sid) as on_b:
        turn = (await a.json(f"/api/v1/sessions/{sid}/messages", "POST", {"content": "wait"}))[
            "turn_id"
        ]
        await on_b.until(lambda e: e.type == "cell.output")  # A's cell, live on B
        assert (await b.fetch(f"/api/v1/sessions/{sid}/interrupt", "POST")).code == 204
        took = await timed_until(on_b, lambda e: e.type == "cell.completed")
        assert took < PROMPTLY, took
        await on_b.until(ended(turn))
    completed = next(e for e in on_b.events if e.type == "cell.completed")
    assert completed.data["status"] == "interrupted"
    assert on_b.events[-1].type == "turn.failed" and on_b.events[-1].data["status"] == "interrupted"

    # the same events, resumed on B from the middle of what it streamed
    middle = on_b.events[len(on_b.events) // 2]
    async with b.events(sid, last_event_id=middle.id) as resumed:
        rest = await resumed.until(ended(turn))
    assert [e.id for e in rest] == [e.id for e in on_b.events[len(on_b.events) // 2 + 1 :]]

    # ask_user answered on B, and the cell after it approved on B: the turn goes on in A
    await a.json(f"/api/v1/sessions/{sid}", "PATCH", {"approval_mode": True})
    llm.script(
        tool_call("ask_user", {"question": "Which year?"}),
        respond(lambda body: tool_call("run_python", {"code": f"year = {_last_tool(body)}"})),
        text("done"),
    )
    async with b.events(sid) as on_b:
        turn = (await a.json(f"/api/v1/sessions/{sid}/messages", "POST", {"content": "go"}))[
            "turn_id"
        ]
        await on_b.until(lambda e: e.type == "ask_user")
        base = f"/api/v1/sessions/{sid}/turns/{turn}"
        await b.json(f"{base}/answer", "POST", {"text": "2024"})
        took = await timed_until(
            on_b, lambda e: e.type == "cell.added" and e.data["source"] == "2024"
        )
        assert took < PROMPTLY, took
        await on_b.until(lambda e: e.type == "approval.required")
        await b.json(f"{base}/approval", "POST", {"decision": "approve"})
        took = await timed_until(
            on_b, lambda e: e.type == "cell.started" and "2024" in e.data["code"]
        )
        assert took < PROMPTLY, took
        await on_b.until(ended(turn))
    assert on_b.events[-1].type == "turn.completed", on_b.events[-1]
    year = await a.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "year"})
    assert year["cell"]["outputs"][0]["data"]["text/plain"] == "2024"


async def test_what_needs_a_kernel_held_elsewhere_is_passed_on_to_its_holder(processes):
    a = await processes("a")
    b = await processes("b")
    sid = (await a.json("/api/v1/sessions", "POST", {"title": "held by A"}))["id"]
    await a.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x = 41"})
    held = a.kernel_pids()
    assert held

    # a cell, an upload, the files panel and a download, all sent to B, happen in A's kernel
    cell = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x + 1"})
    assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "42"
    assert (await b.upload(sid, "up.txt", b"through B")).code == 201
    cell = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "open('up.txt').read()"})
    assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "'through B'"
    listed = await b.json(f"/api/v1/sessions/{sid}/files")
    assert [f["path"] for f in listed["files"]] == ["up.txt"]
    download = await b.fetch(f"/api/v1/sessions/{sid}/files/up.txt")
    assert download.code == 200 and download.body == b"through B"
    assert b.kernel_pids() == [] and a.kernel_pids() == held

    # the Kernel Gateway API's WebSocket, opened on B, talks to A's kernel
    ws = await b.channels(sid)
    try:
        assert await _execute_over(ws, "x * 2") == "82"
    finally:
        ws.close()
    cells = await b.json(f"/api/v1/sessions/{sid}/notebook")
    assert "x * 2" in json.dumps(cells)  # recorded as the session's cell

    # a restart through B restarts A's kernel; deleting the session through B stops it
    restarted = await b.fetch(f"/api/kernels/{sid}/restart", "POST")
    assert restarted.code == 200, restarted.body
    cell = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "'x' in dir()"})
    assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "False"
    assert (await b.fetch(f"/api/v1/sessions/{sid}", "DELETE")).code == 204
    async with asyncio.timeout(10):
        while a.kernel_pids():
            await asyncio.sleep(0.1)


async def test_sigterm_drains_the_running_turn_then_stops(processes, llm):
    a = await processes("a")
    b = await processes("b")
    sid = (await a.json("/api/v1/sessions", "POST", {"title": "draining"}))["id"]
    llm.script(
        tool_call("run_python", {"code": "import time\ntime.sleep(3)\nprint('finished')"}),
        text("done"),
    )
    async with b.events(sid) as on_b:
        path = f"/api/v1/sessions/{sid}/messages"
        turn = (await a.json(path, "POST", {"content": "go"}))["turn_id"]
        await on_b.until(lambda e: e.type == "cell.started")
        a.popen.send_signal(signal.SIGTERM)
        async with asyncio.timeout(PROMPTLY):  # a load balancer stops sending A requests
            while (await a.fetch("/api/v1/ready", token=None)).code != 503:
                await asyncio.sleep(0.05)
        refused = await a.fetch(path, "POST", {"content": "another"})
        assert refused.code == 503 and b"draining" in refused.body
        await on_b.until(ended(turn), timeout=30)
    assert on_b.events[-1].type == "turn.completed", on_b.events[-1]
    assert await asyncio.to_thread(a.popen.wait, 30) == 0


async def test_a_killed_process_fails_its_turn_and_leaves_no_kernel(processes, llm):
    a = await processes("a")
    b = await processes("b")
    session = await a.json("/api/v1/sessions", "POST", {"title": "doomed"})
    sid = session["id"]
    llm.script(tool_call("run_python", {"code": "import time\ntime.sleep(120)"}))
    async with b.events(sid) as on_b:
        turn = (await a.json(f"/api/v1/sessions/{sid}/messages", "POST", {"content": "x"}))[
            "turn_id"
        ]
        await on_b.until(lambda e: e.type == "cell.started")
        kernels = a.kernel_pids()
        assert kernels, "A runs the session's kernel"
        a.popen.kill()  # SIGKILL to the server alone: no goodbye, no cleanup
        a.popen.wait()
        await on_b.until(ended(turn), timeout=4 * LEASE + 10)
    failed = on_b.events[-1]
    assert failed.type == "turn.failed" and "stopped" in failed.data["error"]
    # the kernels of the killed process died with it (nothing reparented to init lives on)
    async with asyncio.timeout(10):
        while any(_running(pid) for pid in kernels):
            await asyncio.sleep(0.1)
    # the session goes on in B: its kernel is rebuilt there
    again = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "6 * 7"})
    assert again["cell"]["outputs"][0]["data"]["text/plain"] == "42"


async def test_a_lone_server_killed_mid_turn_and_mid_upload_restarts_with_all_completed(
    tmp_path, llm
):
    """One server on the embedded defaults (SQLite, files on disk), SIGKILLed while a turn runs
    a cell and an upload arrives, then started again on the same data directory."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KERNELAGENT_")},
        "KERNELAGENT_TOKEN": TOKEN,
        "KERNELAGENT_POOL_SIZE": "0",
        "OPENAI_API_KEY": "sk-two",
        "OPENAI_BASE_URL": llm.base_url,
        "KERNELAGENT_MODEL": "scripted",
    }
    server = Process("lone", _port(), env, tmp_path / "lone.log")
    await server.ready()
    sid = (await server.json("/api/v1/sessions", "POST", {"title": "lone"}))["id"]
    await server.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "kept = 'yes'"})
    assert (await server.upload(sid, "done.csv", b"a,b\n1,2\n")).code == 201
    llm.script(tool_call("run_python", {"code": "import time\ntime.sleep(120)"}))
    async with server.events(sid) as watch:
        turn = (await server.json(f"/api/v1/sessions/{sid}/messages", "POST", {"content": "x"}))[
            "turn_id"
        ]
        await watch.until(lambda e: e.type == "cell.started" and "sleep" in e.data["code"])
    big = os.urandom(30 * 1024 * 1024)
    upload = asyncio.create_task(server.upload(sid, "half.bin", big))
    await asyncio.sleep(0.2)  # the upload's body is on its way
    kernels = server.kernel_pids()
    assert kernels
    server.popen.kill()  # SIGKILL: no goodbye
    server.popen.wait()
    try:
        answered = (await upload).code
    except (OSError, HTTPClientError):  # the connection died with the server
        answered = None

    again = Process("lone", _port(), env, tmp_path / "lone-again.log")  # the same data directory
    try:
        await again.ready()
        ended_turn = await again.json(f"/api/v1/sessions/{sid}/turns/{turn}")
        assert ended_turn["status"] == "failed" and "stopped" in ended_turn["error"], ended_turn
        async with asyncio.timeout(10):  # the old kernel died with its server
            while any(_running(pid) for pid in kernels):
                await asyncio.sleep(0.1)
        cell = await again.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "kept"})
        assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "'yes'"  # state brought back
        done = await again.fetch(f"/api/v1/sessions/{sid}/files/done.csv")
        assert done.body == b"a,b\n1,2\n"
        listed = await again.json(f"/api/v1/sessions/{sid}/files")
        files = {f["path"]: f["size"] for f in listed["files"]}
        if answered == 201:  # the upload finished before the kill: it is all there
            assert files.get("half.bin") == len(big)
        else:  # it did not: no part of it is, under any name
            assert set(files) == {"done.csv"}, files
        notebook = await again.json(f"/api/v1/sessions/{sid}/notebook")
        sources = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
        assert sources[0] == "kept = 'yes'" and "time.sleep(120)" in sources[1], sources
        assert "The turn stopped" in json.dumps(notebook)
    finally:
        await again.stop()


@pytest.fixture(scope="module")
def kernel_gateway(tmp_path_factory):
    """A real Jupyter Kernel Gateway on loopback: (url, token)."""
    with gateway("kernel_gateway", tmp_path_factory.mktemp("gateway")) as running:
        yield running


async def test_a_remote_kernel_outlives_its_process_and_the_others_serve_it_at_once(
    processes, kernel_gateway, redis_url, tmp_path
):
    url, token = kernel_gateway
    remote = {
        "KERNELAGENT_GATEWAY_URL": url,
        "KERNELAGENT_GATEWAY_TOKEN": token,
        "KERNELAGENT_GATEWAY_WORKSPACE": str(tmp_path / "remote" / "{kernel_id}"),
    }
    a = await processes("a", **remote)
    b = await processes("b", **remote)
    sid = (await a.json("/api/v1/sessions", "POST", {"title": "remote"}))["id"]
    code = "import secrets; x = secrets.token_hex(8); x"  # what a replay would not give again
    made = await a.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": code})
    kept = made["cell"]["outputs"][0]["data"]["text/plain"]
    assert (await a.upload(sid, "data.txt", b"in the kernel's workspace")).code == 201
    a.popen.kill()  # SIGKILL: A says no goodbye; the kernel lives on at the gateway
    a.popen.wait()
    killed = time.monotonic()
    cell = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x"})
    assert time.monotonic() - killed < LEASE  # served before A's lease ends: not passed on
    assert cell["cell"]["outputs"][0]["data"]["text/plain"] == kept
    download = await b.fetch(f"/api/v1/sessions/{sid}/files/data.txt")
    assert download.body == b"in the kernel's workspace"
    notebook = json.dumps(await b.json(f"/api/v1/sessions/{sid}/notebook"))
    assert "rebuilt" not in notebook and "restored" not in notebook

    runtime = RedisRuntime(redis_url)  # whose the kernel is (to cull it when idle)
    try:
        await asyncio.sleep(LEASE + 0.5)  # A's lease is over: nobody owns the kernel
        assert await runtime.owner("kernel", sid) is None
        await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x"})
        owner = await runtime.owner("kernel", sid)
        assert owner is not None and f":{b.port}" in (await runtime.address(owner) or "")
    finally:
        await runtime.redis.aclose()


async def test_every_process_reaches_a_remote_kernel_while_its_starter_is_frozen(
    processes, kernel_gateway, tmp_path
):
    """A process frozen (SIGSTOP) would hold every request passed on to it: none is."""
    url, token = kernel_gateway
    remote = {
        "KERNELAGENT_GATEWAY_URL": url,
        "KERNELAGENT_GATEWAY_TOKEN": token,
        "KERNELAGENT_GATEWAY_WORKSPACE": str(tmp_path / "remote" / "{kernel_id}"),
        "KERNELAGENT_PROCESS_LEASE": "60",  # A stays the owner while frozen
    }
    a = await processes("a", **remote)
    b = await processes("b", **remote)
    sid = (await a.json("/api/v1/sessions", "POST", {"title": "shared"}))["id"]
    await a.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x = 20"})
    assert (await a.upload(sid, "a.txt", b"from A")).code == 201
    a.popen.send_signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(60):
            cell = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x + 1"})
            assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "21"
            assert (await b.fetch(f"/api/v1/sessions/{sid}/files/a.txt")).body == b"from A"
            assert (await b.upload(sid, "b.txt", b"from B")).code == 201
            ws = await b.channels(sid)
            try:
                assert await _execute_over(ws, "x * 2") == "40"
            finally:
                ws.close()
            restarted = await b.fetch(f"/api/kernels/{sid}/restart", "POST")
            assert restarted.code == 200, restarted.body
            cell = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "'x' in dir()"})
            assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "False"
    finally:
        a.popen.send_signal(signal.SIGCONT)
    # A learns of the restart: its next cells run in the new kernel process, files included
    cell = await a.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "y = 3; y"})
    assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "3"
    files = await a.json(f"/api/v1/sessions/{sid}/files")
    assert {"a.txt", "b.txt"} <= {f["path"] for f in files["files"]}
    notebook = await a.json(f"/api/v1/sessions/{sid}/notebook")
    sources = ["".join(c["source"]) for c in notebook["cells"]]
    assert "x + 1" in sources and "x * 2" in sources and "y = 3; y" in sources


async def _execute_over(ws: WebSocketClientConnection, code: str) -> str:
    """Run ``code`` through a Kernel Gateway channels socket; its ``text/plain`` result."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": "s",
              "version": "5.3", "date": ""}  # fmt: skip
    content = {"code": code, "silent": False}
    await ws.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {},
                                       "content": content, "channel": "shell"}))  # fmt: skip
    async with asyncio.timeout(30):
        while True:
            raw = await ws.read_message()
            assert raw is not None, "the socket closed"
            message = json.loads(raw)
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "execute_result":
                return message["content"]["data"]["text/plain"]
            if message["msg_type"] == "error":
                raise AssertionError(message["content"])


async def test_a_shared_kernel_is_culled_by_its_owner_only_once_idle_everywhere(
    processes, kernel_gateway, tmp_path
):
    url, token = kernel_gateway
    remote = {"KERNELAGENT_GATEWAY_URL": url, "KERNELAGENT_GATEWAY_TOKEN": token}
    a = await processes("a", **remote, KERNELAGENT_KERNEL_IDLE_TTL="3")
    b = await processes("b", **remote, KERNELAGENT_KERNEL_IDLE_TTL="1")
    sid = (await a.json("/api/v1/sessions", "POST", {"title": "culled"}))["id"]
    await a.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x = 5"})
    path = f"/api/v1/sessions/{sid}/notebook"
    # used through B for longer than A's TTL, with pauses longer than B's: not idle for A,
    # not B's to cull
    busy_until = time.monotonic() + 5
    while time.monotonic() < busy_until:
        await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x"})
        await asyncio.sleep(1.3)
    assert "minutes idle" not in json.dumps(await b.json(path))
    async with asyncio.timeout(20):  # idle everywhere now: its owner, A, shuts it down
        while "minutes idle" not in json.dumps(await b.json(path)):
            await asyncio.sleep(0.3)
    cell = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x"})
    assert cell["cell"]["outputs"][0]["data"]["text/plain"] == "5"  # and it comes back


async def test_a_stopping_process_leaves_its_remote_kernels_to_the_others(
    processes, kernel_gateway
):
    url, token = kernel_gateway
    remote = {"KERNELAGENT_GATEWAY_URL": url, "KERNELAGENT_GATEWAY_TOKEN": token}
    a = await processes("a", **remote)
    b = await processes("b", **remote)
    sid = (await a.json("/api/v1/sessions", "POST", {"title": "handed over"}))["id"]
    code = "import secrets; x = secrets.token_hex(8); x"
    made = await a.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": code})
    a.popen.send_signal(signal.SIGTERM)  # a graceful stop: its ownership ends with it
    assert await asyncio.to_thread(a.popen.wait, 30) == 0
    cell = await b.json(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x"})
    assert cell["cell"]["outputs"][0]["data"] == made["cell"]["outputs"][0]["data"]
    notebook = json.dumps(await b.json(f"/api/v1/sessions/{sid}/notebook"))
    assert "took the kernel over" in notebook


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _last_tool(body: dict) -> str:
    return next(m for m in reversed(body["messages"]) if m["role"] == "tool")["content"]
