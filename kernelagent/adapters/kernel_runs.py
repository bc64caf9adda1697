"""One request's messages, as a backend's client of a kernel (a "link") routes them: shared by
the local and the remote kernel backends.

A link reads every message its kernel sends and hands each to the ``Run`` whose request it
answers (by parent msg_id): a cell, a silent evaluation and the pool's warm-up never see each
other's messages. When the kernel goes away, every run in flight ends with ``KernelDied``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from jupyter_client.session import Session

from kernelagent.domain import KernelMessage
from kernelagent.errors import KernelDied

LIVENESS_POLL = 0.5  # seconds of silence after which a run checks that its kernel still lives


class Link(Protocol):
    """A backend's client of one kernel, as its runs use it."""

    runs: dict[str, Run]

    async def alive(self) -> bool: ...

    async def exit_reason(self) -> str | None: ...

    async def send(self, channel: str, message: dict[str, Any]) -> None: ...


def parse(channel: str, msg: dict[str, Any]) -> KernelMessage:
    return KernelMessage(
        channel,
        msg.get("header") or {},
        msg.get("parent_header") or {},
        msg.get("metadata") or {},
        msg.get("content") or {},
        tuple(bytes(b) for b in msg.get("buffers") or ()),
    )


class Ended:
    """Put in a run's queue when its kernel went away: ``next`` raises ``error``."""

    def __init__(self, error: KernelDied):
        self.error = error


class Inbox:
    """Messages for one reader, which waits with a timeout.

    ``asyncio.Queue`` under ``asyncio.wait_for`` makes a task for every wait (Python 3.11): on a
    cell's path, several times per cell. Here a wait is one future and one timer."""

    def __init__(self) -> None:
        self._items: collections.deque[KernelMessage | Ended] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: KernelMessage | Ended) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout: float) -> KernelMessage | Ended | None:
        """The oldest item; None if none came within ``timeout`` seconds."""
        if not self._items:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._items:
                return None
        return self._items.popleft()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Run:
    """One request's messages, as ``_Link`` hands them over."""

    def __init__(self, link: Link, msg_id: str):
        self.link = link
        self.msg_id = msg_id
        self.messages = Inbox()
        self.replies = Inbox()

    async def next(self, timeout: float) -> KernelMessage | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wait = min(deadline - loop.time(), LIVENESS_POLL)
            if wait <= 0:
                return None
            item = await self.messages.get(wait)
            if item is None:
                if not await self.link.alive():
                    reason = await self.link.exit_reason()
                    raise KernelDied(reason or "the kernel died") from None
                continue
            if isinstance(item, Ended):
                raise item.error
            return item

    async def reply(self, timeout: float) -> KernelMessage | None:
        item = await self.replies.get(timeout)
        return None if isinstance(item, Ended) else item

    async def send_input(self, message: dict[str, Any]) -> None:
        await self.link.send("stdin", message)

    def deliver(self, msg: KernelMessage) -> None:
        """A message of this request, in arrival order; a reply (shell) also apart, for
        ``reply()``."""
        if msg.channel == "shell":
            self.replies.put(msg)
        self.messages.put(msg)

    def close(self) -> None:
        self.link.runs.pop(self.msg_id, None)


def end_runs(runs: dict[str, Run], error: KernelDied) -> None:
    """Every run in flight ends with ``error``."""
    for run in runs.values():
        run.messages.put(Ended(error))
        run.replies.put(Ended(error))
    runs.clear()


def execute_request(
    session: Session,
    code: str,
    *,
    silent: bool,
    store_history: bool,
    user_expressions: dict[str, str] | None,
    metadata: dict[str, Any] | None,
    buffers: list[bytes] | None = None,
) -> dict[str, Any]:
    """An ``execute_request`` as the backends send it (no stdin, no stop on error); binary
    ``buffers`` travel as the message's own (over a gateway, in a binary WebSocket frame)."""
    content = {
        "code": code,
        "silent": silent,
        "store_history": store_history,
        "user_expressions": user_expressions or {},
        "allow_stdin": False,
        "stop_on_error": False,
    }
    message = session.msg("execute_request", content, metadata=metadata)
    if buffers:
        message["buffers"] = buffers
    return message  # type: ignore[no-any-return]


async def request(link: Link, message: dict[str, Any]) -> Run:
    """Send ``message`` on the link's shell channel; its run receives what answers it."""
    run = Run(link, str(message["header"]["msg_id"]))
    link.runs[run.msg_id] = run
    try:
        await link.send("shell", message)
    except BaseException:
        run.close()
        raise
    return run


async def start_whole(
    starting: Coroutine[Any, Any, str], shutdown: Callable[[str], Awaitable[None]]
) -> str:
    """A kernel start that a cancelled caller does not cut half-way (that would leave the
    kernel behind): the start completes, then the kernel is shut down and the cancellation
    goes on."""
    task = asyncio.ensure_future(starting)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await shutdown(await task)
        raise
