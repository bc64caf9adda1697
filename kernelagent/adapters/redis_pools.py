"""Redis clients over bounded pools whose idle sockets are closed.

redis-py's pool grows to the peak number of concurrent calls (each blocking ``XREAD`` of an
event stream holds one) and keeps every socket open afterwards. Here a pool has a ceiling: a
call past it waits up to ``SOCKET_TIMEOUT`` for a free connection, then fails as any Redis
error does (503 ``unavailable``). ``close_idle`` closes the sockets no call is using; the server
runs it every ``IDLE_SECONDS``, and a later call reconnects (one loopback round trip).
"""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio as aioredis

SOCKET_TIMEOUT = 5.0  # seconds for any one Redis round trip, for connecting, and for a free slot
MAX_CONNECTIONS = 64  # per client: concurrent calls (requests, lock renewals, publishes)
IDLE_SECONDS = 60.0  # how often the server closes idle sockets

_pools: weakref.WeakSet[aioredis.ConnectionPool] = weakref.WeakSet()


def client(
    url: str, *, read_timeout: float = SOCKET_TIMEOUT, max_connections: int = MAX_CONNECTIONS
) -> aioredis.Redis:
    """A client of its own pool; ``read_timeout`` must outlast any blocking call it makes."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=SOCKET_TIMEOUT,
        socket_timeout=read_timeout,
        socket_connect_timeout=SOCKET_TIMEOUT,
    )
    _pools.add(pool)
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


async def close_idle() -> None:
    """Close the sockets of every pool made here that no call is using. redis-py's own
    ``disconnect(inuse_connections=False)`` closes them a step after choosing them, and a call
    may take one in between (its command then fails); here they leave the pool's idle list
    first, in one step, and come back closed (a later call reconnects)."""
    for pool in list(_pools):
        idle = pool._available_connections  # the pool's idle connections (redis-py 5 to 8)
        closing = [c for c in idle if c.is_connected]
        idle[:] = [c for c in idle if not c.is_connected]
        await asyncio.gather(*(c.disconnect() for c in closing), return_exceptions=True)
        idle.extend(closing)
