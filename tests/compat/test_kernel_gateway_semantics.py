"""The Kernel Gateway semantics real clients rely on, proven on Jupyter Kernel Gateway itself and
then required of kernelagent: the same test code runs against both.

A kernel is created (201, ``Location``), listed, driven over the channels WebSocket; ``restart``
gives a new kernel process under the same id; ``interrupt`` stops a running cell; after
``DELETE`` the kernel is 404 for every verb, unlisted, a second ``DELETE`` is 404 and a client
cannot attach to it. (kernelagent keeps the session, whose next cell brings the kernel back under
the same id: ``tests/web/test_gateway.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
from conftest import backend_settings, running
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse
from tornado.testing import bind_unused_port
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.sandbox


class Gateway:
    """A Kernel Gateway API at ``base`` with ``token``."""

    def __init__(self, name: str, port: int, token: str):
        self.name, self.port, self.token = name, port, token
        self.base = f"http://127.0.0.1:{port}"
        self.client = AsyncHTTPClient()

    async def fetch(self, path: str, method: str = "GET", body: object = None) -> HTTPResponse:
        data = json.dumps(body) if body is not None else (b"" if method == "POST" else None)
        return await self.client.fetch(
            self.base + path,
            method=method,
            body=data,
            headers={"Authorization": f"token {self.token}"},
            raise_error=False,
            request_timeout=60,
        )

    async def json(self, path: str, method: str = "GET", body: object = None) -> object:
        response = await self.fetch(path, method, body)
        assert response.code < 300, (self.name, method, path, response.code, response.body)
        return json.loads(response.body) if response.body else None

    async def channels(self, kernel_id: str) -> Channels:
        url = f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={self.token}"
        return Channels(await websocket_connect(url))


class Channels:
    """Jupyter's JSON WebSocket protocol, as JupyterLab speaks it."""

    def __init__(self, conn):
        self.conn = conn
        self.session = Session(key=b"", username="compat")

    async def execute(self, code: str, timeout: float = 60) -> list[dict]:
        """Every message of the request until the kernel is idle and the reply came."""
        msg = self.session.msg("execute_request", {"code": code, "silent": False})
        await self.conn.write_message(
            json.dumps({**json.loads(json.dumps(msg, default=str)), "channel": "shell"})
        )
        msg_id, seen, idle, replied = msg["header"]["msg_id"], [], False, False
        async with asyncio.timeout(timeout):
            while not (idle and replied):
                frame = await self.conn.read_message()
                assert frame is not None, "the connection closed"
                got = json.loads(frame)
                if got["parent_header"].get("msg_id") != msg_id:
                    continue
                seen.append(got)
                idle |= got["msg_type"] == "status" and got["content"]["execution_state"] == "idle"
                replied |= got["msg_type"] == "execute_reply"
        return seen

    def close(self) -> None:
        self.conn.close()


def result(messages: list[dict]) -> str:
    return next(m for m in messages if m["msg_type"] == "execute_result")["content"]["data"][
        "text/plain"
    ]


def _port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


@contextlib.asynccontextmanager
async def jupyter_kernel_gateway(tmp_path) -> AsyncIterator[Gateway]:
    port, token = _port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "kg-runtime")
    log = (tmp_path / "kernel_gateway.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kernel_gateway",
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}",
            f"--KernelGatewayApp.auth_token={token}",
            "--JupyterWebsocketPersonality.list_kernels=True",  # JupyterLab needs it (else 403)
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    gateway = Gateway("jupyter_kernel_gateway", port, token)
    try:
        async with asyncio.timeout(60):
            while True:
                assert process.poll() is None, (tmp_path / "kernel_gateway.log").read_text()
                with contextlib.suppress(OSError):
                    if (await gateway.fetch("/api")).code == 200:
                        break
                await asyncio.sleep(0.1)
        yield gateway
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(params=["jupyter_kernel_gateway", "kernelagent"])
async def gateway(request, tmp_path, unused_port) -> AsyncIterator[Gateway]:
    if request.param == "jupyter_kernel_gateway":
        async with jupyter_kernel_gateway(tmp_path) as kg:
            yield kg
        return
    async with running(backend_settings(request, tmp_path, unused_port)) as server:
        yield Gateway("kernelagent", server.port, server.token)


async def test_create_list_restart_interrupt(gateway):
    created = await gateway.fetch("/api/kernels", "POST", {})
    assert created.code == 201
    kernel = json.loads(created.body)
    assert created.headers["Location"] == f"/api/kernels/{kernel['id']}"
    assert kernel["id"] in [k["id"] for k in await gateway.json("/api/kernels")]
    assert (await gateway.json(f"/api/kernels/{kernel['id']}"))["id"] == kernel["id"]

    ws = await gateway.channels(kernel["id"])
    try:
        assert result(await ws.execute("x = 41\nx + 1")) == "42"
    finally:
        ws.close()
    restarted = await gateway.json(f"/api/kernels/{kernel['id']}/restart", "POST")
    assert restarted["id"] == kernel["id"]  # a new process under the same id
    ws = await gateway.channels(kernel["id"])
    try:
        assert result(await ws.execute("'x' in dir()")) == "False"
        running = asyncio.ensure_future(ws.execute("import time\ntime.sleep(30)"))
        await asyncio.sleep(1.0)
        interrupted = await gateway.fetch(f"/api/kernels/{kernel['id']}/interrupt", "POST")
        assert interrupted.code == 204
        messages = await asyncio.wait_for(running, 20)
        errors = [m["content"]["ename"] for m in messages if m["msg_type"] == "error"]
        assert errors == ["KeyboardInterrupt"]
    finally:
        ws.close()
    assert (await gateway.fetch(f"/api/kernels/{kernel['id']}", "DELETE")).code == 204


async def test_a_deleted_kernel_is_gone_for_every_verb(gateway):
    kernel = await gateway.json("/api/kernels", "POST", {})
    kid = kernel["id"]
    assert (await gateway.fetch(f"/api/kernels/{kid}", "DELETE")).code == 204
    assert (await gateway.fetch(f"/api/kernels/{kid}")).code == 404
    assert kid not in [k["id"] for k in await gateway.json("/api/kernels")]
    assert (await gateway.fetch(f"/api/kernels/{kid}", "DELETE")).code == 404
    assert (await gateway.fetch(f"/api/kernels/{kid}/interrupt", "POST")).code == 404
    # Jupyter Kernel Gateway 3 lets the KeyError of a deleted kernel's restart out as a 500
    allowed = {404} if gateway.name == "kernelagent" else {404, 500}
    assert (await gateway.fetch(f"/api/kernels/{kid}/restart", "POST")).code in allowed
    with pytest.raises((HTTPClientError, ConnectionError)):
        ws = await gateway.channels(kid)
        try:  # a server that accepted the upgrade must at least close it at once
            assert await asyncio.wait_for(ws.conn.read_message(), 10) is None
            raise ConnectionError("closed")
        finally:
            ws.close()
    assert (await gateway.fetch(f"/api/kernels/{uuid.uuid4()}")).code == 404
