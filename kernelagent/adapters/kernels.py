"""LocalKernels: session kernels on this machine, through jupyter_client's AsyncMultiKernelManager.

The sandbox is not managed here: it is the kernelspec's provisioner (``kernelagent.sandbox``), so
this adapter only picks the kernelspec, passes the provisioner its configuration, and speaks the
Jupyter protocol. Failures come out as ``kernelagent.errors`` exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelClient, AsyncKernelManager, AsyncMultiKernelManager
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from traitlets.config import Config

from kernelagent.adapters.kernelspecs import kernel_dirs
from kernelagent.config import Settings
from kernelagent.errors import KernelDied, NotFound, SandboxError


class LocalKernels:
    """Starts, addresses and stops kernels; one ``AsyncKernelManager`` each."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.kernel_name = "python3" if settings.unsafe_no_sandbox else settings.kernel_name
        config = Config({"BubblewrapProvisioner": settings.provisioner_config()})
        self.specs = KernelSpecManager(kernel_dirs=kernel_dirs(), config=config)
        self.mkm = AsyncMultiKernelManager(kernel_spec_manager=self.specs, config=config)

    async def start(self, workspace: Path) -> str:
        """Start a kernel whose cwd (``/workspace`` in the sandbox) is ``workspace``; wait ready.

        Cancelling the caller does not cancel a start half-way (that would orphan the process):
        the start completes and the kernel is shut down before the cancellation propagates.
        """
        starting = asyncio.ensure_future(self._start(workspace))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.shutdown(await starting, now=True)
            raise

    async def _start(self, workspace: Path) -> str:
        self.check_kernelspec()
        workspace.mkdir(parents=True, exist_ok=True)
        try:
            kernel_id: str = await self.mkm.start_kernel(
                kernel_name=self.kernel_name, cwd=str(workspace)
            )
        except RuntimeError as e:
            # The provisioner's SandboxError names the cause and the fix; the sandbox package is
            # reached only through the kernelspec, so it is recognised by module, not imported.
            if type(e).__module__.startswith("kernelagent.sandbox"):
                raise SandboxError(str(e)) from e
            raise
        try:
            await self.wait_ready(kernel_id)
        except BaseException:
            await self.shutdown(kernel_id, now=True)
            raise
        return kernel_id

    def check_kernelspec(self) -> None:
        """Raise NotFound, listing what exists, when the configured kernelspec is missing."""
        try:
            self.specs.get_kernel_spec(self.kernel_name)
        except NoSuchKernel:
            names = ", ".join(sorted(self.specs.find_kernel_specs()))
            message = f"no kernelspec named {self.kernel_name!r} (available: {names})"
            raise NotFound(message) from None

    async def wait_ready(self, kernel_id: str) -> None:
        client = self.client(kernel_id)
        try:
            await client.wait_for_ready(timeout=self.settings.kernel_start_timeout)
        except RuntimeError as e:
            reason = self.exit_reason(kernel_id) or str(e)
            raise KernelDied(f"kernel died during start: {reason}") from e
        finally:
            client.stop_channels()

    def manager(self, kernel_id: str) -> AsyncKernelManager:
        return self.mkm.get_kernel(kernel_id)

    def client(self, kernel_id: str) -> AsyncKernelClient:
        """A new client with its channels started; the caller stops it."""
        client: AsyncKernelClient = self.manager(kernel_id).client()
        client.start_channels()
        return client

    async def run_silently(self, kernel_id: str, code: str, timeout: float) -> dict[str, Any]:
        """Run ``code`` with no history or outputs (pool warm-up); returns the reply content."""
        client = self.client(kernel_id)
        try:
            reply = await client.execute_interactive(
                code, silent=True, store_history=False, timeout=timeout, output_hook=_ignore
            )
            return reply["content"]  # type: ignore[no-any-return]
        finally:
            client.stop_channels()

    async def interrupt(self, kernel_id: str) -> None:
        await self.mkm.interrupt_kernel(kernel_id)

    async def restart(self, kernel_id: str) -> None:
        await self.mkm.restart_kernel(kernel_id)
        await self.wait_ready(kernel_id)

    async def shutdown(self, kernel_id: str, now: bool = False) -> None:
        if kernel_id in self.mkm:
            await self.mkm.shutdown_kernel(kernel_id, now=now)

    async def shutdown_all(self) -> None:
        """Stop every kernel; one that vanished meanwhile (a cancelled start) is not an error."""
        for kernel_id in self.mkm.list_kernel_ids():
            with contextlib.suppress(KeyError):
                await self.mkm.shutdown_kernel(kernel_id, now=True)

    async def close(self) -> None:
        """Stop every kernel and close the ZMQ context (left to GC, it warns and may linger)."""
        await self.shutdown_all()
        self.mkm.context.destroy(linger=0)

    async def is_alive(self, kernel_id: str) -> bool:
        return bool(await self.manager(kernel_id).is_alive())

    def exit_reason(self, kernel_id: str) -> str | None:
        """Why the kernel died ("out of memory (limit 1 GiB)"), when its sandbox can tell."""
        provisioner = self.manager(kernel_id).provisioner
        reason = getattr(provisioner, "exit_reason", None)
        return reason() if reason else None

    def kernel_uid(self, kernel_id: str) -> int:
        """Host uid of the kernel's processes; workspace files must belong to it."""
        provisioner = self.manager(kernel_id).provisioner
        return int(getattr(provisioner, "host_uid", os.geteuid()))

    def move_workspace(self, kernel_id: str, workspace: Path) -> None:
        """Record that the kernel's workspace directory was renamed (restarts bind the new path).

        The bind mount follows the directory itself, so the running kernel keeps its files; only
        the path used on the next (re)start changes. ``_launch_args`` is what
        ``restart_kernel`` replays.
        """
        manager = self.manager(kernel_id)
        if manager._launch_args is not None:
            manager._launch_args["cwd"] = str(workspace)


def _ignore(msg: dict[str, Any]) -> None:
    """Output hook for silent runs."""
