"""Interrupt, restart, shutdown, and nothing of a kernel outliving its server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from .conftest import Sandbox, wait_until_gone

pytestmark = pytest.mark.sandbox

CGROUP_DIRS = [Path("/sys/fs/cgroup/memory/kernelagent"), Path("/sys/fs/cgroup/pids/kernelagent")]


@pytest.mark.parametrize(
    "blocking",
    ["import time; time.sleep(60)", "import subprocess; subprocess.run(['sleep', '60'])"],
    ids=["time.sleep", "subprocess"],
)
async def test_interrupt_stops_the_cell_and_keeps_the_state(
    sandbox: Sandbox, blocking: str
) -> None:
    assert (await sandbox.run("x = 41")).status == "ok"

    started = asyncio.Event()

    def on_output(output: dict) -> None:
        if output["msg_type"] == "stream" and "started" in output["content"]["text"]:
            started.set()

    task = asyncio.create_task(
        sandbox.run(f"print('started', flush=True)\n{blocking}", timeout=90, on_output=on_output)
    )
    try:
        await asyncio.wait_for(started.wait(), 20)
        if "subprocess" in blocking:
            await wait_for_process(sandbox, "sleep")
        loop = asyncio.get_running_loop()
        interrupted_at = loop.time()
        await sandbox.km.interrupt_kernel()
        result = await asyncio.wait_for(asyncio.shield(task), 10)
        elapsed = loop.time() - interrupted_at
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert result.ename == "KeyboardInterrupt", result.describe()
    assert elapsed < 2, elapsed
    after = await sandbox.run("x + 1")
    assert after.of_type("execute_result")[0]["data"]["text/plain"] == "42", after.describe()
    async with asyncio.timeout(5):  # the interrupted child is gone (once its parent reaped it)
        while "sleep" in process_names(sandbox):
            await asyncio.sleep(0.05)


async def wait_for_process(sandbox: Sandbox, name: str, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while name not in process_names(sandbox):
        assert loop.time() < deadline, f"no {name} process in the kernel"
        await asyncio.sleep(0.05)


def process_names(sandbox: Sandbox) -> list[str]:
    """What runs in the sandbox (a zombie, dead but not yet reaped, runs nothing)."""
    names = []
    for pid in sandbox.km.provisioner.kernel_pids():
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                names.append(process.name())
    return names


async def test_restart_gives_a_fresh_kernel_and_keeps_the_workspace(sandbox: Sandbox) -> None:
    result = await sandbox.run("x = 1\nopen('kept.txt', 'w').write('still here')")
    assert result.status == "ok", result.describe()
    old_pids = set(sandbox.km.provisioner.kernel_pids())

    await asyncio.wait_for(sandbox.km.restart_kernel(), 30)
    await sandbox.connect()

    assert not old_pids & set(sandbox.km.provisioner.kernel_pids())
    gone = await sandbox.run("x")
    assert gone.ename == "NameError", gone.describe()
    kept = await sandbox.run("print(open('/workspace/kept.txt').read())")
    assert kept.stdout == "still here\n", kept.describe()
    assert (sandbox.workspace / "kept.txt").read_text() == "still here"


async def test_shutdown_leaves_no_process_and_no_files(sandbox: Sandbox) -> None:
    km = sandbox.km
    await sandbox.run("import subprocess; sleeper = subprocess.Popen(['sleep', '60'])")
    procs = [psutil.Process(pid) for pid in km.provisioner.kernel_pids()]
    # bubblewrap: outer bwrap, sandbox init, kernel, sleep; Docker: tini, kernel, sleep
    assert len(procs) >= {"bubblewrap": 4, "docker": 3}[sandbox.kind]
    kernel_dir = Path(km.connection_file).parent
    container = getattr(km.provisioner, "container_id", None)

    sandbox.client.stop_channels()
    sandbox.kc = None
    await asyncio.wait_for(km.shutdown_kernel(), 20)

    survivors = await wait_until_gone(procs, timeout=5)
    assert not survivors, survivors
    assert not kernel_dir.exists()
    if sandbox.kind == "docker":
        assert container and not docker_containers(f"id={container}")


def docker_containers(*filters: str) -> list[str]:
    """Ids of the engine's containers (running or not) matching ``key=value`` filters."""
    from kernelagent.sandbox.engine import client

    engine = client(os.environ.get("DOCKER_HOST", ""), 30.0)
    query: dict[str, list[str]] = {}
    for item in filters:
        key, _, value = item.partition("=")
        query.setdefault(key, []).append(value)
    return [c.id for c in engine.containers.list(all=True, filters=query)]


@pytest.mark.parametrize("sandbox_kind", ["bubblewrap"], indirect=True)
async def test_shutdown_reaps_the_sandbox_init_at_once(sandbox: Sandbox) -> None:
    """The outer bwrap does not wait for its init; the provisioner must, or a zombie remains."""
    km = sandbox.km
    init = km.provisioner.sandbox_init_pid()
    assert init is not None
    sandbox.client.stop_channels()
    sandbox.kc = None
    await asyncio.wait_for(km.shutdown_kernel(), 20)
    try:
        status = psutil.Process(init).status()
    except psutil.NoSuchProcess:
        status = "gone"
    assert status == "gone", f"sandbox init {init} is {status} after shutdown"


