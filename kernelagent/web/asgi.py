"""AsgiHandler: one route of the tornado server answered by an ASGI application.

The MCP SDK's Streamable HTTP transport is an ASGI application; tornado serves it here with its
body streamed as the application sends it (server-sent events included). The request body is
read whole first (tornado's body limit applies); a client that goes away is told to the
application as ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tornado import web
from tornado.iostream import StreamClosedError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class AsgiHandler(web.RequestHandler):
    app: Asgi
    extra_scope: Callable[[web.RequestHandler], Awaitable[dict[str, Any]]] | None = None

    def initialize(self, app: Asgi, extra_scope: Any = None) -> None:
        self.app = app
        self.extra_scope = extra_scope
        self._gone = asyncio.Event()

    def check_xsrf_cookie(self) -> None:
        return None  # bearer tokens only: no ambient credential a forged request could ride on

    def on_connection_close(self) -> None:
        self._gone.set()

    async def get(self) -> None:
        await self._serve()

    async def post(self) -> None:
        await self._serve()

    async def delete(self) -> None:
        await self._serve()

    async def _serve(self) -> None:
        request = self.request
        host, _, port = (request.host or "").rpartition(":")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.version.removeprefix("HTTP/"),
            "method": request.method,
            "scheme": request.protocol,
            "path": request.path,
            "raw_path": request.path.encode(),
            "query_string": request.query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.get_all()],
            "client": (request.remote_ip, 0),
            "server": (host or request.host, int(port) if port.isdigit() else 0),
        }
        if self.extra_scope is not None:
            scope.update(await self.extra_scope(self))
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body or b"", "more_body": False}
            await self._gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.set_status(message["status"])
                self.clear_header("Content-Type")
                for name, value in message.get("headers", []):
                    self.add_header(name.decode("latin-1"), value.decode("latin-1"))
            elif message["type"] == "http.response.body":
                self.write(message.get("body", b""))
                try:
                    if message.get("more_body", False):
                        await self.flush()
                except StreamClosedError:
                    self._gone.set()

        await self.app(scope, receive, send)
        if not self._finished:
            self.finish()
