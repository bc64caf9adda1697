"""Session kernels in containers that a gateway starts: Jupyter Enterprise Gateway's Docker
process proxy runs kernelagent's kernel image through the kernelspec and launcher in
``kernel_images/kernelagent-python3-gateway-docker`` (the image's bootstrap script reports the
kernel's ports back to the gateway). The server knows only the gateway: files, interrupt,
restart and shutdown all go through it and through the kernel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import docker
import pytest
from conftest import backend_settings, running
from gateways import EG_VENV, gateway, on_gateway, unused_port
from test_api import (
    test_cell_runs_and_is_recorded,
    test_interrupt_endpoint_stops_the_running_cell,
    test_rich_outputs_become_artifacts_with_signed_urls,
)
from test_gateway import test_restart_keeps_the_socket_and_is_recorded

pytestmark = [pytest.mark.sandbox, pytest.mark.docker]

SPEC = Path(__file__).parents[2] / "kernel_images" / "kernelagent-python3-gateway-docker"
NETWORK = "kernelagent-gateway-kernels"  # a bridge with nothing but these kernels on it


@pytest.fixture(scope="module")
def container_gateway(docker_engine, tmp_path_factory):
    """Enterprise Gateway with the kernelspec that starts ``docker_engine``'s image per kernel.
    Yields (url, token, docker client)."""
    client = docker.from_env()
    networks = client.networks.list(names=[NETWORK]) or [client.networks.create(NETWORK)]
    host_ip = networks[0].attrs["IPAM"]["Config"][0]["Gateway"]  # this host, on that bridge
    home = tmp_path_factory.mktemp("eg-docker")
    name = SPEC.name
    shutil.copytree(SPEC, home / "kernels" / name)
    spec = json.loads((SPEC / "kernel.json").read_text())
    spec["argv"][0] = str(EG_VENV / "bin" / "python")  # the launcher runs with the gateway's Python
    spec["metadata"]["process_proxy"]["config"]["image_name"] = docker_engine
    env = {
        "EG_DOCKER_NETWORK": NETWORK,
        "EG_RESPONSE_IP": host_ip,
        "EG_RESPONSE_PORT": str(unused_port()),
        "EG_INHERITED_ENVS": "PATH,DOCKER_HOST",
        "EG_KERNEL_LAUNCH_TIMEOUT": "60",
    }
    with gateway("enterprise_gateway", home, {name: spec}, env) as (url, token):
        yield url, token, client
    client.close()


@pytest.fixture(params=["embedded"])
async def ka_server(request, tmp_path, unused_port, container_gateway):
    url, token, _ = container_gateway
    overrides = {"gateway_url": url, "gateway_token": token, "gateway_kernel_name": SPEC.name}
    async with running(backend_settings(request, tmp_path, unused_port, **overrides)) as server:
        yield server


def _container(client: docker.DockerClient, kernel_id: str):
    found = client.containers.list(filters={"label": f"kernel_id={kernel_id}"})
    return found[0] if found else None


async def test_the_kernel_runs_locked_down_in_a_container_the_gateway_started(
    ka_server, container_gateway
):
    url, token, client = container_gateway
    sid = (await ka_server.session())["id"]
    assert (await ka_server.upload(sid, "in.csv", b"a,b\n1,2\n")).code == 201
    code = (
        "import os, socket, pandas as pd\n"
        "df = pd.read_csv('in.csv'); df.to_csv('out.csv', index=False)\n"
        "s = socket.socket(); s.settimeout(2)\n"
        "try:\n"
        "    s.connect(('192.0.2.1', 80)); out = 'reached'\n"
        "except OSError as e:\n"
        "    out = 'no route'\n"
        "print(os.getuid(), os.getcwd(), int(df.a.sum() + df.b.sum()), out)"
    )
    cell = (await ka_server.run(sid, code))["cell"]
    assert cell["outputs"][0]["text"].split() == ["61000", "/workspace", "3", "no", "route"], cell
    kernel_id = (await ka_server.services.db.sessions.get(sid)).kernel_id
    container = _container(client, kernel_id)
    host = container.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["Memory"] == 2 << 30
    assert host["NetworkMode"] == NETWORK and host["PidsLimit"] == 512
    assert "DOCKER_HOST" not in " ".join(container.attrs["Config"]["Env"])
    listed = await ka_server.json(f"/api/v1/sessions/{sid}/files")
    assert {f["path"] for f in listed["files"]} == {"in.csv", "out.csv"}
    out = await ka_server.fetch(f"/api/v1/sessions/{sid}/files/out.csv")
    assert out.body == b"a,b\n1,2\n"
    await ka_server.fetch(f"/api/v1/sessions/{sid}", "DELETE")
    assert await on_gateway(url, token, kernel_id) == 404
    assert _container(client, kernel_id) is None


__all__ = [
    "test_cell_runs_and_is_recorded",
    "test_interrupt_endpoint_stops_the_running_cell",
    "test_restart_keeps_the_socket_and_is_recorded",
    "test_rich_outputs_become_artifacts_with_signed_urls",
]
