"""Every event a session emits is an instance of its model in ``kernelagent.events``.

A session goes through what publishes events (cells with streams, displays, updates and clears,
an upload, an agent turn with a retried LLM call, a question, an approval, a rejection, an
interrupt, a replay); then every entry of its Redis Stream (the raw JSON as stored) and every
event of its SSE stream is validated against the model its type names: unknown fields, missing
fields and wrong types fail. Together the events seen cover every declared type.
"""

from __future__ import annotations

import json

import pydantic
import pytest
import redis.asyncio as aioredis
from conftest import backend_settings, running
from llm_server import ScriptedLLM, error, respond, text, tool_call
from sse import EventStream

from kernelagent.events import EVENT_TYPES, EVENTS, parse_event

pytestmark = [pytest.mark.sandbox, pytest.mark.redis, pytest.mark.postgres, pytest.mark.s3]

CELL = """\
from IPython.display import HTML, display, clear_output
print('out')
handle = display(HTML('<b>1</b>'), display_id=True)
handle.update(HTML('<b>2</b>'))
clear_output(wait=True)
print('after the clear')
41 + 1
"""


def ended(turn_id):
    return lambda e: e.type in ("turn.completed", "turn.failed") and e.data["turn_id"] == turn_id


async def ask(server, session_id: str, content: str) -> str:
    path = f"/api/v1/sessions/{session_id}/messages"
    return (await server.json(path, "POST", {"content": content}))["turn_id"]


@pytest.fixture
async def llm():
    server = await ScriptedLLM.start(api_key="sk-test")
    yield server
    await server.stop()


async def test_every_emitted_event_validates_against_its_model(request, tmp_path, unused_port, llm):
    request.param = "networked"
    settings = backend_settings(
        request,
        tmp_path,
        unused_port,
        openai_api_key="sk-test",
        openai_base_url=llm.base_url,
        model="scripted",
        llm_retries=2,
    )
    async with running(settings) as server:
        session = await server.session("events")
        sid = session["id"]
        path = f"/api/v1/sessions/{sid}/events"
        async with EventStream(server.port, path, server.token) as stream:
            await server.run(sid, CELL)
            await server.upload(sid, "data.csv", b"a\n1\n")
            llm.script(
                error(500, "flaky"),
                tool_call("ask_user", {"question": "Which?"}),
                respond(lambda body: tool_call("run_python", {"code": "print('approved')"})),
                tool_call("run_python", {"code": "print('rejected')"}),
                text("done"),
            )
            turn = await ask(server, sid, "go")
            await stream.until(lambda e: e.type == "ask_user")
            base = f"/api/v1/sessions/{sid}/turns/{turn}"
            await server.json(f"/api/v1/sessions/{sid}", "PATCH", {"approval_mode": True})
            await server.json(f"{base}/answer", "POST", {"text": "this one"})
            await stream.until(lambda e: e.type == "approval.required")
            await server.json(f"{base}/approval", "POST", {"decision": "approve"})
            await stream.until(
                lambda e: e.type == "approval.required" and "rejected" in e.data["code"]
            )
            await server.json(f"{base}/approval", "POST", {"decision": "reject"})
            await stream.until(ended(turn))
            await server.json(f"/api/v1/sessions/{sid}", "PATCH", {"approval_mode": False})
            llm.script(tool_call("run_python", {"code": "import time\ntime.sleep(30)"}))
            second = await ask(server, sid, "wait")
            await stream.until(lambda e: e.type == "cell.started" and "sleep" in e.data["code"])
            await server.fetch(f"/api/v1/sessions/{sid}/interrupt", "POST")
            await stream.until(ended(second))
            await server.json(f"/api/v1/sessions/{sid}/replay", "POST")
            streamed = await stream.until(lambda e: e.type == "replay.completed")

        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            stored = await client.xrange(f"kernelagent:events:{sid}")
        finally:
            await client.aclose()

    assert len(stored) == len(streamed)
    for raw_id, fields in stored:
        kind, data = fields[b"type"].decode(), json.loads(fields[b"data"])
        event = parse_event(kind, data)  # raises on an unknown type or a wrong shape
        assert event.data() == data, raw_id  # nothing dropped or added by the model
    for sse in streamed:
        EVENTS.validate_python({**sse.data, "type": sse.type})
    assert {e.type for e in streamed} == set(EVENT_TYPES)


def test_a_malformed_event_is_refused():
    with pytest.raises(pydantic.ValidationError):
        parse_event("cell.completed", {"cell_id": "c", "index": 0, "status": "ok"})
    with pytest.raises(pydantic.ValidationError):
        parse_event("turn.completed", {"turn_id": "t", "surprise": 1})
    with pytest.raises(pydantic.ValidationError):
        parse_event("no.such.event", {})
