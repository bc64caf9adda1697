"""``KERNELAGENT_LOG_FORMAT=json``: one JSON object per line, each with the ids of what it is
about (request, user, session, turn), from a real ``kernelagent serve``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

pytestmark = pytest.mark.sandbox

TOKEN = "log-owner-token"


async def test_json_logs_carry_the_request_user_and_session_ids(tmp_path):
    sock, port = bind_unused_port()
    sock.close()
    env = {
        **os.environ,
        "KERNELAGENT_LOG_FORMAT": "json",
        "KERNELAGENT_DATA_DIR": str(tmp_path / "data"),
        "KERNELAGENT_TOKEN": TOKEN,
        "KERNELAGENT_POOL_SIZE": "0",
        "KERNELAGENT_PORT": str(port),
    }
    log = tmp_path / "server.log"  # stderr: the logs (stdout has the banner, for people)
    with log.open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "kernelagent", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    client = AsyncHTTPClient()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {TOKEN}", "X-Request-ID": "trace-42"}
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    await client.fetch(f"{base}/api/v1/health")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        created = await client.fetch(
            f"{base}/api/v1/sessions", method="POST", body="{}", headers=headers
        )
        assert created.headers["X-Request-ID"] == "trace-42"
        sid = json.loads(created.body)["id"]
        cell = await client.fetch(
            f"{base}/api/v1/sessions/{sid}/cells", method="POST",
            body=json.dumps({"code": "1 / 0"}), headers=headers,
        )  # fmt: skip
        assert cell.code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 30)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [
        r for r in records
        if r["logger"] == "tornado.access" and f"/api/v1/sessions/{sid}/cells" in r["message"]
    ]  # fmt: skip
    assert access and access[0]["request_id"] == "trace-42"
    assert access[0]["session_id"] == sid and access[0]["user_id"]
    assert {"time", "level", "logger", "message", "turn_id"} <= access[0].keys()


def test_an_unknown_log_format_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "kernelagent", "doctor"],
        env={**os.environ, "KERNELAGENT_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "KERNELAGENT_LOG_FORMAT" in result.stderr


def test_an_embedded_app_leaves_the_root_logger_as_it_found_it(tmp_path):
    """A program that runs the app inside itself keeps its own logging: the MCP SDK, built at
    start, would otherwise give the root logger a console handler at INFO, drawing every
    request."""
    sock, port = bind_unused_port()
    sock.close()
    script = """
import asyncio, logging, sys
from pathlib import Path
from kernelagent.app import KernelAgentApp
from kernelagent.config import Settings

async def main():
    app = KernelAgentApp(Settings(data_dir=Path(sys.argv[1]), port=int(sys.argv[2]), pool_size=0))
    await app.start()
    try:
        root = logging.getLogger()
        print(len(root.handlers), logging.getLevelName(root.level), app._mcp is not None)
    finally:
        await app.stop()

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data"), str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "WARNING", "True"]
