"""Session locks: one holder per session at a time, in arrival order, with fencing tokens.

``hold(session_id, timeout)`` is an async context manager yielding a fencing token, an integer that
increases strictly with every grant of that session's lock. A holder whose lock was lost (its
replica stalled past the expiry and someone else took over) carries a smaller token than the
current holder, so whatever it writes afterwards can be recognised as stale and refused.
``LimitExceeded("session is busy …")`` after ``timeout`` seconds (``None``: wait as long as it
takes; the protocol's choice, so callers decide).

``LocalLocks`` is for one process: an ``asyncio.Lock`` per session, created on first use and dropped
when nobody holds or waits for it; asyncio locks wake waiters first come, first served. Tokens come
from one counter per ``LocalLocks``, so they increase per session (and across sessions too).

``RedisLocks`` is for several replicas sharing a Redis:

* The lock is the key ``<prefix>lock:<session>``, set with ``SET … NX PX ttl`` to a random owner
  value; in the same Lua script ``INCR <prefix>fence:<session>`` draws the fencing token, so the
  grant and the token are one atomic step (a holder cannot draw its token after losing the lock).
  The counter never expires (one small key per session ever locked): a counter that restarted
  could hand out a token below a stalled holder's.
* While held, a background task owned by the hold renews the expiry every ``ttl / 3`` (compare the
  owner value, then ``PEXPIRE``). A crashed replica stops renewing, and its lock frees itself after
  ``ttl``; a stalled one finds on waking that its token is no longer the newest.
* Release deletes the key only if it still holds our owner value (compare-and-delete in Lua), so a
  holder that lost its lock never deletes its successor's.
* Waiters in other replicas poll with a short capped backoff. Waiters in this process first queue
  on a per-session ``asyncio.Lock`` (the same one ``LocalLocks`` uses), so they are granted in
  arrival order and only the head of the queue polls Redis.

Redis failures surface as ``Unavailable`` (503), never as redis-py exceptions. Every Redis call is
bounded by the client's socket timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import secrets
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from kernelagent.adapters import redis_pools
from kernelagent.errors import LimitExceeded, Unavailable

log = logging.getLogger(__name__)

POLL_MIN, POLL_MAX = 0.005, 0.1  # backoff between attempts at a lock held elsewhere

# KEYS: lock, fence counter. ARGV: owner value, ttl in ms. Returns the fencing token, or nil.
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return redis.call('INCR', KEYS[2])
end
return false
"""

# KEYS: lock. ARGV: owner value, ttl in ms. Returns 1 if still ours (and extended), else 0.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock. ARGV: owner value. Returns 1 if it was ours (and is deleted), else 0.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def busy(session_id: str, timeout: float | None) -> LimitExceeded:
    return LimitExceeded(
        f"session is busy: {session_id} is still held by another request after {timeout:g} s"
    )


@dataclasses.dataclass
class _Queue:
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class _SessionQueues:
    """Per-session asyncio locks, created lazily and dropped when no one holds or awaits them."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}

    def __len__(self) -> int:
        return len(self._queues)

    @contextlib.asynccontextmanager
    async def hold(
        self, session_id: str, timeout: float | None, deadline: float | None
    ) -> AsyncIterator[None]:
        """Hold the session's in-process lock; LimitExceeded if not granted by ``deadline``."""
        queue = self._queues.get(session_id)
        if queue is None:
            queue = self._queues[session_id] = _Queue()
        queue.users += 1
        try:
            if queue.users > 1:  # held or awaited by another
                try:
                    async with asyncio.timeout_at(deadline):
                        await queue.lock.acquire()
                except TimeoutError:
                    raise busy(session_id, timeout) from None
            else:  # no one else: taken at once, no timer to set and cancel
                await queue.lock.acquire()
            try:
                yield
            finally:
                queue.lock.release()
        finally:
            queue.users -= 1
            if queue.users == 0:
                del self._queues[session_id]


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


