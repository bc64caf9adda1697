"""Session event logs: increasing ids, resumable reads, waiting, fan-out, retention — both kinds."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from kernelagent.adapters.events import LocalEvents, RedisEvents, make_events
from kernelagent.errors import InvalidInput
from kernelagent.events import CellAdded, Logged, MessageDelta, ReplayStarted, TurnStarted
from kernelagent.services.ports import EventLog

pytest_plugins = ["backends"]

Events = LocalEvents | RedisEvents
PROMPTLY = 2.0  # seconds: an answer "at once" (every wait below is far longer)


def _conforms(events: Events) -> EventLog:
    return events  # type-checked: both implement the port


@dataclasses.dataclass
class Backend:
    """Makes event logs of one kind; ``peer`` is another writer/reader of the same logs."""

    kind: str
    new: Callable[..., Events]  # (retention=...) -> a new instance

    def peer(self, events: Events) -> Events:
        """Another process's view of ``events``: a second Redis client, or the same object
        (in-process logs are only shared within the process)."""
        if isinstance(events, LocalEvents):
            return events
        return self.new(retention=events.retention)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request) -> AsyncIterator[Backend]:
    made: list[Events] = []
    if request.param == "local":

        def new(retention: int = 1000) -> Events:
            made.append(LocalEvents(retention))
            return made[-1]

    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

        def new(retention: int = 1000) -> Events:
            made.append(RedisEvents(url, retention, prefix=prefix))
            return made[-1]

    yield Backend(request.param, new)
    for events in made:
        await events.close()


@pytest.fixture
def events(backend: Backend) -> Events:
    return backend.new()


def session() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


def order(event_id: str) -> tuple[int, ...]:
    """Sort key of an id: ``"7"`` (local) or ``"<ms>-<seq>"`` (a Redis stream id)."""
    return tuple(int(part) for part in event_id.split("-"))


def tick(n: int) -> ReplayStarted:
    """Any event will do where only order matters; its ``total`` numbers it."""
    return ReplayStarted(total=n)


async def publish_many(events: Events, sid: str, n: int) -> list[Logged]:
    return [await events.publish(sid, tick(i)) for i in range(n)]


async def timed(awaitable) -> tuple[Any, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await awaitable
    return result, loop.time() - started


# -- ids and resumable reads ----------------------------------------------------------------------


async def test_ids_strictly_increase_per_session(events):
    a, b = session(), session()
    published: dict[str, list[Logged]] = {a: [], b: []}
    for i in range(30):
        sid = a if i % 3 else b  # interleaved sessions
        published[sid].append(await events.publish(sid, tick(i)))
    for sid, sent in published.items():
        keys = [order(e.id) for e in sent]
        assert all(x < y for x, y in itertools.pairwise(keys)), keys
        assert len(set(keys)) == len(keys)
        assert await events.read(sid, None) == sent  # in publish order, ids as returned


async def test_read_after_an_id_gives_exactly_the_later_events(events):
    sid = session()
    sent = await publish_many(events, sid, 8)
    assert await events.read(sid, None) == sent
    for k, event in enumerate(sent):
        assert await events.read(sid, event.id) == sent[k + 1 :]
    assert await events.read(sid, sent[-1].id) == []


async def test_a_reconnecting_client_gets_every_event_once(events):
    """Following the stream as the SSE handler does (``after`` = the last id it saw)."""
    sid = session()
    seen: list[Logged] = []
    after: str | None = None
    for batch in (3, 1, 0, 5, 2):
        await publish_many(events, sid, batch)
        got = await events.read(sid, after)
        assert len(got) == batch
        seen += got
        after = got[-1].id if got else after
    assert [e.data["total"] for e in seen] == [*range(3), 0, *range(5), *range(2)]
    assert len({e.id for e in seen}) == len(seen)  # none twice
    assert seen == await events.read(sid, None)


@pytest.mark.parametrize("history", [0, 2], ids=["fresh-session", "after-last-id"])
async def test_wait_blocks_until_another_task_publishes(backend, events, history):
    sid = session()
    writer = backend.peer(events)
    earlier = await publish_many(writer, sid, history)
    after = earlier[-1].id if earlier else None

    reader = asyncio.create_task(timed(events.read(sid, after, wait=30)))
    await asyncio.sleep(0.3)
    assert not reader.done(), "read returned before anything new was published"
    event = await writer.publish(sid, MessageDelta(turn_id="t", text="hi"))
    async with asyncio.timeout(PROMPTLY):
        got, elapsed = await reader
    assert got == [event]
    assert elapsed < 0.3 + PROMPTLY  # woken by the publish, not by the 30 s wait


async def test_wait_returns_nothing_after_the_wait_when_nothing_is_new(events):
    sid = session()
    sent = await publish_many(events, sid, 2)
    got, elapsed = await timed(events.read(sid, sent[-1].id, wait=0.4))
    assert got == []
    assert 0.3 <= elapsed < 0.4 + PROMPTLY
    got, elapsed = await timed(events.read(session(), None, wait=0.4))  # no log at all
    assert got == []
    assert 0.3 <= elapsed < 0.4 + PROMPTLY


async def test_without_wait_read_returns_at_once(events):
    sid = session()
    got, elapsed = await timed(events.read(sid, None))
    assert (got, elapsed < PROMPTLY) == ([], True)
    sent = await publish_many(events, sid, 1)
    got, elapsed = await timed(events.read(sid, sent[0].id, wait=0))
    assert (got, elapsed < PROMPTLY) == ([], True)


async def test_two_concurrent_readers_both_get_the_event(backend, events):
    sid = session()
    other = backend.peer(events)
    first = asyncio.create_task(events.read(sid, None, wait=30))
    second = asyncio.create_task(other.read(sid, None, wait=30))
    await asyncio.sleep(0.3)
    assert not first.done() and not second.done()
    event = await events.publish(sid, TurnStarted(turn_id="t1", model="m"))
    async with asyncio.timeout(PROMPTLY):
        assert await first == [event]
        assert await second == [event]


# -- sessions, retention, data ------------------------------------------------------------------


async def test_sessions_are_independent(events):
    a, b = session(), session()
    sent_a = await publish_many(events, a, 3)
    sent_b = await publish_many(events, b, 2)
    assert await events.read(a, None) == sent_a
    assert await events.read(b, None) == sent_b
    assert await events.read(session(), None) == []

    # a reader of ``a`` is not answered by a publish to ``b``
    reader = asyncio.create_task(events.read(a, sent_a[-1].id, wait=0.5))
    await asyncio.sleep(0.1)
    await events.publish(b, tick(99))
    async with asyncio.timeout(0.5 + PROMPTLY):
        assert await reader == []


async def test_retention_bounds_the_log(backend, redis_node_entries):
    sid = session()
    if backend.kind == "local":
        events = backend.new(retention=5)
        sent = await publish_many(events, sid, 5 + 7)
        assert await events.read(sid, None) == sent[-5:]  # exactly the newest ``retention``
        # a client behind the retained window gets what is left, in order, none twice
        assert await events.read(sid, sent[0].id) == sent[-5:]
        assert await events.read(sid, sent[-3].id) == sent[-2:]
        return
    # XADD … MAXLEN ~ 10 trims whole radix-tree nodes only (up to ``stream-node-max-entries``
    # each, 100 by default) and never below 10, so a stream keeps between 10 and 10 + that.
    events = backend.new(retention=10)
    sent = await publish_many(events, sid, 500)
    kept = await events.read(sid, None)
    assert 10 <= len(kept) <= 10 + redis_node_entries < 500, len(kept)
    assert kept == sent[-len(kept) :]  # the newest, in order


@pytest.fixture
async def redis_node_entries(request, backend) -> int:
    """Redis's ``stream-node-max-entries`` (when this test runs against Redis), else 0."""
    if backend.kind != "redis":
        return 0
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        config = await client.config_get("stream-node-max-entries")
    finally:
        await client.aclose()
    return int(config.get("stream-node-max-entries", 100))


