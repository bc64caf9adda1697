"""The server's image, run as a deployment runs it: the health check, a session whose kernel is a
container started through the Docker socket, PostgreSQL and Redis, and a clean stop.

The container uses the host's network (this machine has no bridge) to reach PostgreSQL and Redis
on loopback; its data directory is bind-mounted at the same path as on the host, because the
engine resolves the kernel containers' bind mounts on the host (see ``compose.yaml``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile

import pytest
from tornado.httpclient import AsyncHTTPClient

from kernelagent.sandbox.engine import LABEL, client

pytestmark = [pytest.mark.sandbox, pytest.mark.docker, pytest.mark.postgres]

TOKEN = "token-for-the-image-test"


@pytest.fixture
def data_dir():
    path = tempfile.mkdtemp(prefix="ka-image-", dir="/tmp")  # short: ipc socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_the_server_image_serves_sessions_with_docker_kernels(
    server_image, postgres_url, redis_url, unused_port, data_dir
):
    engine = client(os.environ.get("DOCKER_HOST", ""), 60.0)
    socket_path = (os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")[len("unix://") :]
    runtime = f"{data_dir}/run"
    server = engine.containers.run(
        server_image,
        detach=True,
        network_mode="host",
        volumes={
            socket_path: {"bind": "/var/run/docker.sock", "mode": "rw"},
            data_dir: {"bind": data_dir, "mode": "rw"},
        },
        environment={
            "KERNELAGENT_DATA_DIR": data_dir,
            "KERNELAGENT_RUNTIME_DIR": runtime,
            "KERNELAGENT_PORT": str(unused_port),
            "KERNELAGENT_TOKEN": TOKEN,
            "KERNELAGENT_POOL_SIZE": "1",
            "KERNELAGENT_DATABASE_URL": postgres_url,
            "KERNELAGENT_REDIS_URL": redis_url,
        },
        labels={"kernelagent.test": "server-image"},
    )
    http = AsyncHTTPClient()
    base = f"http://127.0.0.1:{unused_port}"
    headers = {"Authorization": f"token {TOKEN}"}
    try:
        health = None
        for _ in range(150):
            try:
                health = json.loads((await http.fetch(f"{base}/api/v1/health")).body)
                break
            except (ConnectionError, OSError):
                await asyncio.sleep(0.2)
        assert health is not None, server.logs().decode()[-2000:]
        assert health["status"] == "ok" and health["sandbox"] == "docker", health

        session = json.loads(
            (
                await http.fetch(
                    f"{base}/api/v1/sessions", method="POST", body='{"title": "image"}',
                    headers=headers,
                )
            ).body
        )  # fmt: skip
        code = "import os, sys\nprint(os.getuid(), sys.prefix, os.getcwd())\n6 * 7"
        cell = json.loads(
            (
                await http.fetch(
                    f"{base}/api/v1/sessions/{session['id']}/cells", method="POST",
                    body=json.dumps({"code": code}), headers=headers, request_timeout=120,
                )
            ).body
        )["cell"]  # fmt: skip
        assert cell["metadata"]["kernelagent"]["status"] == "ok", cell
        uid, prefix, cwd = cell["outputs"][0]["text"].split()
        assert (uid, prefix, cwd) == ("10001", "/opt/kernel", "/workspace")
        assert cell["outputs"][1]["data"]["text/plain"] == "42"

        # the server runs as 10001, not root; its kernels are labelled containers
        processes = server.top()["Processes"]
        assert {row[0] for row in processes} == {"10001"}, processes
        kernels = engine.containers.list(filters={"label": f"kernelagent.runtime={runtime}"})
        assert len(kernels) == 2  # the session's and the pool's
        assert all(LABEL in k.labels for k in kernels)

        for _ in range(60):  # HEALTHCHECK: every 5 s
            server.reload()
            if server.attrs["State"].get("Health", {}).get("Status") == "healthy":
                break
            await asyncio.sleep(0.5)
        assert server.attrs["State"]["Health"]["Status"] == "healthy"

        server.stop(timeout=20)  # SIGTERM: the server shuts its kernels down
        server.reload()
        assert server.attrs["State"]["ExitCode"] == 0, server.logs().decode()[-2000:]
        left = engine.containers.list(all=True, filters={"label": f"kernelagent.runtime={runtime}"})
        assert left == []
    finally:
        for container in engine.containers.list(
            all=True, filters={"label": f"kernelagent.runtime={runtime}"}
        ):
            container.remove(force=True)
        server.remove(force=True)
