"""jupyter_server, pointed at kernelagent with ``--gateway-url``, as a client of its Gateway API.

A real ``jupyter server`` subprocess proxies its REST and WebSocket kernel API to kernelagent's
Kernel Gateway surface; this test talks only to jupyter_server and checks the effect in
kernelagent (kernels, sessions, the recorded notebook).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.testing import bind_unused_port
from tornado.web import RequestHandler
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.sandbox

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIRECT = {"X-Compat-Direct": "1"}  # marks this test's own calls to kernelagent


class JupyterServer:
    """A ``jupyter server`` subprocess whose kernels live in kernelagent (gateway mode)."""

    def __init__(self, port: int, token: str, log_path: Path):
        self.port = port
        self.token = token
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.client = AsyncHTTPClient()

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def fetch(
        self, path: str, method: str = "GET", body: Any = None, timeout: float = 60
    ) -> HTTPResponse:
        data = json.dumps(body) if body is not None else None
        if data is None and method in {"POST", "PATCH", "PUT"}:
            data = b""
        return await self.client.fetch(
            self.base + path,
            method=method,
            body=data,
            headers={"Authorization": f"token {self.token}"},
            raise_error=False,
            request_timeout=timeout,
        )

    async def json(self, path: str, method: str = "GET", body: Any = None, code: int = 200) -> Any:
        response = await self.fetch(path, method, body)
        assert response.code == code, (method, path, response.code, response.body, self.log_tail())
        return json.loads(response.body) if response.body else None


@pytest.fixture
async def jupyter_server(ka_server, tmp_path):
    sock, port = bind_unused_port()
    sock.close()
    token = uuid.uuid4().hex
    home = tmp_path / "jupyter"
    root = tmp_path / "root"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        JUPYTER_NO_CONFIG="1",
    )
    log_path = tmp_path / "jupyter_server.log"
    args = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.allow_root=True",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root}",
        f"--GatewayClient.url=http://127.0.0.1:{ka_server.port}",
        f"--GatewayClient.auth_token={ka_server.token}",
        "--GatewayClient.auth_scheme=token",
        "--GatewayClient.request_timeout=60",
        "--GatewayClient.connect_timeout=30",
    ]
    server = JupyterServer(port, token, log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"jupyter server exited:\n{server.log_tail()}"
            assert time.monotonic() < deadline, f"jupyter server not up:\n{server.log_tail()}"
            try:
                response = await server.fetch("/api/status", timeout=2)
                if response.code == 200:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait)


class WsClient:
    """Jupyter's legacy JSON WebSocket protocol, against jupyter_server's channels endpoint."""

    def __init__(self, conn):
        self.conn = conn
        self.session = Session(key=b"", username="compat")

    @classmethod
    async def connect(cls, server: JupyterServer, kernel_id: str) -> WsClient:
        url = (
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels"
            f"?token={server.token}&session_id={uuid.uuid4().hex}"
        )
        return cls(await websocket_connect(url))

    async def send(self, channel: str, msg_type: str, content: dict) -> str:
        msg = self.session.msg(msg_type, content)
        out = json.loads(json.dumps(msg, default=str))
        out["channel"] = channel
        await self.conn.write_message(json.dumps(out))
        return msg["header"]["msg_id"]

    async def until(self, predicate, timeout: float = 30) -> list[dict]:
        """Messages received until one matches ``predicate`` (inclusive)."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.conn.read_message()
                assert frame is not None, f"connection closed after {seen}"
                assert isinstance(frame, str), f"unexpected binary frame {frame[:80]!r}"
                seen.append(json.loads(frame))
                if predicate(seen[-1]):
                    return seen

    async def execute(self, code: str, timeout: float = 30) -> tuple[list[dict], dict]:
        """iopub messages of the request until idle, and its execute_reply."""
        msg_id = await self.send(
            "shell", "execute_request", {"code": code, "silent": False, "allow_stdin": False}
        )
        return await self.collect(msg_id, timeout)

    async def collect(self, msg_id: str, timeout: float = 30) -> tuple[list[dict], dict]:
        def mine(m: dict) -> bool:
            return m.get("parent_header", {}).get("msg_id") == msg_id

        def idle(m: dict) -> bool:
            return (
                mine(m) and m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
            )

        messages = await self.until(lambda m: mine(m) and m["msg_type"] == "execute_reply", timeout)
        if not any(idle(m) for m in messages):
            messages += await self.until(idle, timeout)
        reply = next(m for m in messages if mine(m) and m["msg_type"] == "execute_reply")
        iopub = [m for m in messages if mine(m) and m["channel"] == "iopub"]
        return iopub, reply

    def close(self) -> None:
        self.conn.close()