class LocalLocks:
    """``SessionLocks`` within one process (the embedded default)."""

    def __init__(self) -> None:
        self._queues = _SessionQueues()
        self._tokens = itertools.count(1)

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str, timeout: float | None = None) -> AsyncIterator[int]:
        async with self._queues.hold(session_id, timeout, _deadline(timeout)):
            yield next(self._tokens)

    async def close(self) -> None:
        return None


class RedisLocks:
    """``SessionLocks`` shared by every replica using the Redis at ``url``.

    ``ttl`` is how long a lock outlives a crashed holder (seconds); live holders renew it.
    ``prefix`` namespaces the keys (several deployments or test runs on one Redis).
    """

    def __init__(self, url: str, ttl: float = 30.0, *, prefix: str = "kernelagent:"):
        if ttl <= 0:
            raise ValueError(f"lock ttl must be positive, not {ttl}")
        self.ttl = ttl
        self.prefix = prefix
        self.redis = redis_pools.client(url)
        self._acquire = self.redis.register_script(ACQUIRE)
        self._renew = self.redis.register_script(RENEW)
        self._release = self.redis.register_script(RELEASE)
        self._queues = _SessionQueues()

    def lock_key(self, session_id: str) -> str:
        return f"{self.prefix}lock:{session_id}"

    def fence_key(self, session_id: str) -> str:
        return f"{self.prefix}fence:{session_id}"

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str, timeout: float | None = None) -> AsyncIterator[int]:
        deadline = _deadline(timeout)
        key = self.lock_key(session_id)
        owner = secrets.token_hex(16)  # tells our grant apart from any other holder's
        async with self._queues.hold(session_id, timeout, deadline):
            token = await self._acquire_until(session_id, owner, timeout, deadline)
            renewal = asyncio.create_task(self._keep(key, owner), name=f"renew {key}")
            try:
                yield token
            finally:
                renewal.cancel()
                await self._let_go(key, owner)
                await asyncio.wait([renewal])

    async def _acquire_until(
        self, session_id: str, owner: str, timeout: float | None, deadline: float | None
    ) -> int:
        """Poll Redis for the lock with a capped backoff until granted or ``deadline``.

        Redis calls are not cut short by the deadline (a SET that ran but whose reply was dropped
        would leave a lock nobody releases); each is bounded by the socket timeout instead.
        """
        keys = [self.lock_key(session_id), self.fence_key(session_id)]
        loop = asyncio.get_running_loop()
        pause = POLL_MIN
        while True:
            try:
                token = await self._acquire(keys=keys, args=[owner, self.ttl_ms])
            except asyncio.CancelledError:
                # the script may have run: do not leave a lock behind for a whole ttl
                with contextlib.suppress(RedisError):
                    await self._release(keys=keys[:1], args=[owner])
                raise
            except RedisError as e:
                raise Unavailable(f"session locks: Redis failed: {e}") from e
            if token is not None:
                return int(token)
            now = loop.time()
            if deadline is not None and now >= deadline:
                raise busy(session_id, timeout)
            left = POLL_MAX if deadline is None else deadline - now
            await asyncio.sleep(min(pause * random.uniform(0.5, 1.0), left))
            pause = min(pause * 2, POLL_MAX)

    async def _keep(self, key: str, owner: str) -> None:
        """Extend the lock's expiry every ttl/3 until cancelled or the lock is found lost."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                ours = await self._renew(keys=[key], args=[owner, self.ttl_ms])
            except RedisError as e:
                log.warning("could not renew %s (retrying): %s", key, e)
                continue
            if not ours:
                log.warning("lost %s: it expired before renewal; a newer holder may exist", key)
                return

    async def _let_go(self, key: str, owner: str) -> None:
        try:
            ours = await self._release(keys=[key], args=[owner])
        except RedisError as e:
            log.warning("could not release %s (it expires within %g s): %s", key, self.ttl, e)
            return
        if not ours:
            log.warning("%s had expired before release; a newer holder may exist", key)

    async def close(self) -> None:
        await self.redis.aclose()


def make_locks(redis_url: str | None, ttl: float = 30.0) -> LocalLocks | RedisLocks:
    """RedisLocks when a Redis URL is configured (several replicas), else LocalLocks."""
    return RedisLocks(redis_url, ttl) if redis_url else LocalLocks()
