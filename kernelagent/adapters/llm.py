"""The LLM: one streamed chat completion with tools through the ``openai`` client, made reliable.

``OpenAIChat.complete()`` streams a reply, calling ``on_text`` with each piece of text, and returns
the assembled ``Reply`` (text, tool calls with their raw argument strings, usage). Faults become
``LLMError`` with a message a person can act on:

* 401/403 → names ``OPENAI_API_KEY``; 404 → names the model and ``KERNELAGENT_MODEL``; other 4xx →
  the endpoint's own message. Not retried.
* 429, 5xx, timeouts, connection errors, a stream cut before its end and a 200 whose body is
  not a chat completion stream (a proxy's page, broken JSON) → retried ``retries``
  times with exponential backoff and full jitter (honouring ``Retry-After``), then ``LLMError``.
  ``on_retry`` tells the caller, which discards the partial text it streamed.

The client's own retries are off (``max_retries=0``): one policy, including for cut streams,
which the client does not retry.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import openai

from kernelagent.domain import Reply, ToolCall, Usage
from kernelagent.errors import LLMError

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5  # seconds; attempt n waits up to BACKOFF_BASE * 2**n (full jitter)
BACKOFF_CAP = 20.0
OnText = Callable[[str], Awaitable[None]]
OnRetry = Callable[[int, str], Awaitable[None]]


class _CutStream(Exception):
    """The stream closed cleanly but without a finish reason: a truncated reply."""


class _Garbled(Exception):
    """The endpoint answered 200 with something that is not a chat completion stream."""


class OpenAIChat:
    """Chat completions against any OpenAI-compatible endpoint."""

    def __init__(self, api_key: str, base_url: str, timeout: float, retries: int):
        self.retries = retries
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "unused",  # local servers (Ollama, vLLM) take any key
            base_url=base_url or None,
            timeout=timeout,
            max_retries=0,
        )

    async def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: OnText,
        on_retry: OnRetry,
    ) -> Reply:
        attempt = 0
        while True:
            try:
                return await self._stream(model, messages, tools, on_text)
            except openai.AuthenticationError as e:
                raise LLMError(
                    f"the LLM endpoint refused the API key ({e.status_code}): "
                    "check OPENAI_API_KEY (and OPENAI_BASE_URL)"
                ) from e
            except openai.PermissionDeniedError as e:
                raise LLMError(f"the LLM endpoint denied access ({e.status_code}): {e}") from e
            except openai.NotFoundError as e:
                raise LLMError(
                    f"the LLM endpoint does not know model {model!r} (404): "
                    "set KERNELAGENT_MODEL or the message's model to one it serves"
                ) from e
            except (openai.RateLimitError, openai.InternalServerError) as e:
                failure, wait = f"{e.status_code} {_message(e)}", _retry_after(e.response)
            except openai.APITimeoutError as e:
                failure, wait = f"the request timed out ({e})", None
            except openai.APIStatusError as e:
                if e.status_code < 500:
                    raise LLMError(f"the LLM endpoint refused the request: {_message(e)}") from e
                failure, wait = f"{e.status_code} {_message(e)}", _retry_after(e.response)
            except (openai.APIConnectionError, openai.APIError, _CutStream) as e:
                failure, wait = f"the connection failed or the reply was cut: {e}", None
            except _Garbled as e:  # a proxy's page, a broken stream: may pass, like a 5xx
                failure, wait = str(e), None
            if attempt >= self.retries:
                raise LLMError(
                    f"the LLM endpoint failed {attempt + 1} times; last: {failure}"
                ) from None
            attempt += 1
            delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
            if wait is not None:
                delay = max(delay, min(wait, BACKOFF_CAP))
            log.warning("LLM request failed (%s); retry %d in %.1f s", failure, attempt, delay)
            await on_retry(attempt, failure)
            await asyncio.sleep(delay)

    async def _stream(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: OnText,
    ) -> Reply:
        stream = await self.client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage = Usage()
        finish: str | None = None
        async with stream:
            chunks = aiter(stream)
            while True:
                try:
                    chunk = await anext(chunks)
                    pieces = [(c.delta.content, c.delta.tool_calls or (), c.finish_reason)
                              for c in chunk.choices]  # fmt: skip
                    if chunk.usage is not None:
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                except StopAsyncIteration:
                    break
                except (ValueError, TypeError, AttributeError, KeyError) as e:
                    raise _Garbled(
                        f"the reply is not a chat completion stream ({type(e).__name__}: {e})"
                    ) from e
                for content, tool_pieces, finish_reason in pieces:
                    if content:
                        text.append(content)
                        await on_text(content)
                    for piece in tool_pieces:
                        call = calls.setdefault(piece.index, {"id": "", "name": "", "args": ""})
                        call["id"] = piece.id or call["id"]
                        if piece.function is not None:
                            call["name"] += piece.function.name or ""
                            call["args"] += piece.function.arguments or ""
                    finish = finish_reason or finish
        if finish is None:
            raise _CutStream("the stream ended before the reply did")
        tool_calls = [
            ToolCall(c["id"] or f"call_{i}", c["name"], c["args"]) for i, c in sorted(calls.items())
        ]
        return Reply("".join(text), tool_calls, usage, finish)

    async def check(self, model: str) -> str:
        """Whether the endpoint answers with this key and serves ``model`` (for ``doctor``)."""
        try:
            models = [m.id async for m in await self.client.models.list()]
        except openai.AuthenticationError as e:
            raise LLMError(
                f"the endpoint refused the API key ({e.status_code}): check OPENAI_API_KEY"
            ) from e
        except openai.APIConnectionError as e:
            raise LLMError(f"cannot reach the endpoint ({e}): check OPENAI_BASE_URL") from e
        except openai.APIError as e:
            raise LLMError(f"the endpoint failed: {e}") from e
        if model not in models:
            listed = ", ".join(models[:10]) + (" …" if len(models) > 10 else "")
            raise LLMError(
                f"the endpoint does not list model {model!r} (KERNELAGENT_MODEL); it has: {listed}"
            )
        return f"{len(models)} models, {model!r} among them"

    async def close(self) -> None:
        await self.client.close()


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error.message)


def _retry_after(response: Any) -> float | None:
    if response is None:
        return None
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
