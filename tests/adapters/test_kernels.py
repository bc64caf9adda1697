"""LocalKernels: settings reach the sandbox, and a kernel that cannot start says why."""

from __future__ import annotations

import dataclasses
import json
import resource

import pytest

from kernelagent.adapters.kernels import LocalKernels
from kernelagent.errors import KernelDied, NotFound

pytestmark = pytest.mark.sandbox

MiB = 1024**2


async def test_settings_limits_reach_the_kernel(settings, tmp_path):
    settings = dataclasses.replace(settings, memory_limit=300 * MiB, open_files_limit=200)
    kernels = LocalKernels(settings)
    kernel_id = await kernels.start("ws")
    try:
        client = kernels.client(kernel_id)
        texts = []
        await client.execute_interactive(
            "import resource as r; print(r.getrlimit(r.RLIMIT_DATA)[0], "
            "r.getrlimit(r.RLIMIT_NOFILE)[0])",
            timeout=30,
            output_hook=lambda m: texts.append(m["content"].get("text", "")),
        )
        client.stop_channels()
        data, nofile = map(int, "".join(texts).split())
        assert data == int(300 * MiB * 0.9)
        assert nofile == 200
        assert data != resource.getrlimit(resource.RLIMIT_DATA)[0]
    finally:
        await kernels.close()


async def test_kernel_dying_during_start_is_reported(settings, tmp_path, monkeypatch):
    spec_dir = tmp_path / "kernels" / "broken"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    "python",
                    "-c",
                    "import sys; sys.stderr.write('kernel exploded'); sys.exit(3)",
                    "{connection_file}",
                ],
                "display_name": "broken",
                "language": "python",
                "metadata": {"kernel_provisioner": {"provisioner_name": "kernelagent-bubblewrap"}},
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    kernels = LocalKernels(dataclasses.replace(settings, kernel_name="broken"))
    try:
        with pytest.raises(KernelDied, match="kernel died during start: exited with status 3"):
            await kernels.start("ws")
        assert kernels.mkm.list_kernel_ids() == []
    finally:
        await kernels.close()


async def test_unknown_kernelspec_is_a_clear_error(settings, tmp_path):
    kernels = LocalKernels(dataclasses.replace(settings, kernel_name="no-such-kernel"))
    try:
        with pytest.raises(NotFound, match=r"named 'no-such-kernel'.*kernelagent-python3"):
            await kernels.start("ws")
    finally:
        await kernels.close()
