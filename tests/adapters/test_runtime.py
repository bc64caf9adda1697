"""Session runtime state: ownership, leases, running marks, activity, connections and signals.

The contract both kinds share (one process) runs against ``LocalRuntime`` and ``RedisRuntime``;
what needs several processes runs against RedisRuntime only, two instances with one prefix
standing for two server processes on a real Redis. A killed process is simulated by cancelling
its heartbeat and signal tasks without ``close()``: its lease is left to expire.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from kernelagent.adapters.runtime import LocalRuntime, RedisRuntime, make_runtime
from kernelagent.domain import Signal
from kernelagent.errors import KernelAgentError
from kernelagent.services.ports import RuntimeState

pytest_plugins = ["backends"]

Runtime = LocalRuntime | RedisRuntime
PROMPTLY = 1.0  # seconds: a signal reaches every process within this


def _conforms(runtime: Runtime) -> RuntimeState:
    return runtime  # type-checked: both implement the port


class Processes:
    """Starts RedisRuntimes sharing one Redis and prefix, each a server process; closes the rest."""

    def __init__(self, url: str, prefix: str):
        self.url, self.prefix = url, prefix
        self.open: list[RedisRuntime] = []

    async def start(self, lease: float = 15.0) -> RedisRuntime:
        self.open.append(RedisRuntime(self.url, lease=lease, prefix=self.prefix))
        await self.open[-1].start()
        return self.open[-1]

    async def close(self, runtime: RedisRuntime) -> None:
        self.open.remove(runtime)
        await runtime.close()

    @staticmethod
    async def kill(runtime: RedisRuntime) -> None:
        """Stop renewing the lease and listening, as a killed process would: no goodbye."""
        for task in runtime._tasks:
            task.cancel()
        await asyncio.gather(*runtime._tasks, return_exceptions=True)


@pytest.fixture
async def redis_processes(redis_url, redis_prefix) -> AsyncIterator[Processes]:
    processes = Processes(redis_url, redis_prefix)
    yield processes
    while processes.open:
        await processes.close(processes.open[-1])


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def runtime(request) -> AsyncIterator[Runtime]:
    """One process's runtime state, of each kind."""
    if request.param == "local":
        runtime: Runtime = LocalRuntime()
    else:
        url, prefix = (request.getfixturevalue(name) for name in ("redis_url", "redis_prefix"))
        runtime = RedisRuntime(url, prefix=prefix)
    try:
        await runtime.start()
        yield runtime
    finally:
        await runtime.close()


def session() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


def received(runtime: Runtime) -> asyncio.Queue[Signal]:
    """A queue of the signals ``runtime``'s handlers are called with, in order."""
    queue: asyncio.Queue[Signal] = asyncio.Queue()

    async def handler(signal: Signal) -> None:
        queue.put_nowait(signal)

    runtime.on_signal(handler)
    return queue


async def next_signal(queue: asyncio.Queue[Signal]) -> Signal:
    async with asyncio.timeout(PROMPTLY):
        return await queue.get()


# -- the contract, one process, both kinds --------------------------------------------------------


async def test_a_claim_is_the_claiming_process_s_until_it_releases(runtime):
    sid, me = session(), runtime.process_id
    assert await runtime.alive(me)
    assert await runtime.owner("kernel", sid) is None  # never claimed
    await runtime.claim("kernel", sid)
    assert await runtime.owner("kernel", sid) == me
    assert await runtime.owner("turn", sid) is None  # kinds are separate
    assert await runtime.owner("kernel", session()) is None
    await runtime.release("kernel", sid)
    assert await runtime.owner("kernel", sid) is None
    await runtime.release("kernel", sid)  # again: nothing to do
    await runtime.claim("turn", sid, me)  # on its own behalf, by name
    assert await runtime.owner("turn", sid) == me


async def test_a_claim_for_a_process_that_is_not_alive_has_no_owner(runtime):
    sid, gone = session(), f"gone-{uuid.uuid4().hex}"
    assert not await runtime.alive(gone)
    await runtime.claim("kernel", sid)
    await runtime.claim("kernel", sid, gone)  # replaces this process's claim
    assert await runtime.owner("kernel", sid) is None
    await runtime.release("kernel", sid)  # not this process's: stays, and stays ownerless
    assert await runtime.owner("kernel", sid) is None


async def test_running_marks(runtime):
    a, b = session(), session()
    assert await runtime.running([a, b]) == set()
    assert await runtime.running([]) == set()
    await runtime.set_running(a, "cell-1")
    assert await runtime.running([a, b]) == {a}
    await runtime.set_running(a, "cell-2")  # the next cell
    await runtime.set_running(b, "cell-3")
    assert await runtime.running([a, b, session()]) == {a, b}
    await runtime.set_running(a, None)
    assert await runtime.running([a, b]) == {b}
    await runtime.set_running(a, None)  # again: nothing to do
    assert await runtime.running([a]) == set()


