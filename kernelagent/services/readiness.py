"""Whether this server process can take requests: what a load balancer's readiness check asks.

Liveness (``/api/v1/health``) stays cheap and says only that the process answers; readiness asks
each shared backend once, with a short timeout: the database, the runtime state (Redis: also
whether this process still holds its lease) and the storage. A process that is shutting down
(draining its turns) is not ready, so a load balancer sends new requests elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kernelagent.services.ports import Database, RuntimeState, Storage

TIMEOUT = 2.0  # seconds each backend may take to answer
PROBE_PREFIX = "readiness-probe/"  # never written: listing it (empty) is the probe


class Readiness:
    def __init__(self, db: Database, state: RuntimeState, storage: Storage):
        self.draining = False
        self._probes: dict[str, Callable[[], Awaitable[object]]] = {
            "database": db.users.list,
            "runtime_state": lambda: self._lease(state),
            "storage": lambda: storage.list(PROBE_PREFIX),
        }

    async def check(self) -> dict[str, str]:
        """Each backend's answer: "ok", or what went wrong (concurrently, each bounded)."""
        names = list(self._probes)
        answers = await asyncio.gather(*(self._probe(name) for name in names))
        return dict(zip(names, answers, strict=True))

    async def _probe(self, name: str) -> str:
        try:
            async with asyncio.timeout(TIMEOUT):
                await self._probes[name]()
        except TimeoutError:
            return f"no answer within {TIMEOUT:g} s"
        except Exception as e:  # noqa: BLE001 - any failure means not ready, and says why
            return f"{type(e).__name__}: {e}"
        return "ok"

    @staticmethod
    async def _lease(state: RuntimeState) -> None:
        if not await state.alive(state.process_id):
            raise RuntimeError("this process's lease has lapsed")