PAYLOADS = {
    "unicode": {"text": "héllo ✓ 你好 🎉 \u200b", "ключ": "значение"},
    "sse-hostile text": {"text": 'line 1\nline 2\r\n\ndata: not an event\n"quoted"\\'},
    "nested": {
        "cell": {"id": "c1", "outputs": [{"output_type": "stream", "text": ["a\n", "b"]}]},
        "list": [1, 2.5, -3, None, True, False, [], {}, {"deep": {"deeper": [[["x"]]]}}],
        "big": 2**53,
        "empty": {},
    },
    "empty": {},
}


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
async def test_data_round_trips(backend, events, payload):
    sid = session()
    text = str(payload.get("text", ""))
    sent = CellAdded(cell_id="c1", index=0, role="user", source=text, metadata=payload)
    event = await events.publish(sid, sent)
    assert event.type == "cell.added"
    assert event.data["metadata"] == payload and event.data["source"] == text
    [got] = await backend.peer(events).read(sid, None)
    assert got == event
    assert got.event == sent


# -- errors, delete, close ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["abc", "1.5", "1-x", "x-1", "1-2-3", " ", "-", "0x10"])
async def test_malformed_after_raises_invalid_input_at_once(events, bad):
    sid = session()
    await publish_many(events, sid, 1)
    with pytest.raises(InvalidInput, match="not an event id"):
        async with asyncio.timeout(PROMPTLY):  # not after waiting
            await events.read(sid, bad, wait=30)


