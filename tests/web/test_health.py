"""The server starts with its embedded defaults and answers health without auth."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys

from tornado.httpclient import AsyncHTTPClient

from kernelagent.adapters.db import open_database
from kernelagent.adapters.runtime import LocalRuntime
from kernelagent.adapters.storage import FsspecStorage
from kernelagent.app import KernelAgentApp
from kernelagent.services.readiness import Readiness


async def test_health_reports_status_and_pool(settings, unused_port):
    app = KernelAgentApp(dataclasses.replace(settings, port=unused_port))
    await app.start()
    try:
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{unused_port}/api/v1/health")
        body = json.loads(response.body)
        assert response.code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert body["status"] == "ok"
        assert body["sandbox"] == "bubblewrap"
        assert body["pool"] == {"size": 0, "target": 0, "ready": 0, "error": None}
    finally:
        await app.stop()


async def test_unknown_api_path_is_a_json_404(settings, unused_port):
    app = KernelAgentApp(dataclasses.replace(settings, port=unused_port))
    await app.start()
    try:
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{unused_port}/api/v1/nope", raise_error=False
        )
        assert response.code == 404
    finally:
        await app.stop()


async def test_serve_command_prints_a_url_with_token_and_serves(tmp_path, unused_port):
    env = {
        **os.environ,
        "KERNELAGENT_DATA_DIR": str(tmp_path),
        "KERNELAGENT_POOL_SIZE": "0",
        "KERNELAGENT_TOKEN": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelagent", "serve", "--port", str(unused_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
        assert match, line
        assert int(match.group(1)) == unused_port
        assert len(match.group(2)) >= 24
        response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{unused_port}/api/v1/health")
        assert json.loads(response.body)["status"] == "ok"
        sessions = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{unused_port}/api/v1/sessions",
            headers={"Authorization": f"token {match.group(2)}"},
        )
        assert json.loads(sessions.body) == {"sessions": []}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        proc.stdout.close()


async def test_ready_asks_each_shared_backend(ka_server):
    response = await ka_server.fetch("/api/v1/ready", token=None)
    assert response.code == 200, response.body
    body = json.loads(response.body)
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "runtime_state": "ok", "storage": "ok"},
    }
    ka_server.services.readiness.draining = True  # as a stopping server is
    response = await ka_server.fetch("/api/v1/ready", token=None)
    assert response.code == 503 and json.loads(response.body)["status"] == "draining"


async def test_not_ready_names_the_backend_that_does_not_answer(tmp_path, unused_port, monkeypatch):
    """Storage on an S3 endpoint nobody listens on: readiness says so."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    db = await open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    storage = FsspecStorage("s3://nowhere/prefix", endpoint_url=f"http://127.0.0.1:{unused_port}")
    try:
        checks = await Readiness(db, LocalRuntime(), storage).check()
    finally:
        await db.close()
    assert checks["database"] == "ok" and checks["runtime_state"] == "ok"
    assert checks["storage"] != "ok"
