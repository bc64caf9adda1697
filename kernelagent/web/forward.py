"""Requests for a kernel that another server process holds, passed on to that process.

With several replicas behind one URL and kernels local to the process that started them, a
request that needs a session's kernel (a cell, its files, a kernel action, the channels
WebSocket) may reach a replica that does not hold it. That replica sends the request on, as it
came (same method, path, query, body and credentials), to the holder's advertised URL and
streams the answer back; a WebSocket is piped frame by frame. The client sees no difference.

A forwarded request carries ``X-Kernelagent-Forwarded``; it is never forwarded again (if the
kernel moved meanwhile, the receiving process answers for itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tornado import httputil, web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from kernelagent.errors import HolderUnreachable

log = logging.getLogger(__name__)

FORWARDED = "X-Kernelagent-Forwarded"
# hop-by-hop headers (RFC 9110 §7.6.1), and those the relay sets itself
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
WS_HEADERS = {"authorization", "cookie", "origin", "user-agent"}
TIMEOUT = 24 * 3600.0  # a forwarded cell may run as long as its own timeout allows
MAX_ANSWER = 1 << 40  # the answer streams through: a download of any size


def forwarded(request: httputil.HTTPServerRequest) -> bool:
    return FORWARDED in request.headers


async def forward(handler: web.RequestHandler, base: str) -> None:
    """Answer ``handler``'s request with what the process at ``base`` answers to it."""
    request = handler.request
    headers = httputil.HTTPHeaders()
    for name, value in request.headers.get_all():
        if name.lower() not in HOP_BY_HOP:
            headers.add(name, value)
    headers[FORWARDED] = "1"
    relay = _Relay(handler)
    has_body = request.method in ("POST", "PUT", "PATCH")
    upstream = HTTPRequest(
        base + request.uri,
        method=request.method,
        headers=headers,
        body=request.body if has_body else None,
        allow_nonstandard_methods=True,
        follow_redirects=False,
        decompress_response=False,
        request_timeout=TIMEOUT,
        header_callback=relay.header,
        streaming_callback=relay.chunk,
    )
    client = AsyncHTTPClient(force_instance=True, max_body_size=MAX_ANSWER)
    try:
        await client.fetch(upstream, raise_error=False)
    except (OSError, HTTPClientError) as e:  # the holder is unreachable: it will lose its lease
        if not relay.started:
            raise HolderUnreachable(
                f"the server process holding this session's kernel did not answer: {e}"
            ) from None
        log.warning("lost the forwarded answer of %s %s: %s", request.method, request.uri, e)
    finally:
        client.close()
    await relay.done()


class _Relay:
    """Writes the holder's status, headers and body to the client as they arrive."""

    def __init__(self, handler: web.RequestHandler):
        self.handler = handler
        self.started = False
        self.writes: list[asyncio.Future[None]] = []

    def header(self, line: str) -> None:
        line = line.strip()
        if line.startswith("HTTP/"):
            status = httputil.parse_response_start_line(line).code
            if status == 100:
                return
            self.handler.clear()
            self.handler.set_status(status)
            self.started = True
        elif ":" in line:
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if name.lower() == "set-cookie":
                self.handler.add_header(name, value)
            elif name.lower() not in HOP_BY_HOP:
                self.handler.set_header(name, value)

    def chunk(self, data: bytes) -> None:
        self.handler.write(data)
        self.writes.append(self.handler.flush())

    async def done(self) -> None:
        for write in self.writes:
            with contextlib.suppress(Exception):
                await write
        self.handler.finish()


async def open_upstream(
    handler: websocket.WebSocketHandler, base: str, subprotocols: list[str]
) -> websocket.WebSocketClientConnection:
    """A WebSocket to the same path at ``base``, with the client's credentials and offered
    subprotocols."""
    request = handler.request
    headers = {k: v for k, v in request.headers.get_all() if k.lower() in WS_HEADERS}
    headers[FORWARDED] = "1"
    url = "ws" + base.removeprefix("http") + request.uri
    try:
        return await websocket.websocket_connect(
            HTTPRequest(url, headers=headers, request_timeout=30),
            subprotocols=subprotocols or None,
        )
    except (OSError, HTTPClientError) as e:
        code = e.code if isinstance(e, HTTPClientError) else 503
        raise web.HTTPError(code, f"the server process holding this kernel: {e}") from None


async def pipe_down(
    upstream: websocket.WebSocketClientConnection, handler: websocket.WebSocketHandler
) -> None:
    """The holder's frames to the client, until either side closes."""
    while (message := await upstream.read_message()) is not None:
        try:
            await handler.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            break
    handler.close(upstream.close_code or 1000, upstream.close_reason or "")
