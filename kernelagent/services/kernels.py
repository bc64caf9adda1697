"""KernelPool: sandboxed kernels started ahead of need and handed out at once.

A kernel start costs ~0.7 s, and the first ``import pandas, plotly`` another 1–3 s. A pool hides
the start; the imports begin in a thread of each pooled kernel and go on after it is handed out
(so the pool refills at the rate kernels start). Each pooled kernel owns a scratch workspace of
its own; handing it out gives it the session's workspace (``KernelBackend.adopt``: for local
kernels, a directory rename the running kernel does not notice), with any files already there.

The pool keeps ``size`` kernels, and more while sessions arrive faster than that (``Demand``):
as many as were handed out in the last minute, up to ``most``, while a quarter of the memory
stays free (the machine's, or its container's: ``adapters/memory.py``). Kernels start one at a
time either way (on two cores, parallel starts only slow each other), so a grown pool is what
lets the next arrivals of a busy minute find one ready. When the arrivals stop, the extra
kernels are shut down.

Example::

    pool = KernelPool(LocalKernels(settings), size=2, most=8)
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
import time
from collections.abc import Callable

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


DEMAND_WINDOW = 60.0  # seconds of hand-outs a grown pool is sized by
MEMORY_RESERVE = 0.25  # the share of memory a grown pool leaves free


class Demand:
    """How many warm kernels to keep: at least ``base``, and as many as were handed out in the
    last ``window`` seconds, up to ``most``."""

    def __init__(
        self,
        base: int,
        most: int,
        window: float = DEMAND_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.base, self.most, self.window, self.clock = base, max(most, base), window, clock
        self._handed_out: collections.deque[float] = collections.deque()

    def handed_out(self) -> None:
        self._handed_out.append(self.clock())

    def wanted(self) -> int:
        horizon = self.clock() - self.window
        while self._handed_out and self._handed_out[0] <= horizon:
            self._handed_out.popleft()
        return max(self.base, min(self.most, len(self._handed_out)))


class KernelPool:
    """Keeps ``size`` warm kernels, more under demand (up to ``most``); ``acquire`` hands one
    out and a background task refills."""

    def __init__(
        self,
        backend: KernelBackend,
        size: int = 2,
        preimport: list[str] | None = None,
        warmup_timeout: float = 120.0,
        most: int = 0,
        window: float = DEMAND_WINDOW,
        free_memory: Callable[[], float] | None = None,
    ):
        self.backend = backend
        self.size = size
        self.demand = Demand(size, most, window)
        self.free_memory = free_memory
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

    @property
    def target(self) -> int:
        """The warm kernels the pool aims for now: ``size``, or more under demand."""
        return self.demand.wanted() if self.size > 0 else 0

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

    async def wait_filled(self, timeout: float, count: int | None = None) -> None:
        """Wait until the pool holds ``count`` (default ``size``) kernels (tests, benchmarks,
        ``doctor``)."""
        async with asyncio.timeout(timeout):
            while len(self._ready) < (self.size if count is None else count):
                if self.last_error:
                    raise RuntimeError(self.last_error)
                await asyncio.sleep(0.05)

    async def acquire(self, workspace: str, refill: bool = True) -> Kernel:
        """A ready kernel whose ``/workspace`` is ``workspace``: pooled if any, else started now.

        ``refill=False``: no replacement starts until ``refill()`` (a short CPU-bound job, such
        as a replay, then does not share the machine with a kernel start), and the hand-out
        is not a session's arrival (it does not grow the pool)."""
        if refill and self.size > 0:
            self.demand.handed_out()
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
        """Start kernels one at a time (two cores: parallel starts only slow each other); shut
        down the ones beyond the target once demand has passed."""
        while True:
            grown = len(self._ready) > self.size  # it looks again in a while
            recheck = self.demand.window / 4 if grown else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), recheck)
            self._wanted.clear()
            while len(self._ready) > self.target:
                await self._discard(self._ready.pop())  # the newest: its imports may still run
            while len(self._ready) < self.target and self._room_for_one():
                try:
                    self._ready.append(await self._start_one())
                    self.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - recorded, retried on next demand
                    self.last_error = f"kernel pool could not start a kernel: {e}"
                    log.error(self.last_error)
                    await asyncio.sleep(5)

    def _room_for_one(self) -> bool:
        """Whether another kernel may start: the first ``size`` always may; more only while
        ``MEMORY_RESERVE`` of the memory stays free (``free_memory``: the share free now;
        without it, up to ``most``)."""
        if len(self._ready) < self.size or self.free_memory is None:
            return True
        return self.free_memory() > MEMORY_RESERVE

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
