"""A scripted OpenAI-compatible chat completions server, for tests.

No LLM is reachable from the test machines, so the agent's tests point the real ``openai`` client
at this server instead. Each request consumes the next scripted step; what the client receives is
the OpenAI wire format (streamed SSE chunks or a ``chat.completion`` object, OpenAI-style errors),
so the client's own parsing, retries and error mapping are exercised as in production::

    llm = await ScriptedLLM.start()
    llm.script(
        tool_call("run_code", {"code": "1 + 1"}),
        respond(lambda body: text(f"the kernel said {body['messages'][-1]['content']}")),
    )
    client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0)
    ...
    assert llm.requests[1]["messages"][-1]["role"] == "tool"
    await llm.stop()

A request that finds the script exhausted gets a loud 500 (with ``x-should-retry: false``, so the
client does not hide the test bug behind retries). Message histories that OpenAI would reject
(a ``tool`` message answering no pending tool call, tool calls left unanswered) get OpenAI's 400,
so an agent that builds an invalid history fails here as it would against the real service.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

__all__ = [
    "Cut",
    "Delay",
    "Error",
    "Reply",
    "Respond",
    "ScriptedLLM",
    "Step",
    "ToolCall",
    "cut",
    "delay",
    "error",
    "respond",
    "text",
    "tool_call",
    "tool_calls",
]

log = logging.getLogger("llm_server")

ARGUMENT_PIECE = 8
"""Characters of tool-call arguments per chunk: small, so pieces split JSON mid-token as real
servers do and a client that parses each piece on its own breaks here rather than in production."""


# --- steps ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str
    id: str | None = None


@dataclasses.dataclass(frozen=True)
class Reply:
    """An assistant message: text, tool calls, or both (text first, as models send it)."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Error:
    status: int
    message: str
    type: str
    code: str | None
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Cut:
    after_chunks: int
    then: Reply
    stall: float = 0.0


@dataclasses.dataclass(frozen=True)
class Delay:
    seconds: float
    then: Step


@dataclasses.dataclass(frozen=True)
class Respond:
    fn: Callable[[dict[str, Any]], Step | Awaitable[Step]]


@dataclasses.dataclass(frozen=True)
class Garbage:
    """A 200 whose body is not what the API promises (a broken stream, a proxy's page)."""

    body: str
    content_type: str


Step = Reply | Error | Cut | Delay | Respond | Garbage


def text(content: str, *, usage: tuple[int, int] | None = None) -> Reply:
    """Assistant text, streamed word by word (whitespace travels with the word after it)."""
    return Reply(content=content, usage=usage)


def _arguments(arguments: dict[str, Any] | str) -> str:
    # A str goes out verbatim, so malformed JSON is just tool_call(name, '{"code": "unterminated').
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def tool_call(
    name: str,
    arguments: dict[str, Any] | str,
    id: str | None = None,
    *,
    content: str | None = None,
    usage: tuple[int, int] | None = None,
) -> Reply:
    """One function call (``finish_reason`` "tool_calls"). Without ``id`` the call gets
    ``call_<request number>_<index>``, deterministic within a server."""
    return Reply(
        content=content, tool_calls=(ToolCall(name, _arguments(arguments), id),), usage=usage
    )


def tool_calls(
    calls: Iterable[
        Reply | tuple[str, dict[str, Any] | str] | tuple[str, dict[str, Any] | str, str]
    ],
    *,
    content: str | None = None,
    usage: tuple[int, int] | None = None,
) -> Reply:
    """Several calls in one reply (parallel tool calls). Each is ``tool_call(...)`` or a tuple
    ``(name, arguments)`` / ``(name, arguments, id)``; ``content`` is leading text."""
    out: list[ToolCall] = []
    for call in calls:
        if isinstance(call, Reply):
            if call.content is not None or len(call.tool_calls) != 1:
                raise ValueError("tool_calls() takes tool_call(...) replies with one call, no text")
            out.extend(call.tool_calls)
        else:
            name, arguments, *rest = call
            out.append(ToolCall(name, _arguments(arguments), rest[0] if rest else None))
    if not out:
        raise ValueError("tool_calls() needs at least one call")
    return Reply(content=content, tool_calls=tuple(out), usage=usage)


def _default_error_type(status: int) -> tuple[str, str | None]:
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


def error(
    status: int,
    message: str,
    type: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    code: str | None = None,
) -> Error:
    """An OpenAI error: ``{"error": {"message", "type", "param", "code"}}`` with ``status``.
    ``type``/``code`` default to what OpenAI sends for that status (429: "requests",
    "rate_limit_exceeded"). ``headers`` e.g. ``{"retry-after": "0.01"}``."""
    default_type, default_code = _default_error_type(status)
    return Error(status, message, type or default_type, code or default_code, dict(headers or {}))


