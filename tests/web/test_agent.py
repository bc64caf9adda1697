"""The agent over the real API: turns driven by the real ``openai`` client against the scripted
LLM server, code run in the real sandbox, progress on the SSE stream, all recorded in the notebook.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import re
import uuid

import pytest
from conftest import backend_settings, running
from llm_server import (
    ScriptedLLM,
    cut,
    delay,
    error,
    garbage,
    respond,
    text,
    tool_call,
    tool_calls,
)
from sse import EventStream

from kernelagent.domain import Turn
from kernelagent.services.output_views import DATAFRAME_MIME_TYPE

pytestmark = pytest.mark.sandbox


@pytest.fixture
async def llm():
    server = await ScriptedLLM.start(api_key="sk-test")
    yield server
    await server.stop()


def agent_settings(request, tmp_path, port, llm, **overrides):
    return backend_settings(
        request,
        tmp_path,
        port,
        **{
            "openai_api_key": "sk-test",
            "openai_base_url": llm.base_url,
            "model": "scripted",
            "llm_retries": 2,
            **overrides,
        },
    )


@pytest.fixture(params=["embedded", "networked"])
async def server(request, tmp_path, unused_port, llm):
    async with running(agent_settings(request, tmp_path, unused_port, llm)) as s:
        yield s


def events_of(server, session_id, last_event_id=None) -> EventStream:
    return EventStream(
        server.port, f"/api/v1/sessions/{session_id}/events", server.token, last_event_id
    )


async def ask(server, session_id, content, **extra):
    answer = await server.json(
        f"/api/v1/sessions/{session_id}/messages", "POST", {"content": content, **extra}
    )
    return answer["turn_id"]


def ended(turn_id):
    return lambda e: e.type in ("turn.completed", "turn.failed") and e.data["turn_id"] == turn_id


def last_tool_result(request_body) -> str:
    return next(m for m in reversed(request_body["messages"]) if m["role"] == "tool")["content"]


def recording(told: list[str]):
    """``then(step)``: a scripted step that first keeps the tool result the model was given;
    ``step`` may be a function of that result."""

    def then(step):
        def record(body):
            told.append(last_tool_result(body))
            return step(told[-1]) if callable(step) else step

        return respond(record)

    return then


async def test_a_turn_runs_code_sees_a_summary_and_answers(server, llm):
    session = await server.session("sales")
    upload = await server.upload(session["id"], "sales.csv", b"region,amount\nnorth,10\nsouth,32\n")
    assert upload.code == 201

    seen = {}

    def check_summary(body):
        seen["result"] = last_tool_result(body)
        return text("Total sales are 42, mostly from the south.")

    llm.script(
        tool_call(
            "run_python",
            {"code": "import pandas as pd\ndf = pd.read_csv('sales.csv')\ndf"},
            content="Let me look at the data.",
        ),
        respond(check_summary),
    )
    async with events_of(server, session["id"]) as stream:
        turn_id = await ask(server, session["id"], "What are total sales?")
        events = await stream.until(ended(turn_id))

    types = [e.type for e in events]
    assert types[0] == "cell.added"  # the upload, recorded where it arrived
    events = events[types.index("turn.started") :]
    types = [e.type for e in events]
    assert types[0] == "turn.started" and types[-1] == "turn.completed", types
    for kind in ("message.delta", "cell.started", "cell.output", "cell.completed", "usage"):
        assert kind in types, kind
    ids = [tuple(int(part) for part in e.id.split("-")) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    streamed = "".join(e.data["text"] for e in events if e.type == "message.delta")
    assert "Total sales are 42" in streamed
    started = next(e for e in events if e.type == "cell.started" and e.data["role"] == "agent")
    assert "read_csv" in started.data["code"]

    # the model got a budgeted view of the DataFrame, not its HTML
    assert "(2, 2)" in seen["result"] or "2 rows" in seen["result"], seen["result"]
    assert "amount" in seen["result"] and "<table" not in seen["result"]

    # what the model was told: the workspace's files with their columns, and the tools
    first = llm.requests[0]
    system = first["messages"][0]["content"]
    assert first["messages"][0]["role"] == "system"
    assert "sales.csv" in system and "region" in system and "amount" in system
    assert "pandas" in system
    assert {t["function"]["name"] for t in first["tools"]} == {
        "run_python",
        "ask_user",
        "read_artifact",
    }
    assert first["model"] == "scripted" and first["stream"] is True
    assert llm.authorizations[0] == "Bearer sk-test"

    notebook = json.loads((await server.fetch(f"/api/v1/sessions/{session['id']}/notebook")).body)
    cells = [(c["cell_type"], c["metadata"]["kernelagent"]["role"]) for c in notebook["cells"]]
    assert cells == [
        ("markdown", "system"),  # the upload
        ("markdown", "user"),
        ("markdown", "assistant"),
        ("code", "agent"),
        ("markdown", "assistant"),
    ]
    code = notebook["cells"][3]
    meta = code["metadata"]["kernelagent"]
    assert meta["tool_call_id"] and meta["attempt"] == 1 and meta["turn_id"] == turn_id
    assert any("text/html" in o.get("data", {}) for o in code["outputs"])
    # the DataFrame summary the kernel adds for the model is in the record, not in the export
    recorded = next(
        c for c in await server.services.db.cells.list(session["id"]) if c.role == "agent"
    )
    assert any(DATAFRAME_MIME_TYPE in o.get("data", {}) for o in recorded.outputs)
    assert not any(DATAFRAME_MIME_TYPE in o.get("data", {}) for o in code["outputs"])

    detail = await server.json(f"/api/v1/sessions/{session['id']}")
    assert detail["usage"]["turns"] == 1 and detail["usage"]["prompt_tokens"] > 0
    turn = await server.json(f"/api/v1/sessions/{session['id']}/turns/{turn_id}")
    assert turn["status"] == "completed" and turn["usage"]["completion_tokens"] > 0


async def test_errors_go_back_to_the_model_typed(server, llm):
    session = await server.session()
    results = []

    then = recording(results)

    llm.script(
        tool_call("run_python", {"code": "import no_such_module_here"}),
        then(tool_call("run_python", {"code": "1/0"})),
        then(tool_call("run_python", {"code": "print('fixed')"})),
        then(text("Done after two mistakes.")),
    )
    turn_id = await ask(server, session["id"], "go")
    async with events_of(server, session["id"]) as stream:
        await stream.until(ended(turn_id))
    assert results[0].startswith("MISSING MODULE") and "no_such_module_here" in results[0]
    assert "ZeroDivisionError" in results[1] and "division by zero" in results[1]
    assert "fixed" in results[2]
    cells = await server.services.db.cells.list(session["id"])
    attempts = [c.metadata["attempt"] for c in cells if c.role == "agent"]
    assert attempts == [1, 2, 3]
    assert [c.status for c in cells if c.role == "agent"] == ["error", "error", "ok"]


async def test_ask_user_pauses_the_turn_until_answered(server, llm):
    session = await server.session()
    llm.script(
        tool_call("ask_user", {"question": "Which year?"}),
        respond(lambda body: text(f"You said {last_tool_result(body)}.")),
    )
    async with events_of(server, session["id"]) as stream:
        turn_id = await ask(server, session["id"], "Plot revenue")
        asked = (await stream.until(lambda e: e.type == "ask_user"))[-1]
        assert asked.data == {"turn_id": turn_id, "question": "Which year?", **asked.data}
        turn = await server.json(f"/api/v1/sessions/{session['id']}/turns/{turn_id}")
        assert turn["status"] == "waiting"
        # a second message while the turn waits is refused, not queued silently
        busy = await server.fetch(
            f"/api/v1/sessions/{session['id']}/messages", "POST", {"content": "again"}
        )
        assert busy.code == 409
        wrong = await server.fetch(
            f"/api/v1/sessions/{session['id']}/turns/{turn_id}/approval",
            "POST",
            {"decision": "approve"},
        )
        assert wrong.code == 409
        answered = await server.fetch(
            f"/api/v1/sessions/{session['id']}/turns/{turn_id}/answer", "POST", {"text": "2024"}
        )
        assert answered.code == 202
        events = await stream.until(ended(turn_id))
    assert events[-1].type == "turn.completed"
    assert any(e.type == "message.completed" and e.data["text"] == "You said 2024." for e in events)
    cells = await server.services.db.cells.list(session["id"])
    assert [(c.role, c.source) for c in cells] == [
        ("user", "Plot revenue"),
        ("assistant", "Which year?"),
        ("user", "2024"),
        ("assistant", "You said 2024."),
    ]


async def test_approval_mode_holds_each_cell(server, llm):
    session = await server.session()
    await server.json(f"/api/v1/sessions/{session['id']}", "PATCH", {"approval_mode": True})
    told = []

    then = recording(told)

    llm.script(
        tool_call("run_python", {"code": "x = 1\nx"}),
        then(tool_call("run_python", {"code": "import os; os.remove('important.txt')"})),
        then(text("ok")),
    )
    base = f"/api/v1/sessions/{session['id']}/turns"
    async with events_of(server, session["id"]) as stream:
        turn_id = await ask(server, session["id"], "set x")
        first = (await stream.until(lambda e: e.type == "approval.required"))[-1]
        assert first.data["code"] == "x = 1\nx"
        bad = await server.fetch(f"{base}/{turn_id}/approval", "POST", {"decision": "edit"})
        assert bad.code == 400
        await server.json(
            f"{base}/{turn_id}/approval", "POST", {"decision": "edit", "code": "x = 2\nx"}
        )
        await stream.until(
            lambda e: e.type == "approval.required" and e.data["cell_id"] != first.data["cell_id"]
        )
        await server.json(f"{base}/{turn_id}/approval", "POST", {"decision": "reject"})
        await stream.until(ended(turn_id))
    assert "edited" in told[0] and "x = 2" in told[0] and "2" in told[0]
    assert "rejected" in told[1]
    check = await server.run(session["id"], "x")
    assert check["cell"]["outputs"][0]["data"]["text/plain"] == "2"
    cells = await server.services.db.cells.list(session["id"])
    agent = [c for c in cells if c.role == "agent"]
    assert [c.source for c in agent] == ["x = 2\nx"]
    assert agent[0].metadata["proposed_code"] == "x = 1\nx"
    assert any(c.role == "system" and c.metadata.get("rejected") for c in cells)


async def test_interrupt_stops_the_cell_and_the_turn(server, llm):
    session = await server.session()
    llm.script(tool_call("run_python", {"code": "import time\ntime.sleep(60)"}))
    async with events_of(server, session["id"]) as stream:
        turn_id = await ask(server, session["id"], "wait a minute")
        await stream.until(lambda e: e.type == "cell.started")
        await asyncio.sleep(0.3)
        response = await server.fetch(f"/api/v1/sessions/{session['id']}/interrupt", "POST")
        assert response.code == 204
        events = await stream.until(ended(turn_id), timeout=20)
    assert events[-1].type == "turn.failed" and events[-1].data["status"] == "interrupted"
    completed = next(e for e in events if e.type == "cell.completed")
    assert completed.data["status"] == "interrupted"
    assert len(llm.requests) == 1  # the model was not asked again


async def test_the_stream_resumes_after_last_event_id_and_serves_many_clients(server, llm):
    session = await server.session()
    llm.script(tool_call("run_python", {"code": "print('hi')"}), text("bye"))
    async with events_of(server, session["id"]) as a, events_of(server, session["id"]) as b:
        turn_id = await ask(server, session["id"], "hi")
        everything = await a.until(ended(turn_id))
        assert [e.id for e in await b.until(ended(turn_id))] == [e.id for e in everything]
    middle = everything[len(everything) // 2]
    async with events_of(server, session["id"], last_event_id=middle.id) as resumed:
        rest = await resumed.until(ended(turn_id))
    assert [e.id for e in rest] == [e.id for e in everything[len(everything) // 2 + 1 :]]
    bad = await server.fetch(
        f"/api/v1/sessions/{session['id']}/events", headers={"Last-Event-ID": "not-an-id"}
    )
    assert bad.code == 400


async def test_the_conversation_continues_from_the_record(request, tmp_path, unused_port, llm):
    """A second turn, in a new server process on the same data, sees the first one."""
    request.param = "embedded"
    settings = agent_settings(request, tmp_path, unused_port, llm)
    llm.script(tool_call("run_python", {"code": "answer = 6 * 7\nanswer"}), text("It is 42."))
    async with running(settings) as first:
        session = await first.session()
        turn_id = await ask(first, session["id"], "What is 6 times 7?")
        await first.services.agent.wait(session["id"])
        assert (await first.services.db.turns.get(turn_id)).status == "completed"
    llm.script(text("Still 42."))
    async with running(settings) as second:
        turn_id = await ask(second, session["id"], "And again?")
        await second.services.agent.wait(session["id"])
    messages = llm.requests[-1]["messages"]
    roles = [m["role"] for m in messages]
    # the new process had no kernel: its state was rebuilt, and the model is told so
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "user"]
    assert (
        messages[6]["content"].startswith("[note]") and "state restored" in messages[6]["content"]
    )
    assert messages[2]["tool_calls"][0]["function"]["name"] == "run_python"
    assert json.loads(messages[2]["tool_calls"][0]["function"]["arguments"]) == {
        "code": "answer = 6 * 7\nanswer"
    }
    assert messages[3]["tool_call_id"] == messages[2]["tool_calls"][0]["id"]
    assert "42" in messages[3]["content"]
    assert messages[4]["content"] == "It is 42." and messages[5]["content"] == "And again?"


async def test_a_paused_turn_survives_a_restart(request, tmp_path, unused_port, llm):
    """A turn waiting for an answer, then for an approval, each given to a server process
    started after the one that asked had stopped: it goes on from the record."""
    request.param = "embedded"
    settings = agent_settings(request, tmp_path, unused_port, llm)
    llm.script(
        tool_call("ask_user", {"question": "Which year?"}),
        respond(lambda body: tool_call("run_python", {"code": f"year = {last_tool_result(body)}"})),
        respond(lambda body: text(f"Set; the tool said {last_tool_result(body)!r}.")),
    )
    async with running(settings) as first:
        session = await first.session()
        sid = session["id"]
        turn_id = await ask(first, sid, "Set the year")
        await first.services.agent.wait(sid)
        assert (await first.services.db.turns.get(turn_id)).status == "waiting"
        await first.json(f"/api/v1/sessions/{sid}", "PATCH", {"approval_mode": True})
    async with running(settings) as second:  # no turn failed at start-up: it was paused
        assert (await second.services.db.turns.get(turn_id)).status == "waiting"
        base = f"/api/v1/sessions/{sid}/turns/{turn_id}"
        await second.json(f"{base}/answer", "POST", {"text": "2024"})
        await second.services.agent.wait(sid)
        turn = await second.json(base)
        assert turn["status"] == "waiting"  # now for the approval of the cell using the answer
    async with running(settings) as third:
        await third.json(f"{base}/approval", "POST", {"decision": "approve"})
        await third.services.agent.wait(sid)
        turn = await third.json(base)
        year = await third.run(sid, "year")
        cells = await third.services.db.cells.list(sid)
    assert turn["status"] == "completed", turn
    assert year["cell"]["outputs"][0]["data"]["text/plain"] == "2024"
    agent = [c for c in cells if c.role == "agent"]
    assert [c.source for c in agent] == ["year = 2024"]
    assert [(c.role, c.source) for c in cells if c.cell_type == "markdown" and c.role != "system"][
        :3
    ] == [("user", "Set the year"), ("assistant", "Which year?"), ("user", "2024")]
    # the model saw the conversation rebuilt from the record, the answer as ask_user's result
    resumed = llm.requests[1]["messages"]
    call = next(m for m in resumed if m.get("tool_calls"))["tool_calls"][0]
    assert call["function"]["name"] == "ask_user"
    assert next(m for m in resumed if m.get("tool_call_id") == call["id"])["content"] == "2024"


async def test_start_up_fails_only_turns_whose_process_is_gone(server, llm):
    session = await server.session()
    turns, db = server.services.turns, server.services.db
    llm.script(tool_call("run_python", {"code": "import time\ntime.sleep(3)"}), text("done"))
    async with events_of(server, session["id"]) as stream:
        live = await ask(server, session["id"], "take your time")
        await stream.until(lambda e: e.type == "cell.started")
        assert await turns.recover() == 0  # its process (this one) holds it
        # a turn a stopped process left running: nobody holds it
        orphan = dataclasses.replace(
            await db.turns.get(live), id=str(uuid.uuid4()), status="running"
        )
        await db.turns.add(orphan)
        assert await turns.recover() == 1
        events = await stream.until(ended(live), timeout=30)
    assert (await db.turns.get(orphan.id)).status == "failed"
    assert "stopped" in (await db.turns.get(orphan.id)).error
    assert events[-1].type == "turn.completed"


async def test_a_turn_whose_signal_was_lost_starts_at_the_next_recovery(server, llm):
    """A turn this process was asked to run (it owns it) but never heard of starts here."""
    session = await server.session()
    services = server.services
    llm.script(text("picked up"))
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    turn = Turn(str(uuid.uuid4()), session["id"], "running", "scripted", started)
    await services.state.claim("turn", turn.id)
    await services.db.turns.add(turn)
    await services.recorder.markdown(session["id"], "user", "hello", {"turn_id": turn.id})
    assert await services.turns.recover() == 0
    await services.agent.wait(session["id"])
    assert (await services.db.turns.get(turn.id)).status == "completed"
    assert llm.requests[-1]["messages"][-1]["content"] == "hello"


async def test_bad_tool_arguments_are_told_to_the_model_by_field(server, llm):
    session = await server.session()
    told: list[str] = []
    then = recording(told)
    llm.script(
        tool_call("run_python", {"cod": "print(1)"}),
        then(tool_call("read_artifact", {"artifact_id": "x", "view": "pixels"})),
        then(tool_call("ask_user", {"question": "   "})),
        then(text("giving up")),
    )
    turn_id = await ask(server, session["id"], "go")
    await server.services.agent.wait(session["id"])
    assert (await server.services.db.turns.get(turn_id)).status == "completed"
    assert "`code`: Field required" in told[0] and "`cod`" in told[0], told[0]
    assert "`view`" in told[1] and "'text'" in told[1], told[1]
    assert "`question`" in told[2] and "empty" in told[2], told[2]
    tools = llm.requests[0]["tools"]
    run_python = next(t for t in tools if t["function"]["name"] == "run_python")
    assert run_python["function"]["parameters"]["required"] == ["code"]
    assert run_python["function"]["parameters"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("steps", "expect"),
    [
        ([error(401, "bad key")], "OPENAI_API_KEY"),
        ([error(404, "no such model", code="model_not_found")], "KERNELAGENT_MODEL"),
        ([error(500, "boom")] * 3, "failed 3 times"),
    ],
    ids=["401", "404", "500-exhausted"],
)
async def test_llm_failures_fail_the_turn_clearly(server, llm, steps, expect):
    session = await server.session()
    llm.script(*steps)
    async with events_of(server, session["id"]) as stream:
        turn_id = await ask(server, session["id"], "hello")
        events = await stream.until(ended(turn_id))
    assert events[-1].type == "turn.failed" and expect in events[-1].data["error"]
    cells = await server.services.db.cells.list(session["id"])
    assert cells[-1].role == "system" and expect in cells[-1].source
    # the session still works
    assert (await server.run(session["id"], "1 + 1"))["cell"]["outputs"][0]["data"]


@pytest.mark.parametrize(
    "junk",
    [
        garbage("data: {not json\n\n"),
        garbage('data: {"choices": 5}\n\ndata: [DONE]\n\n'),
        garbage("<html><body>502 Bad Gateway</body></html>", "text/html"),
        garbage(""),
    ],
    ids=["broken-json", "wrong-shape", "html-page", "empty"],
)
async def test_an_llm_answering_garbage_fails_the_turn_and_keeps_what_ran(server, llm, junk):
    session = await server.session()
    llm.script(tool_call("run_python", {"code": "kept = 41 + 1"}), junk, junk, junk)
    async with events_of(server, session["id"]) as stream:
        turn_id = await ask(server, session["id"], "hello")
        events = await stream.until(ended(turn_id))
    assert events[-1].type == "turn.failed", events[-1]
    assert "LLM" in events[-1].data["error"] or "model" in events[-1].data["error"]
    turn = await server.json(f"/api/v1/sessions/{session['id']}/turns/{turn_id}")
    assert turn["status"] == "failed"
    cells = await server.services.db.cells.list(session["id"])
    assert any(c.source == "kept = 41 + 1" and c.status == "ok" for c in cells)
    after = await server.run(session["id"], "kept")
    assert after["cell"]["outputs"][0]["data"]["text/plain"] == "42"


async def test_transient_llm_faults_are_survived(server, llm):
    session = await server.session()
    llm.script(
        error(429, "slow down", headers={"retry-after": "0.01"}),
        cut(3, tool_call("run_python", {"code": "print(1)"})),
        tool_calls([("run_python", '{"code": "unterminated'), ("no_such_tool", {"a": 1})]),
        respond(lambda body: text("recovered")),
    )
    async with events_of(server, session["id"]) as stream:
        turn_id = await ask(server, session["id"], "hello")
        events = await stream.until(ended(turn_id))
    assert events[-1].type == "turn.completed", events[-1]
    assert sum(e.type == "message.retry" for e in events) == 2
    tools = [m for m in llm.requests[-1]["messages"] if m["role"] == "tool"]
    assert "not valid JSON" in tools[0]["content"]
    assert "no tool named 'no_such_tool'" in tools[1]["content"]


async def test_budgets_stop_a_turn(request, tmp_path, unused_port, llm):
    request.param = "embedded"
    settings = agent_settings(
        request, tmp_path, unused_port, llm, agent_max_steps=3, agent_turn_timeout=2.0
    )
    async with running(settings) as server:
        session = await server.session()
        llm.script(*[tool_call("run_python", {"code": "1"})] * 3)
        async with events_of(server, session["id"]) as stream:
            turn_id = await ask(server, session["id"], "loop forever")
            events = await stream.until(ended(turn_id))
        assert "step budget of 3" in events[-1].data["error"]

        llm.script(delay(5, text("too late")))
        async with events_of(server, session["id"]) as stream:
            turn_id = await ask(server, session["id"], "be slow")
            events = await stream.until(ended(turn_id))
        assert "time budget of 2 s" in events[-1].data["error"]
        cells = await server.services.db.cells.list(session["id"])
        assert "KERNELAGENT_AGENT_TURN_TIMEOUT" in cells[-1].source


async def test_without_an_llm_messages_are_refused_plainly(ka_server):
    session = await ka_server.session()
    response = await ka_server.fetch(
        f"/api/v1/sessions/{session['id']}/messages", "POST", {"content": "hi"}
    )
    assert response.code == 503
    assert "OPENAI_API_KEY" in json.loads(response.body)["error"]["message"]


async def test_timeouts_images_read_artifact_and_cost(request, tmp_path, unused_port, llm):
    request.param = "embedded"
    settings = agent_settings(
        request, tmp_path, unused_port, llm, cell_timeout=1.5, prices='{"scripted": [2.0, 8.0]}'
    )
    told = []

    then = recording(told)

    plot = (
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(4, 3), dpi=100)\nax.plot([1, 2, 3])\nplt.show()"
    )
    llm.script(
        tool_call(
            "run_python", {"code": "import time\nprint('partial', flush=True)\ntime.sleep(30)"}
        ),
        then(lambda _: tool_call("run_python", {"code": plot})),
        then(
            lambda result: tool_call(
                "read_artifact", {"artifact_id": result.split("artifact ")[1].split("]")[0]}
            )
        ),
        then(lambda _: text("done", usage=(1000, 500))),
    )
    async with running(settings) as server:
        session = await server.session()
        # a fresh kernel's first matplotlib import builds its font cache: not within 1.5 s
        await server.run(session["id"], "import matplotlib.pyplot", timeout=60)
        turn_id = await ask(server, session["id"], "go")
        await server.services.agent.wait(session["id"])
        detail = await server.json(f"/api/v1/sessions/{session['id']}")
        turn = await server.json(f"/api/v1/sessions/{session['id']}/turns/{turn_id}")
    assert turn["status"] == "completed", turn
    assert told[0].startswith("TIMEOUT") and "partial" in told[0]
    image = re.search(r"\[image/png (\d+x\d+), artifact [0-9a-f-]{36}\]", told[1])
    assert image and "base64" not in told[1] and len(told[1]) < 1000, told[1]
    assert "image/png" in told[2] and image[1] in told[2]
    assert turn["usage"]["cost"] > 0 and detail["usage"]["cost"] == turn["usage"]["cost"]
    prompt, completion = turn["usage"]["prompt_tokens"], turn["usage"]["completion_tokens"]
    assert turn["usage"]["cost"] == pytest.approx((prompt * 2.0 + completion * 8.0) / 1e6)


async def test_the_token_budget_stops_a_turn(request, tmp_path, unused_port, llm):
    request.param = "embedded"
    settings = agent_settings(request, tmp_path, unused_port, llm, agent_token_budget=5000)
    llm.script(tool_call("run_python", {"code": "1"}, usage=(4000, 2000)), text("never"))
    async with running(settings) as server:
        session = await server.session()
        turn_id = await ask(server, session["id"], "go")
        await server.services.agent.wait(session["id"])
        turn = await server.json(f"/api/v1/sessions/{session['id']}/turns/{turn_id}")
    assert turn["status"] == "failed" and "KERNELAGENT_AGENT_TOKEN_BUDGET" in turn["error"]
    assert len(llm.requests) == 1


async def test_a_dead_kernel_is_told_to_the_model_typed(request, tmp_path, unused_port, llm):
    request.param = "embedded"
    settings = agent_settings(request, tmp_path, unused_port, llm, memory_limit=256 * 1024**2)
    told = []

    then = recording(told)

    hog = "import numpy as np\nblocks = [np.ones(32 * 1024**2) for _ in range(64)]"
    llm.script(
        tool_call("run_python", {"code": "kept = 1"}),
        then(tool_call("run_python", {"code": hog})),
        then(tool_call("run_python", {"code": "import os\nos._exit(3)"})),
        then(tool_call("run_python", {"code": "kept"})),
        then(text("done")),
    )
    async with running(settings) as server:
        session = await server.session()
        await ask(server, session["id"], "go")
        await server.services.agent.wait(session["id"])
    # RLIMIT_DATA turns most blow-ups into a MemoryError the kernel survives
    assert told[1].startswith("OUT OF MEMORY") and "256.0 MiB" in told[1], told[1]
    assert "MemoryError" in told[1]
    assert told[2].startswith("KERNEL DIED: exited with status 3"), told[2]
    assert told[3].strip().endswith("1"), told[3]  # the state came back by replay


async def test_an_llm_that_times_out_fails_the_turn(request, tmp_path, unused_port, llm):
    request.param = "embedded"
    settings = agent_settings(request, tmp_path, unused_port, llm, llm_timeout=0.5, llm_retries=1)
    llm.script(delay(3, text("late")), delay(3, text("late again")))
    async with running(settings) as server:
        session = await server.session()
        turn_id = await ask(server, session["id"], "hello")
        await server.services.agent.wait(session["id"])
        turn = await server.json(f"/api/v1/sessions/{session['id']}/turns/{turn_id}")
    assert turn["status"] == "failed" and "timed out" in turn["error"], turn
