"""Shared fixtures: settings in a temporary data dir, and ``ka_server``: the real app on an unused
port over each backend set, with helpers to call it as a client would.

Backend sets (fixture params): ``embedded`` = SQLite + local files + in-process locks;
``networked`` = PostgreSQL + S3 (moto's server mode, over HTTP) + Redis. Under ``CI=true`` a
missing PostgreSQL or Redis fails the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.testing import bind_unused_port

from kernelagent.app import KernelAgentApp
from kernelagent.config import Settings

pytest_plugins = ["backends"]


@pytest.fixture
def settings(tmp_path):
    """Embedded defaults in a private data dir; no warm pool unless a test asks for one."""
    return Settings(data_dir=tmp_path / "data", pool_size=0, pool_preimport="")


@pytest.fixture
def unused_port():
    sock, port = bind_unused_port()
    sock.close()
    return port


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def postgres_url():
    import psycopg

    name = f"ka_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        _unavailable("PostgreSQL", e)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server:
    """A running app plus helpers to call it as a client would."""

    def __init__(self, app: KernelAgentApp, port: int, token: str):
        self.app = app
        self.port = port
        self.token = token
        self.base = f"http://127.0.0.1:{port}"
        self.client = AsyncHTTPClient()

    @property
    def services(self):
        return self.app.services

    async def fetch(
        self,
        path: str,
        method: str = "GET",
        body: Any = None,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 60,
    ) -> HTTPResponse:
        all_headers = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            all_headers["Authorization"] = f"token {token}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is None and method in {"POST", "PATCH", "PUT"}:
            data = b""
        return await self.client.fetch(
            self.base + path,
            method=method,
            body=data,
            headers=all_headers,
            raise_error=False,
            request_timeout=timeout,
        )

    async def json(self, path: str, method: str = "GET", body: Any = None, **kw: Any) -> Any:
        response = await self.fetch(path, method, body, **kw)
        assert response.code < 300, (response.code, response.body)
        return json.loads(response.body) if response.body else None

    async def upload(
        self, session_id: str, filename: str, content: bytes, path: str | None = None
    ) -> HTTPResponse:
        """``POST …/files`` as a browser sends it: multipart field ``file``, optional ``path``."""
        boundary = "kernelagent-test-boundary"
        body = (
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        query = f"?path={urllib.parse.quote(path)}" if path is not None else ""
        return await self.fetch(
            f"/api/v1/sessions/{session_id}/files{query}",
            "POST",
            raw=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )

    async def new_user(self, name: str) -> str:
        _, token = await self.services.auth.add_user(name)
        return token

    async def session(self, title: str = "test") -> dict[str, Any]:
        return await self.json("/api/v1/sessions", "POST", {"title": title})

    async def run(self, session_id: str, code: str, **extra: Any) -> dict[str, Any]:
        return await self.json(
            f"/api/v1/sessions/{session_id}/cells", "POST", {"code": code, **extra}
        )


def backend_settings(request, tmp_path, port: int, **overrides: Any) -> Settings:
    """Settings of a test server over the backend set ``request.param`` names."""
    settings = Settings(
        data_dir=tmp_path / "data",
        port=port,
        pool_size=0,
        pool_preimport="",
        token="owner-token-for-tests",
        **overrides,
    )
    if request.param == "networked":
        request.applymarker(pytest.mark.postgres)
        settings = dataclasses.replace(
            settings,
            database_url=request.getfixturevalue("postgres_url"),
            redis_url=request.getfixturevalue("redis_url"),
            storage_url=request.getfixturevalue("moto_s3").url("kernelagent"),
            s3_endpoint_url=request.getfixturevalue("moto_s3").endpoint_url,
        )
    return settings


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Server]:
    app = KernelAgentApp(settings)
    await app.start()
    try:
        token = await app.owner_token()
        yield Server(app, settings.port, token)
    finally:
        await app.stop()


@pytest.fixture(params=["embedded", "networked"])
async def ka_server(request, tmp_path, unused_port):
    async with running(backend_settings(request, tmp_path, unused_port)) as server:
        yield server