async def test_touch_records_the_time_of_the_last_activity(runtime):
    sid = session()
    assert await runtime.last_activity(sid) is None
    before = time.time()
    await runtime.touch(sid)
    first = await runtime.last_activity(sid)
    assert first is not None and before <= first <= time.time()
    await asyncio.sleep(0.01)
    await runtime.touch(sid)
    later = await runtime.last_activity(sid)
    assert later is not None and later > first
    assert await runtime.last_activity(session()) is None
    await runtime.forget(sid)  # a deleted session's
    assert await runtime.last_activity(sid) is None


async def test_connections_add_up_and_never_go_negative(runtime):
    sid, other = session(), session()
    assert await runtime.connections(sid) == 0
    assert await runtime.connections(sid, 1) == 1
    assert await runtime.connections(sid, 2) == 3
    assert await runtime.connections(sid, -1) == 2
    assert await runtime.connections(sid) == 2
    assert await runtime.connections(other) == 0  # per session
    assert await runtime.connections(sid, -2) == 0
    assert await runtime.connections(sid, -1) == 0  # one too many: still not negative
    assert await runtime.connections(sid) == 0


async def test_signals_for_everyone_or_for_this_process_reach_its_handlers(runtime):
    queue, me, sid = received(runtime), runtime.process_id, session()
    everyone = Signal("interrupt", sid, sender=me)
    mine = Signal("run_turn", sid, turn_id="t1", to=me, sender="elsewhere")
    await runtime.signal(everyone)
    assert await next_signal(queue) == everyone
    await runtime.signal(mine)
    assert await next_signal(queue) == mine
    await runtime.signal(Signal("interrupt", sid, to=f"other-{uuid.uuid4().hex}"))
    marker = Signal("interrupt", session())
    await runtime.signal(marker)
    assert await next_signal(queue) == marker  # the other process's signal never came
    assert queue.empty()


async def test_a_raising_handler_stops_no_delivery(runtime, caplog):
    calls: list[Signal] = []

    async def failing(signal: Signal) -> None:
        calls.append(signal)
        raise RuntimeError("handler broke")

    runtime.on_signal(failing)
    queue = received(runtime)  # registered after the failing one
    sent = [Signal("interrupt", session()) for _ in range(3)]
    for signal in sent:
        await runtime.signal(signal)
        assert await next_signal(queue) == signal
    assert calls == sent  # the failing handler ran first each time, and every time
    ours = [r.exc_info for r in caplog.records if r.name.startswith("kernelagent")]
    assert [str(e and e[1]) for e in ours] == ["handler broke"] * 3  # each failure logged


# -- several processes on one Redis ---------------------------------------------------------------


@pytest.mark.redis
async def test_processes_share_claims_running_marks_and_activity(redis_processes):
    one, two = await redis_processes.start(), await redis_processes.start()
    sid, turn = session(), session()
    await one.set_running(sid, "cell")
    assert await two.running([sid]) == {sid}
    await one.set_running(sid, None)
    assert await two.running([sid]) == set()
    await one.touch(sid)
    assert await two.last_activity(sid) == await one.last_activity(sid) is not None

    assert await two.alive(one.process_id) and await one.alive(two.process_id)
    await one.claim("kernel", sid)
    assert await two.owner("kernel", sid) == one.process_id
    await two.release("kernel", sid)  # not its claim: stays
    assert await two.owner("kernel", sid) == one.process_id
    await one.release("kernel", sid)
    assert await two.owner("kernel", sid) is None

    await one.claim("turn", turn, two.process_id)  # on another process's behalf
    assert await one.owner("turn", turn) == two.process_id
    await one.release("turn", turn)  # the claimer is not the owner
    assert await two.owner("turn", turn) == two.process_id
    await two.release("turn", turn)
    assert await one.owner("turn", turn) is None


@pytest.mark.redis
async def test_a_closed_process_owns_nothing_and_counts_nothing(redis_processes):
    one, two = await redis_processes.start(), await redis_processes.start()
    sid, taken = session(), session()
    await one.claim("kernel", sid)
    await one.claim("kernel", taken)
    await two.claim("kernel", taken)  # a newer owner
    await one.set_running(sid, "cell")
    await one.connections(sid, 2)
    assert await two.connections(sid, 1) == 3
    assert await two.running([sid]) == {sid}

    await redis_processes.close(one)
    assert not await two.alive(one.process_id)
    assert await two.owner("kernel", sid) is None
    assert await two.owner("kernel", taken) == two.process_id  # one's goodbye left it alone
    assert await two.running([sid]) == set()
    assert await two.connections(sid) == 1
    assert await two.connections(sid, -2) == 0


