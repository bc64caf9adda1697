"""The services under the server fail: Redis restarted, PostgreSQL refusing and cutting
connections. While one is away the API answers a clear 503 naming it; once it is back the same
server process serves again, with the kernel's state kept and nothing half-done."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import psycopg
import pytest
from conftest import PG_ADMIN, running
from tornado.testing import bind_unused_port

from kernelagent.config import Settings
from kernelagent.services import notebook_store

pytestmark = pytest.mark.sandbox


class RedisServer:
    """A Redis of this test's own (no persistence), stopped and started on one port."""

    def __init__(self, directory):
        sock, self.port = bind_unused_port()
        sock.close()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def settings_for(tmp_path, port: int, **overrides) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        port=port,
        pool_size=0,
        pool_preimport="",
        token="owner-token-for-tests",
        **overrides,
    )


def value(answer: dict) -> str:
    return answer["cell"]["outputs"][0]["data"]["text/plain"]


async def until_served(server, sid: str, code: str, seconds: float = 30) -> dict:
    """Send a cell again until it is answered 200 (the service came back)."""
    async with asyncio.timeout(seconds):
        while True:
            response = await server.fetch(f"/api/v1/sessions/{sid}/cells", "POST", {"code": code})
            if response.code == 200:
                return json.loads(response.body)
            assert response.code == 503, (response.code, response.body)
            await asyncio.sleep(0.3)


async def test_redis_restarted_mid_session_gives_503s_then_recovers(
    redis_server, tmp_path, unused_port
):
    settings = settings_for(tmp_path, unused_port, redis_url=redis_server.url)
    async with running(settings) as server:
        sid = (await server.session("redis"))["id"]
        await server.run(sid, "x = 41")
        redis_server.stop()

        refused = await server.fetch(f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x += 1"})
        assert refused.code == 503, refused.body
        error = json.loads(refused.body)["error"]
        assert error["code"] == "unavailable" and "Redis" in error["message"], error
        assert (await server.fetch("/api/v1/ready")).code == 503

        redis_server.start()  # empty: its keys are gone too
        answer = await until_served(server, sid, "x + 1")
        assert value(answer) == "42"  # the refused cell never ran; the kernel kept its state
        cells = [c for c in await server.services.db.cells.list(sid) if c.cell_type == "code"]
        assert [c.source for c in cells] == ["x = 41", "x + 1"]
        async with asyncio.timeout(10):  # ready again once the heartbeat renewed its lease
            while (await server.fetch("/api/v1/ready")).code != 200:
                await asyncio.sleep(0.2)


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(sql)


@pytest.mark.postgres
async def test_postgres_cut_and_refusing_gives_503s_then_recovers(
    postgres_url, tmp_path, unused_port
):
    name = postgres_url.rsplit("/", 1)[-1]
    cut = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    settings = settings_for(tmp_path, unused_port, database_url=postgres_url)
    async with running(settings) as server:
        sid = (await server.session("pg"))["id"]
        await server.run(sid, "x = 41")

        _admin(cut)  # every pooled connection dies: the next request reconnects
        assert value(await server.run(sid, "x")) == "41"

        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        _admin(cut)
        try:
            refused = await server.fetch(
                f"/api/v1/sessions/{sid}/cells", "POST", {"code": "x += 1"}
            )
            assert refused.code == 503, refused.body
            error = json.loads(refused.body)["error"]
            assert error["code"] == "unavailable" and "database" in error["message"], error
            assert (await server.fetch("/api/v1/sessions")).code == 503
        finally:
            _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        answer = await until_served(server, sid, "x + 1")
        assert value(answer) == "42"
        cells = [c for c in await server.services.db.cells.list(sid) if c.cell_type == "code"]
        assert [c.source for c in cells] == ["x = 41", "x", "x + 1"]  # nothing half-written
        assert all(c.status == "ok" for c in cells)


@pytest.mark.s3
async def test_s3_unreachable_cells_are_recorded_and_storage_catches_up(
    tmp_path, unused_port, monkeypatch
):
    from moto.server import ThreadedMotoServer

    for name, value_ in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value_)  # fmt: skip
    sock, port = bind_unused_port()
    sock.close()
    endpoint = f"http://127.0.0.1:{port}"
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="faults")
    monkeypatch.setattr(notebook_store, "RETRY_CAP", 2.0)  # retried often, for the test
    settings = settings_for(
        tmp_path, unused_port, storage_url="s3://faults/ka", s3_endpoint_url=endpoint
    )
    try:
        async with running(settings) as server:
            sid = (await server.session("s3"))["id"]
            await server.run(sid, "open('a.txt', 'w').write('a')")
            moto.stop()

            away = await server.run(sid, "open('b.txt', 'w').write('b'); 'recorded'")
            assert value(away) == "'recorded'"  # the cell is in the record all the same
            assert (await server.fetch("/api/v1/ready")).code == 503
            await asyncio.sleep(12)  # longer than the storage client's own retries: the
            # notebook's write (2 s after the cell) gives up meanwhile

            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            moto.start()  # the same in-process store: what was there before is there

            def keys() -> list[str]:
                return [o["Key"] for o in s3.list_objects_v2(Bucket="faults").get("Contents", [])]

            async with asyncio.timeout(30):  # the notebook is written again, unasked
                while True:
                    stored = [k for k in keys() if k.endswith(".ipynb")]
                    if stored:
                        body = s3.get_object(Bucket="faults", Key=stored[0])["Body"].read()
                        sources = ["".join(c["source"]) for c in json.loads(body)["cells"]]
                        if any("'recorded'" in s for s in sources):
                            break
                    await asyncio.sleep(0.5)
            assert not any(k.endswith("/files/b.txt") for k in keys())
            await server.run(sid, "3")  # the next cell's mirror sends what the last one missed
            assert any(k.endswith("/files/b.txt") for k in keys()), keys()
    finally:
        moto.stop()