def cut(after_chunks: int, then: Reply, *, stall: float = 0.0) -> Cut:
    """Stream the first ``after_chunks`` SSE chunks of ``then``, wait ``stall`` seconds (or until
    the client leaves), then drop the connection: no further chunks, no ``[DONE]``, no end of the
    chunked body. A non-streamed request is dropped without an answer."""
    return Cut(after_chunks, then, stall)


def garbage(body: str, content_type: str = "text/event-stream") -> Garbage:
    """Answer 200 with ``body`` as is, whatever the request asked for."""
    return Garbage(body, content_type)


def delay(seconds: float, then: Step) -> Delay:
    """Wait ``seconds`` before answering with ``then`` (for client timeouts). Ends early if the
    client goes away or the server stops."""
    return Delay(seconds, then)


def respond(fn: Callable[[dict[str, Any]], Step | Awaitable[Step]]) -> Respond:
    """Compute the step from the request body (sync or async ``fn``), e.g. from the last tool
    result in ``body["messages"]``."""
    return Respond(fn)


# --- wire format ---------------------------------------------------------------------------------


def _words(content: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", content)


def _usage(reply: Reply, body: dict[str, Any]) -> dict[str, int]:
    if reply.usage is not None:
        prompt, completion = reply.usage
    else:
        # About four characters a token, like English text with OpenAI's tokenizers.
        prompt = max(1, len(json.dumps(body.get("messages", []))) // 4)
        produced = len(reply.content or "") + sum(
            len(c.name) + len(c.arguments) for c in reply.tool_calls
        )
        completion = max(1, produced // 4)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(reply: Reply) -> str:
    return "tool_calls" if reply.tool_calls else "stop"


def _call_id(call: ToolCall, number: int, index: int) -> str:
    return call.id or f"call_{number}_{index}"


class _Completion:
    """One answer being produced: ids, the model echoed back, and the body it answers."""

    def __init__(self, reply: Reply, body: dict[str, Any], number: int):
        self.reply = reply
        self.body = body
        self.number = number
        self.id = f"chatcmpl-scripted-{number}"
        self.created = int(time.time())
        self.model = body.get("model", "scripted")

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_scripted",
        }

    def message(self) -> dict[str, Any]:
        """The non-streamed ``chat.completion``."""
        reply = self.reply
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.content,
            "refusal": None,
            "annotations": [],
        }
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": _call_id(call, self.number, i),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for i, call in enumerate(reply.tool_calls)
            ]
        return {
            **self._envelope("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _finish_reason(reply),
                }
            ],
            "usage": _usage(reply, self.body),
            "service_tier": "default",
        }

    def chunks(self) -> list[dict[str, Any]]:
        """The streamed ``chat.completion.chunk`` sequence, as OpenAI sends it: a role chunk,
        content pieces, per call a header (id, name, empty arguments) then argument pieces, a
        finish chunk with an empty delta, and with ``include_usage`` a usage chunk with no
        choices (every earlier chunk then carries ``"usage": null``)."""
        reply = self.reply
        include_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {
                **self._envelope("chat.completion.chunk"),
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        first: dict[str, Any] = {
            "role": "assistant",
            "content": "" if reply.content is not None else None,
            "refusal": None,
        }
        out: list[dict[str, Any]] = []
        pieces = _words(reply.content or "")
        calls = list(enumerate(reply.tool_calls))
        if not pieces and calls:
            # A reply that is only tool calls opens with the first call's header, like OpenAI.
            index, call = calls.pop(0)
            out.append(chunk({**first, "tool_calls": [self._call_header(call, index)]}))
            out.extend(chunk({"tool_calls": [d]}) for d in self._argument_deltas(call, index))
        else:
            out.append(chunk(first))
            out.extend(chunk({"content": piece}) for piece in pieces)
        for index, call in calls:
            out.append(chunk({"tool_calls": [self._call_header(call, index)]}))
            out.extend(chunk({"tool_calls": [d]}) for d in self._argument_deltas(call, index))
        out.append(chunk({}, _finish_reason(reply)))
        if include_usage:
            out.append(
                {
                    **self._envelope("chat.completion.chunk"),
                    "choices": [],
                    "usage": _usage(reply, self.body),
                }
            )
        return out

    def _call_header(self, call: ToolCall, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "id": _call_id(call, self.number, index),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }

    @staticmethod
    def _argument_deltas(call: ToolCall, index: int) -> list[dict[str, Any]]:
        args = call.arguments
        return [
            {"index": index, "function": {"arguments": args[i : i + ARGUMENT_PIECE]}}
            for i in range(0, len(args), ARGUMENT_PIECE)
        ]


def _invalid_history(body: dict[str, Any]) -> tuple[str, str | None] | None:
    """What OpenAI would answer 400 for (message, param), or None: catches an agent that builds
    a history the real service rejects."""
    if not body.get("model"):
        return "you must provide a model parameter", None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return (
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
        )
    if body.get("stream_options") is not None and not body.get("stream"):
        return "The 'stream_options' parameter is only allowed when 'stream' is enabled.", None
    pending: list[str] = []

    def unanswered() -> tuple[str, str]:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(pending)}",
            "messages",
        )

    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(message["tool_call_id"])
            continue
        if pending:
            return unanswered()
        if role == "assistant":
            pending = [call.get("id") for call in message.get("tool_calls") or []]
        elif role not in ("system", "developer", "user"):
            return (
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                "'function', 'tool', and 'developer'.",
                f"messages[{i}].role",
            )
    if pending:
        return unanswered()
    return None


