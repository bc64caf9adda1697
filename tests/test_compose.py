"""compose.yaml, as the compose tool reads it: the server starts kernels through the Docker
socket, shares its data directory with the host at the same path, and waits for its services."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose_config(env: dict[str, str] | None = None) -> dict:
    """``docker-compose config``: the file validated and resolved by the compose tool."""
    if shutil.which("docker-compose"):
        argv = ["docker-compose", "-f", "compose.yaml", "config"]
    elif subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        argv = ["docker", "compose", "-f", "compose.yaml", "config"]
    else:
        message = "no compose tool (make docker installs Debian's docker-compose)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_server_drives_docker_and_shares_its_data_dir_at_the_same_path():
    config = compose_config({"KERNELAGENT_DATA": "/srv/ka"})
    server = config["services"]["server"]
    assert server["environment"]["KERNELAGENT_SANDBOX"] == "docker"
    assert server["environment"]["KERNELAGENT_DATA_DIR"] == "/srv/ka"
    assert server["environment"]["KERNELAGENT_RUNTIME_DIR"] == "/srv/ka/run"
    volumes = {v.split(":")[1]: v.split(":")[0] for v in server["volumes"]}
    assert volumes["/var/run/docker.sock"] == "/var/run/docker.sock"
    assert volumes["/srv/ka"] == "/srv/ka"  # the engine resolves kernel bind mounts on the host
    image = config["services"]["kernel-image"]
    assert image["image"] == server["environment"]["KERNELAGENT_KERNEL_IMAGE"]
    assert image["build"]["dockerfile"] == "kernel_images/python/Dockerfile"


def test_the_server_waits_for_what_it_uses():
    config = compose_config()
    services = config["services"]
    server = services["server"]
    env = server["environment"]
    assert env["KERNELAGENT_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["KERNELAGENT_DATABASE_URL"]
    assert env["KERNELAGENT_REDIS_URL"] == "redis://redis:6379/0"
    assert env["KERNELAGENT_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    depends = server["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["buckets"]["condition"] == "service_completed_successfully"
    assert depends["kernel-image"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "minio"):
        assert services[name]["healthcheck"]["test"], name
