"""Session runtime state (``RuntimeState``): in this process, or shared by processes in Redis.

``LocalRuntime`` is for one server process: dictionaries, and signals delivered by a direct call.

``RedisRuntime`` is for several processes sharing a Redis (keys under ``<prefix>``):

* ``proc:<id>`` is a process's lease (its value: the URL the others reach it at), set with an
  expiry of ``lease`` seconds and renewed every ``lease / 3`` by a heartbeat task; a process
  killed without a goodbye stops renewing, and after the expiry everything it owned counts as
  nobody's.
* ``owner:<kind>:<key>`` names the process owning a session's kernel or a turn; an owner whose
  lease is gone is no owner (no key has to be cleaned up for that to hold).
* ``running:<session>`` (the process and the cell it runs), ``active:<session>`` (Unix time of
  the last activity) and ``conns:<session>`` (a hash: process → its gateway connections) are read
  through the same liveness filter.
* Signals are published on ``signals`` (pub/sub, JSON): every process subscribes once and hands
  what is meant for it to its handlers. A signal is instant and not kept: what must not be lost
  (a turn's pending answer) is in the database, and a signal only says "look now".

Redis failures surface as ``Unavailable`` (503); the heartbeat retries and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kernelagent.adapters import redis_pools
from kernelagent.domain import Signal, new_id
from kernelagent.errors import Unavailable

log = logging.getLogger(__name__)
CLOSE_TIMEOUT = 5.0  # seconds a process's goodbye to Redis may take

KEEP = 7 * 24 * 3600  # seconds a session's activity and busy marks outlive their writer
Handler = Callable[[Signal], Awaitable[None]]


class _Handlers:
    """Signal handlers, each call a task of its own (a slow handler delays no other)."""

    def __init__(self) -> None:
        self.handlers: list[Handler] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, handler: Handler) -> None:
        self.handlers.append(handler)

    def deliver(self, signal: Signal) -> None:
        for handler in self.handlers:
            task = asyncio.create_task(self._call(handler, signal), name=f"signal-{signal.kind}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _call(handler: Handler, signal: Signal) -> None:
        try:
            await handler(signal)
        except Exception:
            log.exception("handling %s failed", signal)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class LocalRuntime:
    """``RuntimeState`` of a lone process (the embedded default)."""

    def __init__(self) -> None:
        self.process_id = new_id()
        self._owners: dict[tuple[str, str], str] = {}
        self._running: dict[str, str] = {}
        self._active: dict[str, float] = {}
        self._connections: dict[str, int] = {}
        self._hits: dict[str, tuple[int, int]] = {}  # key → (its window, hits in it)
        self._generations: dict[str, int] = {}
        self._handlers = _Handlers()
        self._address = ""

    async def start(self, address: str = "") -> None:
        self._address = address

    async def close(self) -> None:
        await self._handlers.stop()

    async def alive(self, process_id: str) -> bool:
        return process_id == self.process_id

    async def address(self, process_id: str) -> str | None:
        return self._address if process_id == self.process_id else None

    async def claim(self, kind: str, key: str, process_id: str | None = None) -> None:
        self._owners[kind, key] = process_id or self.process_id

    async def release(self, kind: str, key: str) -> None:
        if self._owners.get((kind, key)) == self.process_id:
            del self._owners[kind, key]

    async def owner(self, kind: str, key: str) -> str | None:
        owner = self._owners.get((kind, key))
        return owner if owner == self.process_id else None

    async def set_running(self, session_id: str, cell_id: str | None) -> None:
        if cell_id is None:
            self._running.pop(session_id, None)
        else:
            self._running[session_id] = cell_id

    async def running(self, session_ids: Sequence[str]) -> set[str]:
        return {s for s in session_ids if s in self._running}

    async def touch(self, session_id: str) -> None:
        self._active[session_id] = time.time()

    async def last_activity(self, session_id: str) -> float | None:
        return self._active.get(session_id)

    async def forget(self, session_id: str) -> None:
        self._active.pop(session_id, None)

    async def generation(self, key: str, bump: bool = False) -> int:
        if bump:
            self._generations[key] = self._generations.get(key, 0) + 1
        return self._generations.get(key, 0)

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        bucket, left = _window(window)
        seen, count = self._hits.get(key, (bucket, 0))
        count = count + 1 if seen == bucket else 1
        self._hits[key] = (bucket, count)
        return count, left

    async def connections(self, session_id: str, change: int = 0) -> int:
        count = self._connections.get(session_id, 0) + change
        if count > 0:
            self._connections[session_id] = count
        else:
            self._connections.pop(session_id, None)
        return max(count, 0)

    async def signal(self, signal: Signal) -> None:
        if signal.to in (None, self.process_id):
            self._handlers.deliver(signal)

    def on_signal(self, handler: Handler) -> None:
        self._handlers.add(handler)


class RedisRuntime:
    """``RuntimeState`` shared by every process using the Redis at ``url``."""

    def __init__(self, url: str, lease: float = 15.0, *, prefix: str = "kernelagent:"):
        if lease <= 0:
            raise ValueError(f"the lease must be positive, not {lease}")
        self.process_id = new_id()
        self.lease = lease
        self.prefix = prefix
        self.redis = redis_pools.client(url)
        self._handlers = _Handlers()
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: aioredis.client.PubSub | None = None
        self._owned: set[str] = set()  # owner keys this process set
        self._counted: set[str] = set()  # connection hashes this process has a field in
        self._address = ""

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def start(self, address: str = "") -> None:
        self._address = address
        lease = self._key("proc", self.process_id)
        await self._call(self.redis.set(lease, address, px=self._ms))
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._call(self._pubsub.subscribe(self._key("signals")))
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="runtime-heartbeat"),
            asyncio.create_task(self._listen(self._pubsub), name="runtime-signals"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._handlers.stop()
        # a goodbye that Redis does not answer must not hold the shutdown: the lease ends it
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if self._pubsub is not None:
                    await self._pubsub.aclose()
                for key in self._counted:
                    await self.redis.hdel(key, self.process_id)
                for key in self._owned:
                    await self._release(key)
                await self.redis.delete(self._key("proc", self.process_id))
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.redis.aclose()

    @property
    def _ms(self) -> int:
        return max(1, round(self.lease * 1000))

    async def _heartbeat(self) -> None:
        """Renew every lease/3; a renewal that fails or hangs is retried at once (within a
        second), so one slow round trip never lets a live process's lease lapse."""
        key = self._key("proc", self.process_id)
        loop = asyncio.get_running_loop()
        due = loop.time() + self.lease / 3
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                async with asyncio.timeout(self.lease / 6):
                    await self.redis.set(key, self._address, px=self._ms)
                due = loop.time() + self.lease / 3
            except (RedisError, TimeoutError) as e:
                log.warning("could not renew this process's lease (retrying): %s", e)
                due = loop.time() + min(1.0, self.lease / 10)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except RedisError as e:
                log.warning("lost the signal subscription (retrying): %s", e)
                await asyncio.sleep(1)
                continue
            if message is None:
                continue
            try:
                signal = Signal(**json.loads(message["data"]))
            except (TypeError, ValueError) as e:
                log.warning("dropped an unreadable signal: %s", e)
                continue
            if signal.to in (None, self.process_id):
                self._handlers.deliver(signal)

    @staticmethod
    async def _call(awaitable: Awaitable[object]) -> object:
        try:
            return await awaitable
        except RedisError as e:
            raise Unavailable(f"runtime state: Redis failed: {e}") from e

    async def alive(self, process_id: str) -> bool:
        return bool(await self._call(self.redis.exists(self._key("proc", process_id))))

    async def address(self, process_id: str) -> str | None:
        value = await self._call(self.redis.get(self._key("proc", process_id)))
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)

    async def _live(self, process_ids: Sequence[str]) -> set[str]:
        ids = sorted(set(process_ids))
        if not ids:
            return set()
        found = await self._call(self.redis.mget([self._key("proc", p) for p in ids]))
        assert isinstance(found, list)
        return {p for p, value in zip(ids, found, strict=True) if value is not None}

    async def claim(self, kind: str, key: str, process_id: str | None = None) -> None:
        name = self._key("owner", kind, key)
        await self._call(self.redis.set(name, process_id or self.process_id))
        if process_id in (None, self.process_id):
            self._owned.add(name)

    async def release(self, kind: str, key: str) -> None:
        name = self._key("owner", kind, key)
        self._owned.discard(name)
        await self._call(self._release(name))

    async def _release(self, name: str) -> None:
        # compare-and-delete: a newer owner's claim stays
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
        await self.redis.eval(script, 1, name, self.process_id)

    async def owner(self, kind: str, key: str) -> str | None:
        value = await self._call(self.redis.get(self._key("owner", kind, key)))
        if value is None:
            return None
        owner = value.decode() if isinstance(value, bytes) else str(value)
        return owner if await self.alive(owner) else None

    async def set_running(self, session_id: str, cell_id: str | None) -> None:
        key = self._key("running", session_id)
        if cell_id is None:  # only our own mark: another process's newer cell stays
            script = (
                "local v = redis.call('GET', KEYS[1]) "
                "if v and string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then "
                "redis.call('DEL', KEYS[1]) end"
            )
            await self._call(self.redis.eval(script, 1, key, self.process_id))
        else:
            await self._call(self.redis.set(key, f"{self.process_id} {cell_id}", ex=KEEP))

    async def running(self, session_ids: Sequence[str]) -> set[str]:
        if not session_ids:
            return set()
        values = await self._call(self.redis.mget([self._key("running", s) for s in session_ids]))
        assert isinstance(values, list)
        by_session = {
            s: v.decode().split(" ", 1)[0]
            for s, v in zip(session_ids, values, strict=True)
            if v is not None
        }
        live = await self._live(list(by_session.values()))
        return {s for s, process in by_session.items() if process in live}

    async def touch(self, session_id: str) -> None:
        key = self._key("active", session_id)
        await self._call(self.redis.set(key, repr(time.time()), ex=KEEP))

    async def last_activity(self, session_id: str) -> float | None:
        value = await self._call(self.redis.get(self._key("active", session_id)))
        return None if value is None else float(value)  # type: ignore[arg-type]

    async def forget(self, session_id: str) -> None:
        await self._call(self.redis.delete(self._key("active", session_id)))

    async def generation(self, key: str, bump: bool = False) -> int:
        counter = self._key("gen", key)
        if bump:
            value = await self._call(self.redis.incr(counter))
            await self._call(self.redis.expire(counter, KEEP))
            return int(value)  # type: ignore[call-overload]
        value = await self._call(self.redis.get(counter))
        return 0 if value is None else int(value)  # type: ignore[call-overload]

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        bucket, left = _window(window)
        counter = self._key("hits", key, str(bucket))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(counter)
            pipe.expire(counter, max(1, round(window)) + 1)
            results = await self._call(pipe.execute())
        return int(results[0]), left  # type: ignore[index]

    async def connections(self, session_id: str, change: int = 0) -> int:
        key = self._key("conns", session_id)
        if change:
            # never below zero, as in LocalRuntime: an extra decrement is not remembered
            script = (
                "local n = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) "
                "if n < 0 then redis.call('HSET', KEYS[1], ARGV[1], 0) end"
            )
            await self._call(self.redis.eval(script, 1, key, self.process_id, change))
            self._counted.add(key)
        counts = await self._call(self.redis.hgetall(key))
        assert isinstance(counts, dict)
        live = await self._live([p.decode() for p in counts])
        return sum(max(int(n), 0) for p, n in counts.items() if p.decode() in live)

    async def signal(self, signal: Signal) -> None:
        payload = json.dumps(dataclasses.asdict(signal))
        await self._call(self.redis.publish(self._key("signals"), payload))

    def on_signal(self, handler: Handler) -> None:
        self._handlers.add(handler)


def _window(seconds: float) -> tuple[int, float]:
    """The current fixed window of ``seconds`` (the same in every process, by the clock) and
    the seconds left in it."""
    now = time.time()
    return int(now // seconds), seconds - now % seconds


def make_runtime(redis_url: str | None, lease: float = 15.0) -> LocalRuntime | RedisRuntime:
    """RedisRuntime when a Redis URL is configured (several processes), else LocalRuntime."""
    return RedisRuntime(redis_url, lease) if redis_url else LocalRuntime()