@pytest.mark.redis
async def test_a_killed_process_loses_everything_when_its_lease_runs_out(redis_processes):
    lease = 0.5
    killed, other = await redis_processes.start(lease=lease), await redis_processes.start()
    sid = session()
    await killed.claim("kernel", sid)
    await killed.set_running(sid, "cell")
    await killed.connections(sid, 1)
    await other.connections(sid, 1)

    await redis_processes.kill(killed)
    left = await other.redis.pttl(f"{killed.prefix}proc:{killed.process_id}") / 1000
    started = time.monotonic()
    assert lease * 2 / 3 - 0.1 <= left <= lease  # renewed a moment ago, not deleted
    assert await other.owner("kernel", sid) == killed.process_id
    while await other.owner("kernel", sid) is not None:
        assert time.monotonic() - started < left + 1.0, "the dead process still owns it"
        await asyncio.sleep(0.01)
    assert time.monotonic() - started >= left - 0.1, "ownership went before the lease did"
    assert not await other.alive(killed.process_id)
    assert await other.running([sid]) == set()
    assert await other.connections(sid) == 1


@pytest.mark.redis
async def test_the_heartbeat_keeps_a_short_lease_alive(redis_processes):
    lease = 0.3
    alive, other = await redis_processes.start(lease=lease), await redis_processes.start()
    sid = session()
    await alive.claim("kernel", sid)
    await asyncio.sleep(lease * 4)  # time has to pass: four leases
    assert await other.alive(alive.process_id)
    assert await other.owner("kernel", sid) == alive.process_id


@pytest.mark.redis
async def test_signals_reach_every_process_or_only_the_one_named(redis_processes):
    one, two = await redis_processes.start(), await redis_processes.start()
    to_one, to_two = received(one), received(two)
    everyone = Signal("interrupt", session(), sender=one.process_id)
    await one.signal(everyone)
    assert await next_signal(to_one) == everyone
    assert await next_signal(to_two) == everyone

    only_two = Signal("run_turn", session(), turn_id="t", to=two.process_id, sender=one.process_id)
    marker = Signal("interrupt", session())
    await one.signal(only_two)
    await one.signal(marker)
    assert [await next_signal(to_two), await next_signal(to_two)] == [only_two, marker]
    assert await next_signal(to_one) == marker  # in order: ``only_two`` did not come before
    assert to_one.empty() and to_two.empty()


# -- construction -----------------------------------------------------------------------------


async def test_unreachable_redis_is_a_kernelagent_error(unused_port):
    runtime = RedisRuntime(f"redis://127.0.0.1:{unused_port}/0", lease=1)
    try:
        with pytest.raises(KernelAgentError, match="Redis"):
            await runtime.start()
    finally:
        await runtime.close()


async def test_make_runtime_picks_the_kind():
    assert isinstance(make_runtime(None), LocalRuntime)
    assert isinstance(make_runtime(""), LocalRuntime)
    remote = make_runtime("redis://127.0.0.1:6379/15", 7.5)  # connects lazily
    try:
        assert isinstance(remote, RedisRuntime) and remote.lease == 7.5
    finally:
        await remote.close()
    with pytest.raises(ValueError, match="lease"):
        RedisRuntime("redis://127.0.0.1:6379/15", lease=0)


async def test_an_extra_decrement_is_not_remembered(runtime):
    sid = str(uuid.uuid4())
    assert await runtime.connections(sid, -1) == 0
    assert await runtime.connections(sid, 1) == 1


@pytest.mark.redis
async def test_one_hung_renewal_does_not_let_a_live_lease_lapse(redis_url, redis_prefix):
    """A renewal that hangs for Redis's socket timeout is retried at once, within the lease."""
    lease = 3.0
    slow = RedisRuntime(redis_url, lease=lease, prefix=redis_prefix)
    other = RedisRuntime(redis_url, prefix=redis_prefix)
    real_set, calls = slow.redis.set, 0

    async def first_renewal_hangs(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:  # the first renewal of the heartbeat
            await asyncio.sleep(5)
        return await real_set(*args, **kwargs)

    slow.redis.set = first_renewal_hangs
    await slow.start()
    await other.start()
    try:
        deadline = time.monotonic() + lease + 3
        while time.monotonic() < deadline:
            assert await other.alive(slow.process_id)
            await asyncio.sleep(0.02)
    finally:
        await slow.close()
        await other.close()


@pytest.mark.redis
async def test_a_cell_mark_is_cleared_only_by_its_process(redis_url, redis_prefix):
    one = RedisRuntime(redis_url, prefix=redis_prefix)
    two = RedisRuntime(redis_url, prefix=redis_prefix)
    await one.start()
    await two.start()
    try:
        sid = str(uuid.uuid4())
        await one.set_running(sid, "cell-1")
        await two.set_running(sid, None)
        assert await one.running([sid]) == {sid}
        await one.set_running(sid, None)
        assert await two.running([sid]) == set()
    finally:
        await one.close()
        await two.close()
