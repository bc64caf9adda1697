"""A small server-sent-events client for the tests: follows a stream, collects its events.

Written on asyncio streams (HTTP/1.1, chunked) so that a test can drop the connection at any
moment, as a browser losing its network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Event:
    id: str
    type: str
    data: dict[str, Any]


class EventStream:
    def __init__(self, port: int, path: str, token: str, last_event_id: str | None = None):
        self.port, self.path, self.token, self.last_event_id = port, path, token, last_event_id
        self.events: list[Event] = []
        self.status: int | None = None
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> EventStream:
        self._task = asyncio.create_task(self._follow())
        async with asyncio.timeout(30):
            while self.status is None:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task

    async def until(self, predicate: Callable[[Event], bool], timeout: float = 60) -> list[Event]:
        """All events so far, once one matches ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                if any(predicate(e) for e in self.events):
                    return list(self.events)
                self._arrived.clear()
                if self._task is not None and self._task.done():
                    self._task.result()
                    raise AssertionError(f"the stream ended; events: {self.types()}")
                await self._arrived.wait()

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    async def _follow(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer = writer
        headers = [
            f"GET {self.path} HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: token {self.token}",
        ]
        if self.last_event_id:
            headers.append(f"Last-Event-ID: {self.last_event_id}")
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = await reader.readline()
        self.status = int(status_line.split()[1])
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        buffer = ""
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                buffer += data[:-2].decode()
            else:
                data = await reader.read(65536)
                if not data:
                    return
                buffer += data.decode()
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                self._parse(block)

    def _parse(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")
        if "data" in fields and "event" in fields:
            self.events.append(
                Event(fields.get("id", ""), fields["event"], json.loads(fields["data"]))
            )
            self._arrived.set()
