"""The scripted LLM speaks OpenAI's protocol, checked with the real ``openai`` client: so the
agent's tests against it mean what they say."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import openai
import pytest
from llm_server import ScriptedLLM, cut, delay, error, respond, text, tool_call, tool_calls

USER = [{"role": "user", "content": "hi"}]
RUN_CODE = {
    "type": "function",
    "function": {
        "name": "run_code",
        "description": "Run Python in the session's kernel.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string"}},
            "required": ["code"],
        },
    },
}


@pytest.fixture
async def llm():
    server = await ScriptedLLM.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(llm):
    client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=0)
    yield client
    await client.close()


async def collect(stream) -> dict[str, Any]:
    """Reassemble a stream as an agent must: content concatenated, tool calls by ``index``."""
    content, calls, finish, usage, chunks = "", {}, None, None, 0
    async for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    ordered = [calls[i] for i in sorted(calls)]
    return {
        "content": content,
        "tool_calls": ordered,
        "finish": finish,
        "usage": usage,
        "chunks": chunks,
    }


async def stream(client, **kw: Any) -> dict[str, Any]:
    kw.setdefault("messages", USER)
    response = await client.chat.completions.create(model="gpt-test", stream=True, **kw)
    return await collect(response)


async def test_streamed_text_reassembles_and_reports_usage(llm, client):
    llm.script(text("The mean is 4.2, computed over 10 rows.\n", usage=(120, 11)))
    got = await stream(client, stream_options={"include_usage": True})
    assert got["content"] == "The mean is 4.2, computed over 10 rows.\n"
    assert got["finish"] == "stop"
    assert got["chunks"] >= 8  # word by word, plus role, finish and usage chunks
    assert got["usage"].model_dump(exclude_none=True) == {
        "prompt_tokens": 120,
        "completion_tokens": 11,
        "total_tokens": 131,
    }


async def test_usage_only_when_asked_and_plausible_by_default(llm, client):
    llm.script(text("short"), text("short"))
    assert (await stream(client))["usage"] is None
    usage = (await stream(client, stream_options={"include_usage": True}))["usage"]
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_streamed_tool_call_reassembles(llm, client):
    arguments = {"code": "import pandas as pd\ndf = pd.read_csv('data.csv')\ndf.describe()"}
    llm.script(tool_call("run_code", arguments, id="call_abc"))
    got = await stream(client, tools=[RUN_CODE])
    assert got["finish"] == "tool_calls"
    assert got["content"] == ""
    assert got["tool_calls"] == [
        {"id": "call_abc", "name": "run_code", "arguments": json.dumps(arguments)}
    ]
    assert json.loads(got["tool_calls"][0]["arguments"]) == arguments
    assert got["chunks"] > 5  # the arguments arrive in pieces


async def test_parallel_tool_calls_with_leading_text(llm, client):
    llm.script(
        tool_calls(
            [tool_call("run_code", {"code": "1 + 1"}), ("list_files", {})],
            content="Let me look.",
        )
    )
    got = await stream(client, tools=[RUN_CODE])
    assert got["content"] == "Let me look."
    assert got["finish"] == "tool_calls"
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in got["tool_calls"]] == [
        ("call_1_0", "run_code", {"code": "1 + 1"}),
        ("call_1_1", "list_files", {}),
    ]


async def test_malformed_arguments_arrive_verbatim(llm, client):
    llm.script(tool_call("run_code", '{"code": "unterminated'))
    got = await stream(client)
    assert got["tool_calls"][0]["arguments"] == '{"code": "unterminated'
    with pytest.raises(json.JSONDecodeError):
        json.loads(got["tool_calls"][0]["arguments"])


async def test_non_streamed(llm, client):
    llm.script(text("Hello there."), tool_call("run_code", {"code": "x"}, id="call_1"))
    answer = await client.chat.completions.create(model="gpt-test", messages=USER)
    assert answer.object == "chat.completion"
    assert answer.model == "gpt-test"
    assert answer.choices[0].message.content == "Hello there."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    answer = await client.chat.completions.create(model="gpt-test", messages=USER)
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("call_1", "run_code", '{"code": "x"}')
    ]


async def test_api_key_checked_like_openai():
    llm = await ScriptedLLM.start(api_key="sk-right")
    wrong = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-wrong-key", max_retries=0)
    right = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-right", max_retries=0)
    try:
        llm.script(text("ok"))
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model="gpt-test", messages=USER)
        assert caught.value.status_code == 401
        assert caught.value.code == "invalid_api_key"
        assert llm.pending == 1  # a refused request consumes no step
        answer = await right.chat.completions.create(model="gpt-test", messages=USER)
        assert answer.choices[0].message.content == "ok"
        assert llm.authorizations == ["Bearer sk-wrong-key", "Bearer sk-right"]
    finally:
        await wrong.close()
        await right.close()
        await llm.stop()


async def test_rate_limit_raises_and_is_retried(llm):
    limited = error(429, "Rate limit reached for gpt-test", headers={"retry-after": "0.01"})
    llm.script(limited)
    once = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=0)
    retrying = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=2)
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            await once.chat.completions.create(model="gpt-test", messages=USER)
        assert caught.value.status_code == 429
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.type == "requests"
        assert caught.value.response.headers["retry-after"] == "0.01"
        assert "Rate limit reached" in caught.value.message

        llm.script(limited, text("finally"))
        got = await collect(
            await retrying.chat.completions.create(model="gpt-test", messages=USER, stream=True)
        )
        assert got["content"] == "finally"
        assert len(llm.requests) == 3
        assert llm.requests[1] == llm.requests[2]
    finally:
        await once.close()
        await retrying.close()


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors(llm, client, status):
    llm.script(error(status, "The server had an error while processing your request."))
    with pytest.raises(openai.InternalServerError) as caught:
        await stream(client)
    assert caught.value.status_code == status
    assert caught.value.type == "server_error"
    assert caught.value.body["message"] == "The server had an error while processing your request."


async def test_cut_stream_raises_connection_error(llm, client):
    llm.script(cut(after_chunks=3, then=text("one two three four five")))
    response = await client.chat.completions.create(model="gpt-test", messages=USER, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError) as caught:
        async for chunk in response:
            received.append(chunk.choices[0].delta.content)
    assert type(caught.value) is openai.APIConnectionError
    # The transport's own error underneath (httpx's, or httpx2's in newer openai releases).
    cause = caught.value.__cause__
    assert type(cause).__name__ == "RemoteProtocolError"
    assert "incomplete chunked read" in str(cause)
    assert received == ["", "one", " two"]  # role chunk, then two words; no [DONE]


async def test_cut_non_streamed_request(llm, client):
    llm.script(cut(after_chunks=0, then=text("never")))
    with pytest.raises(openai.APIConnectionError) as caught:
        await client.chat.completions.create(model="gpt-test", messages=USER)
    assert type(caught.value) is openai.APIConnectionError
    assert type(caught.value.__cause__).__name__ == "RemoteProtocolError"


async def test_delay_and_client_timeout(llm, client):
    llm.script(delay(30, then=text("too late")), text("on time"))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, timeout=0.3
        )
    assert time.monotonic() - started < 5
    # The abandoned request does not hold the server up.
    assert (await stream(client))["content"] == "on time"


async def test_stall_mid_stream_times_out(llm, client):
    llm.script(cut(after_chunks=2, then=text("partial answer here"), stall=30))
    response = await client.chat.completions.create(
        model="gpt-test", messages=USER, stream=True, timeout=0.3
    )
    received = []
    with pytest.raises(openai.APITimeoutError):
        async for chunk in response:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "partial"]


async def test_client_leaving_mid_stream_is_harmless(llm, client):
    llm.script(text(" ".join(["word"] * 2000)), text("next"))
    response = await client.chat.completions.create(model="gpt-test", messages=USER, stream=True)
    async for _ in response:
        break
    await response.close()
    assert (await stream(client))["content"] == "next"


async def test_stop_ends_a_pending_delay():
    llm = await ScriptedLLM.start()
    client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=0)
    llm.script(delay(60, then=text("never")))
    request = asyncio.ensure_future(client.chat.completions.create(model="gpt-test", messages=USER))
    while not llm.requests:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await llm.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(openai.APIConnectionError):
        await request
    await client.close()


async def test_exhausted_script_is_a_loud_500(llm):
    llm.script(text("only one"))
    retrying = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=2)
    try:
        await retrying.chat.completions.create(model="gpt-test", messages=USER)
        with pytest.raises(openai.InternalServerError) as caught:
            await retrying.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "second question"}]
            )
    finally:
        await retrying.close()
    assert caught.value.status_code == 500
    assert caught.value.code == "script_exhausted"
    assert "script exhausted" in caught.value.message
    assert "second question" in caught.value.message
    assert len(llm.requests) == 2  # x-should-retry: false, so the client did not retry


async def test_requests_recorded_and_respond_sees_tool_results(llm, client):
    def summarise(body):
        result = body["messages"][-1]
        assert result["role"] == "tool"
        return text(f"The kernel printed {result['content']}.")

    llm.script(tool_call("run_code", {"code": "print(6 * 7)"}), respond(summarise))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You analyse data."},
        {"role": "user", "content": "What is 6 * 7?"},
    ]
    first = await stream(client, messages=messages, tools=[RUN_CODE])
    call = first["tool_calls"][0]
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "42"},
    ]
    second = await stream(client, messages=messages, tools=[RUN_CODE])
    assert second["content"] == "The kernel printed 42."

    assert len(llm.requests) == 2
    assert all(r["model"] == "gpt-test" and r["stream"] is True for r in llm.requests)
    assert llm.requests[0]["messages"] == messages[:2]
    assert llm.requests[1]["messages"] == messages
    assert llm.requests[1]["tools"] == [RUN_CODE]
    assert llm.authorizations == ["Bearer sk-test", "Bearer sk-test"]
    assert llm.pending == 0


async def test_async_respond(llm, client):
    async def later(body):
        await asyncio.sleep(0.01)
        return text(f"{len(body['messages'])} message(s)")

    llm.script(respond(later))
    assert (await stream(client))["content"] == "1 message(s)"


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([{"role": "tool", "tool_call_id": "call_x", "content": "1"}], "role 'tool' must be"),
        (
            [
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_x",
                            "type": "function",
                            "function": {"name": "run_code", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "user", "content": "and?"},
            ],
            "did not have response messages: call_x",
        ),
    ],
)
async def test_invalid_history_rejected_like_openai(llm, client, messages, fragment):
    llm.script(text("unused"))
    with pytest.raises(openai.BadRequestError) as caught:
        await stream(client, messages=messages)
    assert fragment in caught.value.message
    assert llm.pending == 1


async def test_failing_respond_is_a_loud_500_not_retried(llm):
    def broken(body):
        raise RuntimeError("test bug")

    llm.script(respond(broken), text("must stay unused"))
    retrying = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=2)
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            await retrying.chat.completions.create(model="gpt-test", messages=USER)
    finally:
        await retrying.close()
    assert "RuntimeError('test bug')" in caught.value.message
    assert llm.pending == 1


async def test_models(llm, client):
    assert [m.id async for m in client.models.list()] == ["scripted"]
    assert (await client.models.retrieve("scripted")).id == "scripted"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-nonexistent")