SERVER_SCRIPT = textwrap.dedent("""
    import asyncio, ctypes, json, os, sys
    from pathlib import Path

    PR_SET_CHILD_SUBREAPER = 36


    def supervise():
        # stands in for systemd / docker --init: adopts orphans and reaps them, so that what
        # is gone disappears instead of lingering as a zombie of whatever pid 1 this host has
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        pid = os.fork()
        if pid == 0:
            os.execv(sys.executable, [sys.executable, __file__, "serve", *sys.argv[2:]])
        while True:
            try:
                os.wait()
            except ChildProcessError:
                return


    async def serve(workspace, kernel_name):
        from jupyter_client import AsyncKernelManager

        km = AsyncKernelManager(kernel_name=kernel_name)
        await km.start_kernel(cwd=workspace)
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        info = {
            "server": os.getpid(),
            "pids": km.provisioner.kernel_pids(),
            "kernel_dir": str(Path(km.connection_file).parent),
            "container": getattr(km.provisioner, "container_id", None),
        }
        print(json.dumps(info), flush=True)
        await asyncio.sleep(3600)


    if sys.argv[1] == "supervise":
        supervise()
    else:
        asyncio.run(serve(sys.argv[2], sys.argv[3]))
""")


async def test_kernel_dies_with_its_server(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    log = tmp_path / "server.log"
    info: dict = {}
    owned: list[psutil.Process] = []  # killed at the end should the test fail half-way
    with log.open("wb") as stderr:
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "supervise",
            str(workspace),
            "kernelagent-python3",
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        assert supervisor.stdout is not None
        line = await asyncio.wait_for(supervisor.stdout.readline(), 60)
        assert line, f"the server died before starting its kernel: {log.read_text()}"
        info = json.loads(line)
        server = psutil.Process(info["server"])
        procs = [psutil.Process(pid) for pid in info["pids"]]
        owned += [server, *procs]
        assert len(procs) >= 3
        for proc in procs:
            assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        assert server.is_running()
        assert procs[0].ppid() == server.pid  # the outer bwrap is the server's child

        server.kill()

        survivors = await wait_until_gone(procs, timeout=5)
        assert not survivors, survivors
        await asyncio.wait_for(supervisor.wait(), 10)
    finally:
        cleanup_after_crash(info, owned)
        try:
            await asyncio.wait_for(supervisor.wait(), 10)  # it exits once it reaped everything
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor.pid, signal.SIGKILL)  # supervisor, server, outer bwrap
            await asyncio.wait_for(supervisor.wait(), 10)


def cleanup_after_crash(info: dict, procs: list[psutil.Process]) -> None:
    """What the crashed server left: its kernel dir and (empty) cgroups; any straggler."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil refuses if the pid was reused meanwhile
    if "kernel_dir" in info:
        kernel_dir = Path(info["kernel_dir"])
        shutil.rmtree(kernel_dir, ignore_errors=True)
        for parent in CGROUP_DIRS:
            with contextlib.suppress(OSError):
                (parent / kernel_dir.name).rmdir()


async def test_containers_of_a_killed_server_are_removed_at_the_next_start(
    tmp_path: Path, docker_engine: str
) -> None:
    """A container does not die with its server (nothing ties them); the next server's first
    kernel start removes it, and its runtime files, because the owner's lock is released."""
    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT)
    servers = []
    infos = []
    try:
        for n in range(2):
            workspace = tmp_path / f"workspace{n}"
            workspace.mkdir()
            server = await asyncio.create_subprocess_exec(
                sys.executable, str(script), "serve", str(workspace),
                "kernelagent-python3-docker",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            servers.append(server)
            assert server.stdout is not None
            line = await asyncio.wait_for(server.stdout.readline(), 60)
            assert line, "the server died before starting its kernel"
            infos.append(json.loads(line))
            if n == 0:
                first = infos[0]["container"]
                assert docker_containers(f"id={first}")  # running
                server.kill()
                await server.wait()
                assert docker_containers(f"id={first}"), "outlives its server until the next start"
                assert Path(infos[0]["kernel_dir"]).exists()

        assert not docker_containers(f"id={infos[0]['container']}")
        assert not Path(infos[0]["kernel_dir"]).exists()
        assert docker_containers(f"id={infos[1]['container']}"), "a live server's kernel stays"
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                server.kill()
            await server.wait()
        from kernelagent.sandbox.engine import client

        for info in infos:
            with contextlib.suppress(Exception):
                client(os.environ.get("DOCKER_HOST", ""), 30.0).api.remove_container(
                    info["container"], force=True
                )
            shutil.rmtree(info["kernel_dir"], ignore_errors=True)
