"""Resource limits: memory (rlimit and cgroup), processes, /tmp size."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import textwrap

import psutil
import pytest

from .conftest import Sandbox, StartSandbox

pytestmark = pytest.mark.sandbox

MiB = 1024**2
GiB = 1024**3


async def test_huge_allocation_is_a_memory_error_and_the_kernel_survives(sandbox: Sandbox) -> None:
    me = psutil.Process()
    rss_before = me.memory_info().rss

    result = await sandbox.run("x = 1\nblob = bytearray(2 * 1024**3)")
    assert result.status == "error", result.describe()
    assert result.ename == "MemoryError", result.describe()

    assert await sandbox.km.is_alive()
    after = await sandbox.run("x + 1")
    assert after.status == "ok", after.describe()
    assert after.of_type("execute_result")[0]["data"]["text/plain"] == "2"
    # nothing was charged to the host side: the test process and the kernel stay small
    assert me.memory_info().rss - rss_before < 100 * MiB
    kernel_rss = sum(
        psutil.Process(pid).memory_info().rss for pid in sandbox.km.provisioner.kernel_pids()
    )
    assert kernel_rss < 512 * MiB


@pytest.mark.skipif(os.geteuid() != 0, reason="kernel cgroups need a server running as root")
async def test_memory_cgroup_kills_the_kernel_and_says_why(start_sandbox: StartSandbox) -> None:
    # RLIMIT_DATA at 4x the limit (1 GiB) so that the cgroup, not the rlimit, stops the loop
    sandbox = await start_sandbox({"memory_limit": 256 * MiB, "data_fraction": 4.0})
    km = sandbox.km
    code = textwrap.dedent("""
        chunks = []
        while True:
            chunks.append(b"x" * (8 * 1024**2))  # written, so resident
    """)
    task = asyncio.create_task(sandbox.run(code, timeout=60))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await km.is_alive():
            assert loop.time() < deadline, "the kernel was not killed"
            assert not task.done(), task.result().describe()
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await task

    # the peak is reported where the cgroup records it (cgroup v1, or v2 with memory.peak)
    assert re.fullmatch(
        r"out of memory \(limit 256 MiB(, peak (2[3-9]\d|25\d|256)(\.\d)? MiB)?\)",
        km.provisioner.exit_reason(),
    ), km.provisioner.exit_reason()


async def test_fork_bomb_hits_the_process_limit(sandbox: Sandbox) -> None:
    code = textwrap.dedent("""
        import json, os, signal, time
        children, failure = [], None
        try:
            for _ in range(256):
                pid = os.fork()
                if pid == 0:
                    try:
                        time.sleep(60)
                    finally:
                        os._exit(0)
                children.append(pid)
        except OSError as e:
            failure = [type(e).__name__, e.errno]
        finally:
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            for pid in children:
                os.waitpid(pid, 0)
        print(json.dumps({"forked": len(children), "failure": failure}))
    """)
    outcome = (await sandbox.run(code)).json()
    assert outcome["forked"] < 128, outcome
    assert outcome["failure"] == ["BlockingIOError", errno.EAGAIN], outcome

    # the children are gone and the kernel can start processes again
    result = await sandbox.run("import subprocess; print(subprocess.run(['true']).returncode)")
    assert result.stdout == "0\n", result.describe()
    assert len(sandbox.km.provisioner.kernel_pids()) <= 4


async def test_filling_tmp_is_enospc(sandbox: Sandbox) -> None:
    code = textwrap.dedent("""
        import json, os
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(100):
                    f.write(b"x" * 1_000_000)
            failure = None
        except OSError as e:
            failure = [type(e).__name__, e.errno]
        finally:
            if os.path.exists("/tmp/fill"):
                os.remove("/tmp/fill")
        print(json.dumps(failure))
    """)
    failure = (await sandbox.run(code)).json()
    assert failure == ["OSError", errno.ENOSPC]

    result = await sandbox.run("open('/tmp/small', 'w').write('ok')")
    assert result.status == "ok", result.describe()
    assert result.of_type("execute_result")[0]["data"]["text/plain"] == "2"


async def test_a_file_past_the_size_limit_is_efbig_and_the_kernel_survives(
    start_sandbox: StartSandbox,
) -> None:
    sandbox = await start_sandbox({"file_size_limit": 10 * MiB})
    code = textwrap.dedent("""
        import json, os
        failure, written = None, 0
        try:
            with open("bomb.bin", "wb") as f:   # in the workspace, which is writable
                for _ in range(40):
                    f.write(b"x" * (1024**2))
                    f.flush()
                    written += 1
        except OSError as e:
            failure = [type(e).__name__, e.errno]
        print(json.dumps({"failure": failure, "size": os.path.getsize("bomb.bin")}))
    """)
    outcome = (await sandbox.run(code)).json()
    assert outcome["failure"] == ["OSError", errno.EFBIG], outcome
    assert outcome["size"] == 10 * MiB
    assert (sandbox.workspace / "bomb.bin").stat().st_size == 10 * MiB
    after = await sandbox.run("open('small.txt', 'w').write('ok')")
    assert after.status == "ok", after.describe()