def _of_type(iopub: list[dict], msg_type: str) -> list[dict]:
    return [m["content"] for m in iopub if m["msg_type"] == msg_type]


@pytest.mark.parametrize("ka_server", ["embedded"], indirect=True)
async def test_jupyter_server_runs_kernels_through_the_gateway(ka_server, jupyter_server):
    js = jupyter_server
    # what jupyter_server (not this test) asks kernelagent, as "STATUS METHOD path"
    calls: list[str] = []

    def record(handler: RequestHandler) -> None:
        if "X-Compat-Direct" not in handler.request.headers:
            path = handler.request.path.replace(kid, "{id}") if kid else handler.request.path
            calls.append(f"{handler.get_status()} {handler.request.method} {path}")

    kid = ""
    ka_server.app.web.settings["log_function"] = record

    # kernelspecs come from kernelagent
    ka_specs = await ka_server.json("/api/kernelspecs", headers=DIRECT)
    specs = await js.json("/api/kernelspecs")
    assert set(specs["kernelspecs"]) == set(ka_specs["kernelspecs"])
    # jupyter_server adopts the gateway's default name on the first fetch but answers it from the
    # second one on (documented in GatewayKernelSpecManager.get_all_specs)
    specs = await js.json("/api/kernelspecs")
    assert specs["default"] == ka_specs["default"]
    assert set(specs["kernelspecs"]) == set(ka_specs["kernelspecs"])
    name = specs["default"]
    spec = await js.json(f"/api/kernelspecs/{name}")
    assert spec["spec"]["language"] == "python"
    for resource_url in spec.get("resources", {}).values():
        resource = await js.fetch(resource_url)
        assert resource.code == 200, (resource_url, resource.code, resource.body)

    # a kernel started through jupyter_server is a kernelagent kernel and session
    kernel = await js.json("/api/kernels", "POST", {"name": name}, code=201)
    kid = kernel["id"]
    assert kid in [k["id"] for k in await ka_server.json("/api/kernels", headers=DIRECT)]
    sessions = await ka_server.json("/api/v1/sessions", headers=DIRECT)
    assert kid in [s["id"] for s in sessions["sessions"]]
    assert kid in [k["id"] for k in await js.json("/api/kernels")]
    assert (await js.json(f"/api/kernels/{kid}"))["id"] == kid

    ws = await WsClient.connect(js, kid)
    try:
        iopub, reply = await ws.execute("print('hi')\nx = 6\nx * 7", timeout=60)
        assert reply["content"]["status"] == "ok", reply
        assert any(s["name"] == "stdout" and "hi" in s["text"] for s in _of_type(iopub, "stream"))
        (result,) = _of_type(iopub, "execute_result")
        assert result["data"]["text/plain"] == "42"

        iopub, reply = await ws.execute(
            "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()", timeout=60
        )
        assert reply["content"]["status"] == "ok", reply
        pngs = [d["data"]["image/png"] for d in _of_type(iopub, "display_data")]
        assert len(pngs) == 1, iopub
        assert base64.b64decode(pngs[0]).startswith(PNG_MAGIC)

        iopub, reply = await ws.execute("1/0")
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "ZeroDivisionError"
        assert [e["ename"] for e in _of_type(iopub, "error")] == ["ZeroDivisionError"]

        # interrupt through jupyter_server's REST API
        sleep_id = await ws.send(
            "shell", "execute_request", {"code": "import time\ntime.sleep(30)", "silent": False}
        )
        await ws.until(
            lambda m: (
                m["msg_type"] == "execute_input" and m["parent_header"].get("msg_id") == sleep_id
            )
        )
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await js.json(f"/api/kernels/{kid}/interrupt", "POST", code=204)
        iopub, reply = await ws.collect(sleep_id, timeout=10)
        assert time.monotonic() - started < 10
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        # restart through jupyter_server; the same socket keeps working, variables are gone
        restarted = await js.json(f"/api/kernels/{kid}/restart", "POST")
        assert restarted["id"] == kid
        iopub, reply = await ws.execute("'x' in dir()", timeout=60)
        assert reply["content"]["status"] == "ok", reply
        (result,) = _of_type(iopub, "execute_result")
        assert result["data"]["text/plain"] == "False"
    finally:
        ws.close()

    # every cell went through kernelagent's execution path and is in the session notebook
    cells = await ka_server.services.db.cells.list(kid)
    gateway = [c.source for c in cells if c.role == "gateway"]
    assert gateway == [
        "print('hi')\nx = 6\nx * 7",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
        "1/0",
        "import time\ntime.sleep(30)",
        "'x' in dir()",
    ], [(c.role, c.source, c.status) for c in cells]
    by_source = {c.source: c for c in cells}
    assert by_source["1/0"].status == "error"
    assert by_source["'x' in dir()"].status == "ok"
    assert any(c.role == "system" and "restarted" in c.source for c in cells)

    # shutdown through jupyter_server: Kernel Gateway's semantics, and no kernel left running
    process = (await ka_server.services.db.sessions.get(kid)).kernel_id
    deleted = await js.fetch(f"/api/kernels/{kid}", "DELETE")
    assert deleted.code == 204, (deleted.code, deleted.body, js.log_tail())
    assert kid not in [k["id"] for k in await js.json("/api/kernels")]
    assert (await ka_server.fetch(f"/api/kernels/{kid}", headers=DIRECT)).code == 404
    assert not await ka_server.services.kernels.is_alive(process)

    # a JupyterLab session (a notebook open on a kernel): deleting it leaves no kernel running
    opened = await js.json(
        "/api/sessions",
        "POST",
        {"path": "nb.ipynb", "type": "notebook", "kernel": {"name": name}},
        code=201,
    )
    lab_kernel = opened["kernel"]["id"]
    lab_process = (await ka_server.services.db.sessions.get(lab_kernel)).kernel_id
    assert await ka_server.services.kernels.is_alive(lab_process)
    assert (await js.fetch(f"/api/sessions/{opened['id']}", "DELETE")).code == 204
    assert not await ka_server.services.kernels.is_alive(lab_process)
    assert (await ka_server.fetch(f"/api/kernels/{lab_kernel}", headers=DIRECT)).code == 404

    print("recorded cells:", *[(c.role, c.status, c.source) for c in cells], sep="\n  ")
    print("jupyter_server called kernelagent:", *calls, sep="\n  ")
    assert set(calls) >= {
        "200 GET /api/kernelspecs",
        "201 POST /api/kernels",
        "101 GET /api/kernels/{id}/channels",
        "204 POST /api/kernels/{id}/interrupt",
        "200 POST /api/kernels/{id}/restart",
        "204 DELETE /api/kernels/{id}",
    }, calls
    # the only answer that is not a success: a GET of the deleted kernel
    assert all(
        c.split()[0] in {"101", "200", "201", "204"} or c == "404 GET /api/kernels/{id}"
        for c in calls
    ), calls