@pytest.mark.parametrize("bad", ["1-", "²", "99999999999999999999-0"])
async def test_ids_redis_would_refuse_are_invalid_input(events, bad):
    """Not a 500 from Redis's "Invalid stream ID": non-ASCII digits, an empty sequence part, and
    parts beyond 64 bits are refused before they reach it."""
    sid = session()
    await publish_many(events, sid, 1)
    with pytest.raises(InvalidInput):
        await events.read(sid, bad)


async def test_a_sub_millisecond_wait_does_not_block_forever(events):
    """``XREAD BLOCK 0`` waits forever: a wait under a millisecond must still end."""
    async with asyncio.timeout(PROMPTLY):
        assert await events.read(session(), None, wait=0.0005) == []


async def test_delete_removes_a_sessions_log(events):
    a, b = session(), session()
    await publish_many(events, a, 3)
    sent_b = await publish_many(events, b, 2)
    await events.delete(a)
    assert await events.read(a, None) == []
    assert await events.read(b, None) == sent_b  # the other session keeps its log
    await events.delete(a)  # again: nothing to do
    await events.delete(session())  # never had a log
    event = await events.publish(a, tick(0))  # a new log starts
    assert await events.read(a, None) == [event]


async def test_local_close_wakes_a_blocked_reader_at_once():
    events = LocalEvents()
    sid = session()
    first = await events.publish(sid, tick(0))
    readers = [asyncio.create_task(timed(events.read(sid, first.id, wait=30))) for _ in range(3)]
    await asyncio.sleep(0.2)
    assert not any(r.done() for r in readers)
    await events.close()
    async with asyncio.timeout(PROMPTLY):
        results = await asyncio.gather(*readers)
    assert [got for got, _ in results] == [[], [], []]
    assert all(elapsed < 0.2 + PROMPTLY for _, elapsed in results)
    got, elapsed = await timed(events.read(sid, None, wait=30))  # closed: no waiting any more
    assert (got, elapsed < PROMPTLY) == ([], True)


@pytest.mark.redis
async def test_make_events_picks_the_kind(redis_url, redis_prefix):
    local = make_events(None, 7)
    assert isinstance(local, LocalEvents) and local.retention == 7
    remote = make_events(redis_url, 9, prefix=redis_prefix)
    try:
        assert isinstance(remote, RedisEvents) and remote.retention == 9
        assert remote.prefix == redis_prefix
    finally:
        await remote.close()


async def test_an_id_from_before_a_restart_gets_the_whole_new_log():
    before = LocalEvents()
    old = [await before.publish("s", tick(n)) for n in range(500)]
    await asyncio.sleep(0.002)
    after = LocalEvents()  # a new process: its counter starts again
    await after.publish("s", tick(-1))
    events = await after.read("s", old[-1].id)
    assert [e.data for e in events] == [{"total": -1}]


async def test_published_data_is_a_copy():
    log = LocalEvents()
    data = {"a": [1]}
    await log.publish("s", CellAdded(cell_id="c", index=0, role="user", source="", metadata=data))
    data["a"].append(2)
    assert (await log.read("s", None))[0].data["metadata"] == {"a": [1]}


async def test_a_long_wait_outlasts_the_clients_socket_timeout(events):
    """An idle SSE stream waits longer than a Redis client's default read timeout (5 s)."""
    got, elapsed = await timed(events.read(session(), None, wait=6))
    assert got == [] and 5.9 <= elapsed < 6 + PROMPTLY
