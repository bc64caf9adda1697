"""Session locks: exclusion, arrival order, fencing, timeouts — in process and across replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from kernelagent.adapters.locks import LocalLocks, RedisLocks, make_locks
from kernelagent.errors import KernelAgentError, LimitExceeded
from kernelagent.services.ports import SessionLocks

pytest_plugins = ["backends"]

Locks = LocalLocks | RedisLocks
NewLocks = Callable[..., Locks]  # (ttl=...) -> a new instance (a replica, for Redis)


def _conforms(locks: Locks) -> SessionLocks:
    return locks  # type-checked: both implement the port


@pytest.fixture
async def new_replica(redis_url, redis_prefix) -> AsyncIterator[Callable[..., RedisLocks]]:
    """Makes RedisLocks instances on the test Redis, as separate replicas would; closes them."""
    made: list[RedisLocks] = []

    def new(ttl: float = 30.0) -> RedisLocks:
        made.append(RedisLocks(redis_url, ttl=ttl, prefix=redis_prefix))
        return made[-1]

    yield new
    for locks in made:
        await locks.close()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def new_locks(request) -> NewLocks:
    """Makes lock instances of each kind."""
    if request.param == "local":
        return LocalLocks
    return request.getfixturevalue("new_replica")


@pytest.fixture
def locks(new_locks) -> Locks:
    return new_locks()


@pytest.fixture
async def raw_redis(redis_url) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def session() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


async def within(seconds: float, awaitable: Awaitable):
    async with asyncio.timeout(seconds):
        return await awaitable


async def test_mutual_exclusion_under_concurrency(locks):
    sid, counter, holders, most = session(), 0, 0, 0

    async def increment() -> None:
        nonlocal counter, holders, most
        async with locks.hold(sid, timeout=30):
            holders += 1
            most = max(most, holders)
            seen = counter
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
            counter = seen + 1
            holders -= 1

    await within(60, asyncio.gather(*(increment() for _ in range(60))))
    assert counter == 60
    assert most == 1


async def test_granted_in_arrival_order(locks):
    sid, granted = session(), []
    order = list(range(12))

    async def wait(i: int) -> None:
        async with locks.hold(sid, timeout=30):
            granted.append(i)
            await asyncio.sleep(0.002)

    async with locks.hold(sid, timeout=5):
        tasks = []
        for i in order:
            tasks.append(asyncio.create_task(wait(i)))
            await asyncio.sleep(0.001)  # arrives, and queues, before the next one
        await asyncio.sleep(0.05)
        assert granted == []
    await within(30, asyncio.gather(*tasks))
    assert granted == order


async def test_fencing_tokens_strictly_increase(locks):
    sid, other, tokens = session(), session(), []
    for _ in range(5):
        async with locks.hold(sid, timeout=5) as token:
            tokens.append(token)
        async with locks.hold(other, timeout=5):
            pass

    async def take() -> None:
        async with locks.hold(sid, timeout=30) as token:
            tokens.append(token)
            await asyncio.sleep(0.001)

    await within(30, asyncio.gather(*(take() for _ in range(10))))
    assert all(isinstance(t, int) for t in tokens)
    assert tokens == sorted(set(tokens))  # strictly increasing in grant order


async def test_timeout_raises_limit_exceeded(locks):
    sid = session()
    loop = asyncio.get_running_loop()
    async with locks.hold(sid, timeout=5):
        started = loop.time()
        with pytest.raises(LimitExceeded, match="session is busy"):
            async with locks.hold(sid, timeout=0.2):
                pytest.fail("granted while held")
        assert 0.15 <= loop.time() - started < 2
        with pytest.raises(LimitExceeded):
            async with locks.hold(sid, timeout=0):
                pytest.fail("granted while held")
        async with locks.hold(session(), timeout=0.5):  # other sessions are not blocked
            pass
    async with locks.hold(sid, timeout=0):  # free again: granted without waiting
        pass


async def test_released_on_exception(locks):
    sid = session()
    with pytest.raises(RuntimeError, match="boom"):
        async with locks.hold(sid, timeout=5):
            raise RuntimeError("boom")
    async with locks.hold(sid, timeout=0.5) as token:
        assert token > 0


async def test_body_timeout_error_is_not_mistaken_for_busy(locks):
    with pytest.raises(TimeoutError):
        async with locks.hold(session(), timeout=5):
            raise TimeoutError


async def test_cancelled_waiter_leaves_the_queue_working(locks):
    sid, granted = session(), []

    async def wait(name: str) -> None:
        async with locks.hold(sid, timeout=30):
            granted.append(name)

    async with locks.hold(sid, timeout=5):
        first = asyncio.create_task(wait("first"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.wait([first])
    await within(10, second)
    assert granted == ["second"]
    async with locks.hold(sid, timeout=0.5):
        pass


async def test_per_session_queues_are_dropped_when_unused(locks):
    sids = [session() for _ in range(20)]
    for sid in sids:
        async with locks.hold(sid, timeout=5):
            assert len(locks._queues) == 1
    with pytest.raises(LimitExceeded):
        async with locks.hold(sids[0], timeout=5), locks.hold(sids[0], timeout=0.05):
            pass
    assert len(locks._queues) == 0


# Redis: several replicas


@pytest.mark.redis
async def test_exclusion_and_fencing_across_replicas(new_replica):
    replicas = [new_replica(), new_replica(), new_replica()]
    sid, counter, holders, most, tokens = session(), 0, 0, 0, []

    async def increment(locks: Locks) -> None:
        nonlocal counter, holders, most
        async with locks.hold(sid, timeout=30) as token:
            tokens.append(token)
            holders += 1
            most = max(most, holders)
            seen = counter
            await asyncio.sleep(0.001)
            counter = seen + 1
            holders -= 1

    await within(60, asyncio.gather(*(increment(replicas[i % 3]) for i in range(30))))
    assert (counter, most) == (30, 1)
    assert tokens == sorted(set(tokens))


@pytest.mark.redis
async def test_renewal_keeps_a_hold_longer_than_the_ttl(new_replica, raw_redis):
    one, two = new_replica(ttl=0.5), new_replica(ttl=0.5)
    sid = session()
    loop = asyncio.get_running_loop()
    async with one.hold(sid, timeout=5) as first:
        started = loop.time()
        with pytest.raises(LimitExceeded):
            async with two.hold(sid, timeout=1.5):
                pytest.fail("another replica took a held lock")
        assert loop.time() - started >= 1.5  # three ttls
        assert 0 < await raw_redis.pttl(one.lock_key(sid)) <= 500
    assert await raw_redis.exists(one.lock_key(sid)) == 0
    async with two.hold(sid, timeout=0.5) as second:
        assert second > first


@pytest.mark.redis
async def test_crashed_holder_is_taken_over_after_expiry(new_replica, raw_redis):
    locks, sid = new_replica(), session()
    # a replica that took the lock and died: no renewal, so it expires after its ttl
    crashed = await raw_redis.incr(locks.fence_key(sid))
    await raw_redis.set(locks.lock_key(sid), "crashed-owner", px=300)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(LimitExceeded):
        async with locks.hold(sid, timeout=0.1):
            pass
    async with locks.hold(sid, timeout=5) as token:
        assert loop.time() - started >= 0.25
        assert token > crashed
        assert await raw_redis.get(locks.lock_key(sid)) != b"crashed-owner"


@pytest.mark.redis
async def test_a_holder_that_lost_its_lock_does_not_release_the_successors(new_replica, raw_redis):
    stalled, successor, third = new_replica(ttl=5), new_replica(ttl=5), new_replica(ttl=5)
    sid = session()
    successor_holds, stalled_done = asyncio.Event(), asyncio.Event()

    async def take_over() -> None:
        async with successor.hold(sid, timeout=5) as token:
            successor_holds.set()
            await within(5, stalled_done.wait())
            with pytest.raises(LimitExceeded):  # still ours after the stale holder left
                async with third.hold(sid, timeout=0.2):
                    pytest.fail("granted while the successor holds the lock")
            return token

    async with stalled.hold(sid, timeout=5) as old:
        await raw_redis.delete(stalled.lock_key(sid))  # as if it expired while stalled
        task = asyncio.create_task(take_over())
        await within(5, successor_holds.wait())
    stalled_done.set()
    new = await within(10, task)
    assert new > old


@pytest.mark.redis
async def test_second_in_process_waiter_times_out_in_the_queue(new_replica):
    one, two = new_replica(), new_replica()
    sid = session()
    async with two.hold(sid, timeout=5):

        async def head_of_queue() -> None:
            async with one.hold(sid, timeout=1):
                pytest.fail("granted while another replica holds the lock")

        head = asyncio.create_task(head_of_queue())  # polls Redis, holding one's queue
        await asyncio.sleep(0.02)
        with pytest.raises(LimitExceeded):
            async with one.hold(sid, timeout=0.1):
                pass
        with pytest.raises(LimitExceeded):
            await within(5, head)


async def test_unreachable_redis_is_a_kernelagent_error(unused_port):
    locks = RedisLocks(f"redis://127.0.0.1:{unused_port}/0", ttl=1)
    try:
        with pytest.raises(KernelAgentError, match="Redis"):
            async with locks.hold(session(), timeout=1):
                pass
    finally:
        await locks.close()


async def test_make_locks():
    local = make_locks(None)
    assert isinstance(local, LocalLocks)
    remote = make_locks("redis://127.0.0.1:6379/15")  # connects lazily
    try:
        assert isinstance(remote, RedisLocks)
    finally:
        await remote.close()
        await local.close()
