"""KernelPool: sandboxed kernels started ahead of need and handed out at once.

A kernel start costs ~0.7 s, and the first ``import pandas, plotly`` another 1–3 s. A pool hides
the start; the imports begin in a thread of each pooled kernel and go on after it is handed out
(so the pool refills at the rate kernels start). Each pooled kernel owns a scratch workspace of
its own; handing it out gives it the session's workspace (``KernelBackend.adopt``: for local
kernels, a directory rename the running kernel does not notice), with any files already there.

Example::

    pool = KernelPool(LocalKernels(settings), size=2)
    await pool.start()
    kernel = await pool.acquire(session_id)   # ~1 ms when warm
    ...
    await pool.stop()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging

from kernelagent.domain import new_id
from kernelagent.services.ports import KernelBackend
from kernelagent.services.running import run_silently

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A running kernel and the workspace it sees as ``/workspace``."""

    id: str
    workspace: str


_PREIMPORT = """\
import importlib, threading
def preimport(names):
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass
threading.Thread(target=preimport, args=(NAMES,), name="kernelagent-preimport", daemon=True).start()
"""


def preimport_code(modules: list[str]) -> str:
    """Code importing ``modules`` in a thread of the kernel's own, binding no name in the user's
    namespace: the kernel is handed out at once, and a cell importing one of them meanwhile
    waits for that module only (Python's per-module import locks)."""
    return f"exec({_PREIMPORT.replace('NAMES', repr(list(modules)))!r}, {{}})"


class KernelPool:
    """Keeps ``size`` warm kernels; ``acquire`` hands one out and a background task refills."""

    def __init__(
        self,
        backend: KernelBackend,
        size: int = 2,
        preimport: list[str] | None = None,
        warmup_timeout: float = 120.0,
    ):
        self.backend = backend
        self.size = size
        self.warmup_code = preimport_code(preimport or [])
        self.warmup_timeout = warmup_timeout
        self._ready: collections.deque[Kernel] = collections.deque()
        self._wanted = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.starting = 0  # kernels being started now (for the pool or on demand)

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    async def start(self) -> None:
        """Start filling in the background."""
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
            await self.backend.remove_workspace(kernel.workspace)

    async def wait_filled(self, timeout: float) -> None:
        """Wait until the pool holds ``size`` kernels (tests, benchmarks, ``doctor``)."""
        async with asyncio.timeout(timeout):
            while len(self._ready) < self.size:
                if self.last_error:
                    raise RuntimeError(self.last_error)
                await asyncio.sleep(0.05)

    async def acquire(self, workspace: str, refill: bool = True) -> Kernel:
        """A ready kernel whose ``/workspace`` is ``workspace``: pooled if any, else started now.

        ``refill=False``: no replacement starts until ``refill()`` (a short CPU-bound job, such
        as a replay, then does not share the machine with a kernel start)."""
        while self._ready:
            pooled = self._ready.popleft()
            if refill:
                self._wanted.set()
            if not await self.backend.is_alive(pooled.id):
                await self._discard(pooled)
                continue
            try:
                await self.backend.adopt(pooled.id, workspace)
            except Exception as e:  # noqa: BLE001 - a kernel started now serves instead
                log.warning("could not hand out pooled kernel %s: %s", pooled.id, e)
                await self._discard(pooled)
                break
            return Kernel(pooled.id, workspace)
        if refill:
            self._wanted.set()
        return Kernel(await self._start(workspace), workspace)

    async def _start(self, workspace: str) -> str:
        self.starting += 1
        try:
            return await self.backend.start(workspace)
        finally:
            self.starting -= 1

    def refill(self) -> None:
        """Start replacing the kernels handed out (see ``acquire``)."""
        self._wanted.set()

    async def _discard(self, kernel: Kernel) -> None:
        await self.backend.shutdown(kernel.id, now=True)
        await self.backend.remove_workspace(kernel.workspace)

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
        workspace = f".pool-{new_id()}"
        kernel = Kernel(await self._start(workspace), workspace)
        try:
            if self.warmup_code:
                await run_silently(self.backend, kernel.id, self.warmup_code, self.warmup_timeout)
        except BaseException:
            await self._discard(kernel)
            raise
        return kernel
