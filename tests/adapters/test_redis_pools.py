"""Redis pools: a ceiling on sockets however many calls come at once, and idle sockets closed."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from kernelagent.adapters import redis_pools

pytest_plugins = ["backends"]
pytestmark = pytest.mark.redis


async def test_a_pool_holds_at_most_its_ceiling_and_closes_idle_sockets(redis_url):
    name = f"pool-{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in redis_url else "?"
    client = redis_pools.client(f"{redis_url}{separator}client_name={name}", max_connections=3)
    admin = aioredis.Redis.from_url(redis_url)

    async def ours() -> int:
        return sum(1 for c in await admin.client_list() if c.get("name") == name)

    try:
        key = f"kernelagent-test:{name}"
        # eight blocking calls at once: three hold the three sockets, the others wait for one
        calls = asyncio.gather(*(client.blpop([key], timeout=0.3) for _ in range(8)))
        seen = []
        while not calls.done():
            seen.append(await ours())
            await asyncio.sleep(0.05)
        assert await calls == [None] * 8  # every call was served, none refused
        assert max(seen) == 3, seen
        assert await ours() == 3  # kept for the next calls

        await redis_pools.close_idle()
        async with asyncio.timeout(5):
            while await ours():
                await asyncio.sleep(0.05)
        assert await client.ping()  # a later call reconnects
        assert await ours() == 1
    finally:
        await client.aclose()
        await admin.aclose()


async def test_closing_idle_sockets_while_calls_run_fails_none_of_them(redis_url):
    client = redis_pools.client(redis_url, max_connections=6)
    key = f"kernelagent-test:busy-{uuid.uuid4().hex[:12]}"
    running = True

    async def caller() -> int:
        done = 0
        while running:
            await client.incr(key)
            done += 1
            await asyncio.sleep(0)
        return done

    try:
        callers = [asyncio.create_task(caller()) for _ in range(12)]
        for _ in range(100):
            await redis_pools.close_idle()
            await asyncio.sleep(0.005)
        running = False
        counts = await asyncio.gather(*callers)  # a failed call would raise here
        assert int(await client.get(key)) == sum(counts)
    finally:
        await client.delete(key)
        await client.aclose()
