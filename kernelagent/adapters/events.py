"""Session event logs: what the SSE stream serves, replayable from any event id.

Each session has an append-only log of events (``kernelagent.events``) with increasing ids.
``read(after=id)`` returns what came after ``id`` (waiting up to ``wait`` seconds when there is
nothing yet), so a client that reconnects with ``Last-Event-ID`` gets every later event and none
twice, and any number of clients can follow one session. Retention is bounded: the oldest events of
a session go first once it holds ``retention`` of them.

``LocalEvents`` keeps the logs in this process; ids are ``<epoch>-<n>``, the epoch naming this
process, so a client resuming with an id from before a restart gets the whole new log rather than
waiting for the counter to catch up. ``RedisEvents`` keeps each log in a Redis Stream
(``XADD … MAXLEN ~ retention``: trimmed by whole stream nodes, never below ``retention``; ids
are the stream's own ``<ms>-<seq>``), so another server process can serve the stream of a turn
this one runs.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import re
import time

import pydantic
from redis.exceptions import RedisError

from kernelagent.adapters import redis_pools
from kernelagent.errors import InvalidInput, Unavailable
from kernelagent.events import Logged, SessionEvent, parse_event

log = logging.getLogger(__name__)

MAX_WAIT = 60.0  # seconds one read may block (its connection's read timeout is longer)
MAX_READERS = 1024  # blocking reads at once (event streams followed) per process
STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})", re.ASCII)
MAX_ID_PART = 2**64 - 1


class LocalEvents:
    """Per-session deques; readers wait on a future that every publish resolves and replaces
    (checking and taking it involve no await, so no publish slips between them). An event is
    kept as its JSON, as Redis keeps it: a few hundred bytes rather than a tree of objects, and
    a later change to the publisher's dicts rewrites no history."""

    def __init__(self, retention: int = 2_000):
        self.retention = retention
        self.epoch = time.time_ns() // 1_000_000
        self._logs: dict[str, collections.deque[bytes]] = {}  # each event's JSON, type included
        self._last: dict[str, int] = {}  # session id → the counter of its newest event
        self._changed: asyncio.Future[None] | None = None
        self._closed = False

    async def publish(self, session_id: str, event: SessionEvent) -> Logged:
        n = self._last[session_id] = self._last.get(session_id, 0) + 1
        entries = self._logs.setdefault(session_id, collections.deque(maxlen=self.retention))
        entries.append(event.model_dump_json().encode())  # its counter is its place in the log
        self._wake()
        return Logged(f"{self.epoch}-{n}", event)

    async def read(self, session_id: str, after: str | None, wait: float = 0) -> list[Logged]:
        start = self._position(after)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self._closed:
            entries = self._logs.get(session_id, ())
            # counters are consecutive: the first later event is at a known offset
            first = self._last.get(session_id, 0) - len(entries) + 1
            skip = max(0, start - first + 1)
            later = itertools.islice(entries, skip, None)
            events = [
                Logged(f"{self.epoch}-{n}", _parsed_json(data))
                for n, data in enumerate(later, start=first + skip)
            ]
            remaining = deadline - loop.time()
            if events or remaining <= 0:
                return events
            if self._changed is None:
                self._changed = loop.create_future()
            await asyncio.wait({self._changed}, timeout=remaining)
        await asyncio.sleep(0)  # closed: still yield, so a polling reader can be cancelled
        return []

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _position(self, after: str | None) -> int:
        """The counter value after which to read; an id of another epoch (a previous process)
        precedes everything this process logged."""
        if not after:
            return 0
        epoch, n = _parse_id(after)
        return n if epoch == self.epoch else 0

    async def delete(self, session_id: str) -> None:
        self._logs.pop(session_id, None)
        self._last.pop(session_id, None)

    async def close(self) -> None:
        """Wake every reader (they return nothing) and forget the logs."""
        self._closed = True
        self._wake()
        self._logs.clear()


class RedisEvents:
    """One Redis Stream per session: ``<prefix>events:<session>``."""

    def __init__(self, url: str, retention: int = 2_000, *, prefix: str = "kernelagent:"):
        self.retention = retention
        self.prefix = prefix
        self.redis = redis_pools.client(url)
        # blocking reads wait up to ``MAX_WAIT`` s: their connections' timeout must outlast it
        self.reader = redis_pools.client(
            url, read_timeout=MAX_WAIT + redis_pools.SOCKET_TIMEOUT, max_connections=MAX_READERS
        )

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}events:{session_id}"

    async def publish(self, session_id: str, event: SessionEvent) -> Logged:
        payload = event.model_dump_json(exclude={"type"})
        try:
            raw_id = await self.redis.xadd(
                self._key(session_id),
                {"type": event.type, "data": payload},
                maxlen=self.retention,
                approximate=True,
            )
        except RedisError as e:
            raise Unavailable(f"Redis refused an event: {e}") from e
        return Logged(raw_id.decode(), event)

    async def read(self, session_id: str, after: str | None, wait: float = 0) -> list[Logged]:
        start = _redis_id(after)
        wait = min(wait, MAX_WAIT)
        try:
            answer = await (self.reader if wait > 0 else self.redis).xread(
                {self._key(session_id): start},
                count=1000,
                block=max(1, int(wait * 1000)) if wait > 0 else None,  # BLOCK 0: forever
            )
        except RedisError as e:
            raise Unavailable(f"Redis could not read events: {e}") from e
        events = []
        for _, entries in answer or ():
            for raw_id, fields in entries:
                try:
                    event = parse_event(fields[b"type"].decode(), json.loads(fields[b"data"]))
                except (KeyError, ValueError, pydantic.ValidationError) as e:
                    log.warning("skipped an unreadable event %s of %s: %s", raw_id, session_id, e)
                    continue
                events.append(Logged(raw_id.decode(), event))
        return events

    async def delete(self, session_id: str) -> None:
        try:
            await self.redis.delete(self._key(session_id))
        except RedisError as e:
            raise Unavailable(f"Redis could not delete events: {e}") from e

    async def close(self) -> None:
        await self.redis.aclose()
        await self.reader.aclose()


def _parsed_json(data: bytes) -> SessionEvent:
    fields = json.loads(data)
    return parse_event(fields.pop("type"), fields)


def _parse_id(after: str) -> tuple[int, int]:
    match = STREAM_ID.fullmatch(after)
    if match is None or max(int(match[1]), int(match[2])) > MAX_ID_PART:
        raise InvalidInput(f"Last-Event-ID {after!r} is not an event id of this stream")
    return int(match[1]), int(match[2])


def _redis_id(after: str | None) -> str:
    if not after:
        return "0-0"
    ms, seq = _parse_id(after)
    return f"{ms}-{seq}"


def make_events(
    redis_url: str | None, retention: int, prefix: str = "kernelagent:"
) -> LocalEvents | RedisEvents:
    """RedisEvents when a Redis URL is configured, else LocalEvents."""
    if redis_url:
        return RedisEvents(redis_url, retention, prefix=prefix)
    return LocalEvents(retention)
