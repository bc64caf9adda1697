"""KernelPool: sandboxed kernels started ahead of need and handed out at once.

A kernel start costs ~0.7 s, and the first ``import pandas, plotly`` another 1–3 s; a pool hides
both. Each pooled kernel owns a fresh, empty workspace directory ``<workspaces>/.pool/<n>``; handing
it out *renames* that directory to the session's workspace path. The sandbox's bind mount follows
the directory, not its name, so the running kernel sees no change, and restarts bind the new path.
If the session's directory already holds files, they are moved into the pooled one first.

Example::

    pool = KernelPool(LocalKernels(settings), settings.workspaces_dir / ".pool", size=2)
    await pool.start()
    kernel = await pool.acquire(settings.workspaces_dir / session_id)   # ~1 ms when warm
    ...
    await pool.stop()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class KernelBackend(Protocol):
    """What the pool needs from a kernel adapter (``adapters.kernels.LocalKernels``)."""

    async def start(self, workspace: Path) -> str: ...
    async def run_silently(self, kernel_id: str, code: str, timeout: float) -> dict[str, Any]: ...
    async def shutdown(self, kernel_id: str, now: bool = False) -> None: ...
    async def is_alive(self, kernel_id: str) -> bool: ...
    def kernel_uid(self, kernel_id: str) -> int: ...
    def move_workspace(self, kernel_id: str, workspace: Path) -> None: ...
    def client(self, kernel_id: str) -> Any:
        """A jupyter_client ``AsyncKernelClient`` with channels started."""
        ...

    async def interrupt(self, kernel_id: str) -> None: ...
    async def restart(self, kernel_id: str) -> None: ...
    def exit_reason(self, kernel_id: str) -> str | None: ...


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A running kernel and the host directory it sees as ``/workspace``."""

    id: str
    workspace: Path


def preimport_code(modules: list[str]) -> str:
    """Code importing ``modules`` without binding a name in the user's namespace."""
    return "\n".join(f"try:\n    __import__({m!r})\nexcept Exception:\n    pass" for m in modules)


class KernelPool:
    """Keeps ``size`` warm kernels; ``acquire`` hands one out and a background task refills."""

    def __init__(
        self,
        backend: KernelBackend,
        pool_dir: Path,
        size: int = 2,
        preimport: list[str] | None = None,
        warmup_timeout: float = 120.0,
    ):
        self.backend = backend
        self.pool_dir = pool_dir
        self.size = size
        self.warmup_code = preimport_code(preimport or [])
        self.warmup_timeout = warmup_timeout
        self._ready: collections.deque[Kernel] = collections.deque()
        self._wanted = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    async def start(self) -> None:
        """Clear workspaces of a previous run and start filling in the background."""
        shutil.rmtree(self.pool_dir, ignore_errors=True)
        self.pool_dir.mkdir(parents=True, exist_ok=True)
        if self.size > 0:
            self._wanted.set()
            self._filler = asyncio.create_task(self._fill(), name="kernel-pool-fill")

    async def stop(self) -> None:
        """Stop refilling and shut down the kernels nobody took."""
        if self._filler:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
            self._filler = None
        while self._ready:
            kernel = self._ready.popleft()
            await self.backend.shutdown(kernel.id, now=True)
            shutil.rmtree(kernel.workspace, ignore_errors=True)

    async def wait_filled(self, timeout: float) -> None:
        """Wait until the pool holds ``size`` kernels (tests, benchmarks, ``doctor``)."""
        async with asyncio.timeout(timeout):
            while len(self._ready) < self.size:
                if self.last_error:
                    raise RuntimeError(self.last_error)
                await asyncio.sleep(0.05)

    async def acquire(self, workspace: Path, refill: bool = True) -> Kernel:
        """A ready kernel whose ``/workspace`` is ``workspace``: pooled if any, else started now.

        ``refill=False``: no replacement starts until ``refill()`` (a short CPU-bound job, such
        as a replay, then does not share the machine with a kernel start)."""
        while self._ready:
            pooled = self._ready.popleft()
            if refill:
                self._wanted.set()
            if not await self.backend.is_alive(pooled.id):
                await self.backend.shutdown(pooled.id, now=True)
                continue
            try:
                self._adopt(pooled, workspace)
            except OSError as e:
                log.warning("could not hand out pooled kernel %s: %s", pooled.id, e)
                await self.backend.shutdown(pooled.id, now=True)
                break
            return Kernel(pooled.id, workspace)
        if refill:
            self._wanted.set()
        return Kernel(await self.backend.start(workspace), workspace)

    def refill(self) -> None:
        """Start replacing the kernels handed out (see ``acquire``)."""
        self._wanted.set()

    def _adopt(self, pooled: Kernel, workspace: Path) -> None:
        """Make the pooled kernel's directory the session's ``workspace`` (same filesystem)."""
        if workspace.exists():
            uid = self.backend.kernel_uid(pooled.id)
            for entry in workspace.iterdir():
                target = pooled.workspace / entry.name
                entry.rename(target)
                if os.geteuid() == 0:
                    _chown_tree(target, uid)
            workspace.rmdir()
        workspace.parent.mkdir(parents=True, exist_ok=True)
        pooled.workspace.rename(workspace)
        self.backend.move_workspace(pooled.id, workspace)

    async def _fill(self) -> None:
        """Start kernels one at a time (two cores: parallel starts only slow each other)."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.size:
                try:
                    self._ready.append(await self._start_one())
                    self.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - recorded, retried on next demand
                    self.last_error = f"kernel pool could not start a kernel: {e}"
                    log.error(self.last_error)
                    await asyncio.sleep(5)

    async def _start_one(self) -> Kernel:
        workspace = Path(tempfile.mkdtemp(dir=self.pool_dir))
        kernel_id = await self.backend.start(workspace)
        try:
            if self.warmup_code:
                await self.backend.run_silently(kernel_id, self.warmup_code, self.warmup_timeout)
        except BaseException:
            await self.backend.shutdown(kernel_id, now=True)
            raise
        return Kernel(kernel_id, workspace)


def _chown_tree(root: Path, uid: int) -> None:
    os.lchown(root, uid, uid)
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), uid, uid)
