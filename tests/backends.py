"""Fixtures for tests against real networked backends: S3 (moto's server, over HTTP) and Redis.

Load them in a test module with ``pytest_plugins = ["backends"]`` (``tests/`` is on ``sys.path``
because of ``tests/conftest.py``), or for every test by adding ``"backends"`` to ``pytest_plugins``
in ``tests/conftest.py``. The ``s3`` and ``redis`` markers are registered in ``pyproject.toml``.

``moto_s3``
    A fresh, empty bucket on an in-process moto S3 server (one server per test session, on an
    unused loopback port), with dummy ``AWS_*`` credentials in the environment. Yields
    :class:`MotoS3` (``endpoint_url``, ``bucket``, ``url(prefix)``). Mark tests ``s3``.

``docker_engine``
    A Docker engine that answers and has the kernel image (``make docker`` prepares both): from
    ``DOCKER_HOST``, else the engine ``make docker`` starts (then ``DOCKER_HOST`` is set for the
    test run, as the server and the provisioner read it). Missing: skipped, or a failure under
    ``CI=true``. Yields the image name. Mark tests ``docker``.

``redis_url``
    ``redis://127.0.0.1:6379/15`` (or ``$KERNELAGENT_TEST_REDIS_URL``) after a successful PING.
    Unreachable: the test is skipped, or fails when ``CI=true`` (CI must not pass by skipping).
    Nothing is flushed, so concurrent test runs cannot wipe each other's keys: put keys under
    ``redis_prefix``, which is unique per test and deleted afterwards. Mark tests ``redis``.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
import redis

REDIS_URL = os.environ.get("KERNELAGENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PING_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class MotoS3:
    endpoint_url: str
    bucket: str

    def url(self, prefix: str = "") -> str:
        """``s3://<bucket>/<prefix>``, for ``FsspecStorage(url, endpoint_url=...)``."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server in a thread on 127.0.0.1 (port chosen by the OS); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_s3(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> MotoS3:
    """A new empty bucket on the moto server, with dummy credentials in the environment."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # no ~/.aws of the person running the tests
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    client = boto3.client("s3", endpoint_url=moto_server)
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()
    return MotoS3(endpoint_url=moto_server, bucket=bucket)


def _redis_unavailable(message: str) -> None:
    """Skip, or fail under CI=true (a service CI must have)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    """The test Redis URL, once it answers PING (skip, or fail in CI, when it does not)."""
    client = redis.Redis.from_url(
        REDIS_URL, socket_timeout=PING_TIMEOUT, socket_connect_timeout=PING_TIMEOUT
    )
    try:
        client.ping()
    except redis.RedisError as e:
        _redis_unavailable(
            f"no Redis at {REDIS_URL} ({e}); start one or set KERNELAGENT_TEST_REDIS_URL"
        )
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted when the test ends."""
    prefix = f"kernelagent-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(
        redis_url, socket_timeout=PING_TIMEOUT, socket_connect_timeout=PING_TIMEOUT
    )
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


DOCKER_SOCKET = "unix:///run/kernelagent-docker/docker.sock"  # the engine `make docker` starts
KERNEL_IMAGE = os.environ.get("KERNELAGENT_KERNEL_IMAGE", "kernelagent/kernel-python:latest")


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The kernel image's name, once an engine answers and has it (else skip, or fail in CI)."""
    from kernelagent.sandbox import engine

    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        os.environ["DOCKER_HOST"] = DOCKER_SOCKET
    failure = engine.check(os.environ.get("DOCKER_HOST", ""), KERNEL_IMAGE)
    if failure:
        _redis_unavailable(f"Docker: {failure}")
    return KERNEL_IMAGE


SERVER_IMAGE = os.environ.get("KERNELAGENT_SERVER_IMAGE", "kernelagent/server:latest")


@pytest.fixture(scope="session")
def server_image(docker_engine: str) -> str:
    """The server image's name, once the engine has it (``make docker`` builds it)."""
    from kernelagent.sandbox import engine

    failure = engine.check(os.environ.get("DOCKER_HOST", ""), SERVER_IMAGE)
    if failure:
        _redis_unavailable(f"Docker: {failure}")
    return SERVER_IMAGE
