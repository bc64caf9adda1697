"""Fixtures for tests that start real sandboxed kernels, on each sandbox.

``start_sandbox(config=None)`` starts a kernel of the sandbox's kernelspec
(``kernelagent-python3`` for bubblewrap, ``kernelagent-python3-docker`` for Docker) with a plain
``AsyncKernelManager`` (cwd = a fresh workspace under ``tmp_path``) and returns a :class:`Sandbox`
with the manager and a ready client; every kernel it started is shut down when the test ends,
whatever happened. ``run(client, code, timeout)`` executes a cell and returns its outputs and
reply status.

Every test using these fixtures runs once per sandbox (``sandbox_kind``: ``bubblewrap``,
``docker``); a test about one sandbox's own mechanics pins it with
``@pytest.mark.parametrize("sandbox_kind", ["bubblewrap"], indirect=True)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.asynchronous import AsyncKernelClient
from traitlets.config import Config

KERNEL_NAME = "kernelagent-python3"
KERNEL_NAMES = {"bubblewrap": KERNEL_NAME, "docker": "kernelagent-python3-docker"}
PROVISIONERS = {"bubblewrap": "BubblewrapProvisioner", "docker": "DockerProvisioner"}
START_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 20.0
RUN_TIMEOUT = 30.0
OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")


@dataclasses.dataclass
class Result:
    """What one executed cell produced: its reply status and iopub outputs, in order."""

    status: str
    reply: dict[str, Any]
    outputs: list[dict[str, Any]]  # {"msg_type": ..., "content": ...}

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [o["content"] for o in self.outputs if o["msg_type"] == msg_type]

    def stream(self, name: str) -> str:
        return "".join(c["text"] for c in self.of_type("stream") if c["name"] == name)

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of_type("error")
        return errors[-1] if errors else None

    @property
    def ename(self) -> str | None:
        return self.reply["content"].get("ename")

    def json(self) -> Any:
        """The last stdout line, parsed (cells report results with ``print(json.dumps(...))``)."""
        assert self.status == "ok", self.describe()
        lines = self.stdout.strip().splitlines()
        assert lines, self.describe()
        return json.loads(lines[-1])

    def describe(self) -> str:
        error = self.error
        trace = "\n".join(error["traceback"]) if error else ""
        return (
            f"status={self.status} stdout={self.stdout!r} stderr={self.stderr!r} "
            f"ename={self.ename!r}\n{trace}"
        )


async def run(
    client: AsyncKernelClient,
    code: str,
    timeout: float = RUN_TIMEOUT,
    *,
    on_output: Callable[[dict[str, Any]], None] | None = None,
    **kwargs: Any,
) -> Result:
    """Execute ``code``; collect its streams, display_data, execute_result and errors.

    ``on_output`` sees each collected output as it arrives; ``kwargs`` go to
    ``execute_interactive`` (``allow_stdin``/``stdin_hook`` for the stdin test).
    """
    outputs: list[dict[str, Any]] = []

    def hook(msg: dict[str, Any]) -> None:
        msg_type = msg["header"]["msg_type"]
        if msg_type in OUTPUT_TYPES:
            output = {"msg_type": msg_type, "content": msg["content"]}
            outputs.append(output)
            if on_output:
                on_output(output)

    kwargs.setdefault("allow_stdin", False)
    reply = await client.execute_interactive(code, timeout=timeout, output_hook=hook, **kwargs)
    return Result(reply["content"]["status"], reply, outputs)


@dataclasses.dataclass
class Sandbox:
    km: AsyncKernelManager
    workspace: Path
    kind: str = "bubblewrap"
    kc: AsyncKernelClient | None = None

    @property
    def client(self) -> AsyncKernelClient:
        assert self.kc is not None
        return self.kc

    async def run(self, code: str, timeout: float = RUN_TIMEOUT, **kwargs: Any) -> Result:
        return await run(self.client, code, timeout, **kwargs)

    async def connect(self) -> AsyncKernelClient:
        """A fresh client for the current kernel (after a start or restart), once it is ready."""
        if self.kc is not None:
            self.kc.stop_channels()
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=START_TIMEOUT)
        return self.kc

    async def shutdown(self) -> None:
        """Stop the client and the kernel; never raises, never leaves a process behind."""
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        km = self.km
        if not km.has_kernel:
            return
        procs = kernel_processes(km)
        try:
            await asyncio.wait_for(km.shutdown_kernel(), SHUTDOWN_TIMEOUT)
        except Exception:  # noqa: BLE001 - fall back to a kill, whatever went wrong
            with contextlib.suppress(Exception):
                await asyncio.wait_for(km.shutdown_kernel(now=True), SHUTDOWN_TIMEOUT)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()  # psutil refuses when the pid was reused meanwhile


def kernel_processes(km: AsyncKernelManager) -> list[psutil.Process]:
    kernel_pids = getattr(km.provisioner, "kernel_pids", None)
    procs = []
    for pid in kernel_pids() if kernel_pids else []:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs


StartSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture(params=["bubblewrap", "docker"])
def sandbox_kind(request: pytest.FixtureRequest) -> str:
    """Which sandbox the test's kernels run in (Docker: the engine and image must be there)."""
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return str(request.param)


@pytest.fixture
async def start_sandbox(tmp_path: Path, sandbox_kind: str) -> AsyncIterator[StartSandbox]:
    """Factory: ``await start_sandbox(config={...})`` → a started, ready :class:`Sandbox`.

    ``config`` is the provisioner's section of the manager's traitlets config (the same trait
    names on both sandboxes); ``files`` (name → text) are put in the workspace before the start.
    """
    started: list[Sandbox] = []

    async def start(
        config: dict[str, Any] | None = None, files: dict[str, str] | None = None
    ) -> Sandbox:
        workspace = tmp_path / f"workspace{len(started)}"
        workspace.mkdir()
        for name, text in (files or {}).items():
            (workspace / name).write_text(text)
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAMES[sandbox_kind],
            config=Config({PROVISIONERS[sandbox_kind]: config or {}}),
        )
        sandbox = Sandbox(km, workspace, sandbox_kind)
        started.append(sandbox)  # before starting: a half-started kernel is shut down too
        await asyncio.wait_for(km.start_kernel(cwd=str(workspace)), START_TIMEOUT)
        await sandbox.connect()
        return sandbox

    try:
        yield start
    finally:
        for sandbox in reversed(started):
            await sandbox.shutdown()


@pytest.fixture
async def sandbox(start_sandbox: StartSandbox) -> Sandbox:
    """A sandboxed kernel with the default configuration."""
    return await start_sandbox()


def gone(proc: psutil.Process) -> bool:
    """True once the process no longer exists (a zombie still exists; a reused pid does not)."""
    return not proc.is_running()


async def wait_until_gone(procs: list[psutil.Process], timeout: float = 5.0) -> list[str]:
    """Poll until every process is gone; returns descriptions of the survivors (empty if none)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        alive = [p for p in procs if not gone(p)]
        if not alive or loop.time() > deadline:
            return [describe_process(p) for p in alive]
        await asyncio.sleep(0.05)


def describe_process(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {proc.status()} uid={proc.uids().real} {proc.cmdline()}"
    except psutil.Error as e:
        return f"{proc.pid} ({e!r})"