# --- server --------------------------------------------------------------------------------------


class _Handler(tornado.web.RequestHandler):
    def initialize(self, llm: ScriptedLLM) -> None:
        self.llm = llm
        self.gone = asyncio.Event()

    def prepare(self) -> None:
        # stop() waits for running handlers, so no handler task outlives the event loop.
        task = asyncio.current_task()
        if task is not None:
            self.llm._handlers.add(task)
            task.add_done_callback(self.llm._handlers.discard)

    def on_connection_close(self) -> None:
        self.gone.set()

    def send_error_body(
        self,
        status: int,
        message: str,
        type: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.set_status(status)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A failing ``respond`` function (or a bad step) is a test bug: say so, and keep the
        client from retrying into the next steps."""
        message = f"ScriptedLLM: {self._reason}"
        if "exc_info" in kwargs:
            message = f"ScriptedLLM: the step failed: {kwargs['exc_info'][1]!r}"
        self.set_header("Content-Type", "application/json")
        self.set_header("x-should-retry", "false")
        error = {"message": message, "type": "scripted_llm_error", "param": None, "code": None}
        self.finish(json.dumps({"error": error}))

    async def pause(self, seconds: float) -> bool:
        """Sleep; False if the client left (or the server stopped) meanwhile."""
        try:
            await asyncio.wait_for(self.gone.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def send_chunks(self, chunks: Iterable[dict[str, Any] | str]) -> bool:
        """Write SSE events one flush each; False if the client left."""
        try:
            for chunk in chunks:
                data = chunk if isinstance(chunk, str) else json.dumps(chunk)
                self.write(f"data: {data}\n\n")
                await self.flush()
        except tornado.iostream.StreamClosedError:
            return False
        return True

    def drop(self) -> None:
        """Close the TCP connection mid-answer, as a crashed proxy or server would."""
        self.detach().close()


class _ModelsHandler(_Handler):
    def get(self, model: str | None = None) -> None:
        if not self.llm._authorized(self.request.headers.get("Authorization")):
            self.send_error_body(
                **self.llm._unauthorized(self.request.headers.get("Authorization"))
            )
            return
        cards = [
            {"id": name, "object": "model", "created": 0, "owned_by": "kernelagent-tests"}
            for name in self.llm.models
        ]
        if model is None:
            self.finish({"object": "list", "data": cards})
            return
        for card in cards:
            if card["id"] == model:
                self.finish(card)
                return
        self.send_error_body(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )


class _ChatHandler(_Handler):
    async def post(self) -> None:
        llm = self.llm
        authorization = self.request.headers.get("Authorization")
        try:
            body = json.loads(self.request.body)
        except ValueError as e:
            self.send_error_body(
                400,
                f"We could not parse the JSON body of your request. ({e})",
                "invalid_request_error",
            )
            return
        if not isinstance(body, dict):
            self.send_error_body(
                400, "The request body must be a JSON object.", "invalid_request_error"
            )
            return
        llm.requests.append(body)
        llm.authorizations.append(authorization)
        number = len(llm.requests)
        if not llm._authorized(authorization):
            self.send_error_body(**llm._unauthorized(authorization))
            return
        invalid = _invalid_history(body)
        if invalid is not None:
            message, param = invalid
            self.send_error_body(400, message, "invalid_request_error", param=param)
            return
        if not llm._steps:
            self.send_error_body(
                500,
                f"ScriptedLLM: script exhausted: request {number} arrived after all "
                f"{llm._consumed} scripted step(s) were used. Its last message: "
                f"{json.dumps(body['messages'][-1])[:500]}",
                "scripted_llm_error",
                "script_exhausted",
                headers={"x-should-retry": "false"},
            )
            return
        llm._consumed += 1
        await self.answer(llm._steps.pop(0), body, number)

    async def answer(self, step: Step, body: dict[str, Any], number: int) -> None:
        streamed = bool(body.get("stream"))
        if isinstance(step, Respond):
            result = step.fn(body)
            if inspect.isawaitable(result):
                result = await result
            await self.answer(result, body, number)
        elif isinstance(step, Delay):
            if await self.pause(step.seconds):
                await self.answer(step.then, body, number)
        elif isinstance(step, Error):
            self.send_error_body(
                step.status, step.message, step.type, step.code, headers=step.headers
            )
        elif isinstance(step, Reply):
            completion = _Completion(step, body, number)
            if not streamed:
                self.finish(completion.message())
                return
            self.set_event_stream_headers()
            await self.send_chunks([*completion.chunks(), "[DONE]"])
        elif isinstance(step, Garbage):
            self.set_header("Content-Type", step.content_type)
            self.finish(step.body)
        elif isinstance(step, Cut):
            if streamed:
                self.set_event_stream_headers()
                chunks = _Completion(step.then, body, number).chunks()[: step.after_chunks]
                if not await self.send_chunks(chunks):
                    return
                if step.stall and not await self.pause(step.stall):
                    return
            self.drop()
        else:
            raise TypeError(f"not a ScriptedLLM step: {step!r}")

    def set_event_stream_headers(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Debug, not tornado's default warning/error: scripted 429s and 500s are not server faults.
    request = handler.request
    log.debug("%d %s %s", handler.get_status(), request.method, request.uri)


class ScriptedLLM:
    """The server. ``requests`` holds every chat completion body received, in order (including
    ones answered 400/401/500, which consume no step); ``authorizations`` the matching
    ``Authorization`` headers (None when absent)."""

    def __init__(self, api_key: str | None = None, models: Sequence[str] = ("scripted",)):
        self.api_key = api_key
        self.models = list(models)
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.port = 0
        self._steps: list[Step] = []
        self._consumed = 0
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: tornado.httpserver.HTTPServer | None = None

    @classmethod
    async def start(
        cls,
        *,
        api_key: str | None = None,
        models: Sequence[str] = ("scripted",),
        port: int = 0,
    ) -> ScriptedLLM:
        """Listen on 127.0.0.1 (a free port unless ``port``) in the running event loop."""
        llm = cls(api_key, models)
        app = tornado.web.Application(
            [
                (r"/v1/chat/completions", _ChatHandler, {"llm": llm}),
                (r"/v1/models", _ModelsHandler, {"llm": llm}),
                (r"/v1/models/(.+)", _ModelsHandler, {"llm": llm}),
            ],
            log_function=_log_request,
        )
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
        llm.port = sockets[0].getsockname()[1]
        llm._server = tornado.httpserver.HTTPServer(app)
        llm._server.add_sockets(sockets)
        return llm

    async def stop(self) -> None:
        """Close the listener and every connection, and wait for running handlers (a delay or a
        stall ends at once)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.stop()
        await server.close_all_connections()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *steps: Step) -> None:
        """Append steps; each chat completion request consumes the next one."""
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"not a ScriptedLLM step: {step!r}")
        self._steps.extend(steps)

    @property
    def pending(self) -> int:
        """Steps not consumed yet (0 at the end of a test that used its whole script)."""
        return len(self._steps)

    def _authorized(self, authorization: str | None) -> bool:
        return self.api_key is None or authorization == f"Bearer {self.api_key}"

    def _unauthorized(self, authorization: str | None) -> dict[str, Any]:
        if not authorization:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return {"status": 401, "message": message, "type": "invalid_request_error"}
        key = authorization.removeprefix("Bearer ")
        shown = key[:3] + "*" * 10 + key[-4:] if len(key) > 8 else "*" * len(key)
        return {
            "status": 401,
            "message": f"Incorrect API key provided: {shown}.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }


async def _main(argv: list[str]) -> None:
    """``python tests/llm_server.py [PORT] [REPLY ...]``: each REPLY is a text step; without
    replies every request is answered with an echo of its last message."""
    port = int(argv.pop(0)) if argv and argv[0].isdigit() else 0
    llm = await ScriptedLLM.start(port=port)

    def echo(body: dict[str, Any]) -> Step:
        llm.script(respond(echo))
        return text(f"echo: {body['messages'][-1].get('content')}")

    llm.script(*(text(reply) for reply in argv) if argv else [respond(echo)])
    print(llm.base_url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await llm.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(sys.argv[1:]))
