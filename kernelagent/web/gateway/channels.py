"""WebSocket ``/api/kernels/{id}/channels``: Jupyter messages between a client and a session kernel.

Speaks the legacy JSON framing, and the binary ``v1.kernel.websocket.jupyter.org`` subprotocol
when the client offers it (``wire.py``). Malformed frames are dropped with a warning; the
connection and the kernel survive. TCP_NODELAY is set: with Nagle on, every small reply waits for
a delayed ACK (~40 ms per round trip). A socket for a kernel that another server process holds
is piped to that process (``web/forward.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tornado import web, websocket

from kernelagent.domain import KernelMessage, User
from kernelagent.errors import KernelAgentError
from kernelagent.services.auth import AuthService
from kernelagent.services.bridge import GatewayChannel, GatewayService
from kernelagent.web import forward
from kernelagent.web.gateway import wire

log = logging.getLogger(__name__)


class ChannelsHandler(websocket.WebSocketHandler):
    """One client connection; the routing lives in ``services.bridge.GatewayChannel``."""

    def initialize(
        self,
        auth: AuthService,
        gateway: GatewayService,
        holder: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.auth = auth
        self.gateway = gateway
        self.holder = holder
        self.channel: GatewayChannel | None = None
        self.protocol: str | None = None
        # the same socket at the process holding the kernel, when another process holds it
        self.upstream: websocket.WebSocketClientConnection | None = None
        self.piping: asyncio.Task[None] | None = None
        self.gone = False  # the client closed the socket

    async def get(self, kernel_id: str) -> None:
        user = await self._authenticate()
        if user is None:
            raise web.HTTPError(401, "a valid token is required")
        if self.holder is not None and not forward.forwarded(self.request):
            base = await self.holder(kernel_id)
            if base:
                offered = self.request.headers.get("Sec-WebSocket-Protocol", "")
                protocols = [p.strip() for p in offered.split(",") if p.strip()]
                self.upstream = await forward.open_upstream(self, base, protocols)
                await super().get(kernel_id)
                return
        try:
            # before the upgrade: once the client sees the socket open, the channel is ready
            self.session, self.kernel = await self.gateway.ensure_live(user, kernel_id)
        except KernelAgentError as e:
            raise web.HTTPError(e.status, str(e)) from None
        self.user = user
        await super().get(kernel_id)

    async def _authenticate(self) -> User | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in {"token", "bearer"}:
            token = self.get_query_argument("token", "")
        return await self.auth.authenticate(token.strip())

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        if self.upstream is not None:
            return self.upstream.selected_subprotocol
        self.protocol = wire.negotiate(subprotocols)
        return self.protocol

    def check_origin(self, origin: str) -> bool:
        return True  # token auth, not cookies: a cross-origin page cannot present the token

    async def open(self, kernel_id: str) -> None:  # type: ignore[override]
        self.set_nodelay(True)
        if self.upstream is not None:
            self.piping = asyncio.create_task(forward.pipe_down(self.upstream, self))
            return
        try:
            channel = await self.gateway.open_channel(
                self.session, self.kernel, self._send, self.get_query_argument("session_id", None)
            )
        except KernelAgentError as e:
            self.close(4004 if e.status == 404 else 1011, str(e))
            return
        if self.gone:  # the client left while its channel connected: on_close found none
            self.gateway.close_later(channel)
            return
        self.channel = channel

    async def on_message(self, message: str | bytes) -> None:
        if self.upstream is not None:
            try:
                await self.upstream.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                self.close(1011, "the server process holding the kernel went away")
            return
        if self.channel is None:
            return
        try:
            if self.protocol:
                if isinstance(message, str):
                    raise wire.FrameError("text frame on the binary v1 protocol")
                msg = wire.v1_to_msg(message)
            else:
                msg = wire.decode_legacy(message)
        except wire.FrameError as e:
            log.warning("dropped a malformed frame on kernel %s: %s", self.channel.kernel_id, e)
            return
        channel = msg.pop("channel", None)
        if channel not in wire.CHANNELS:
            log.warning("dropped a message for channel %r", channel)
            return
        await self.channel.receive(channel, msg)

    async def _send(self, channel: str, msg: KernelMessage) -> None:
        if msg.raw:  # the kernel's own JSON parts, passed on as they came
            parts = [*msg.raw, *msg.buffers]
            if self.protocol:
                await self.write_message(wire.encode_v1(channel, parts), binary=True)
            else:
                frame = wire.encode_legacy_parts(channel, msg.msg_id, msg.msg_type, parts)
                await self.write_message(frame, binary=bool(msg.buffers))
            return
        buffers = list(msg.buffers)
        out = {
            "header": _json_dates(msg.header),
            "parent_header": _json_dates(msg.parent_header),
            "metadata": msg.metadata,
            "content": msg.content,
            "channel": channel,
            "msg_id": msg.msg_id,
            "msg_type": msg.msg_type,
        }
        if self.protocol:
            frame: str | bytes = wire.msg_to_v1(out, buffers)
        else:
            frame = wire.encode_legacy(out, buffers)
        await self.write_message(frame, binary=isinstance(frame, bytes))

    def on_close(self) -> None:
        self.gone = True
        if self.upstream is not None:
            self.upstream.close()
        if self.channel is not None:
            channel, self.channel = self.channel, None
            self.gateway.close_later(channel)


def _json_dates(header: dict[str, Any]) -> dict[str, Any]:
    date = header.get("date")
    if isinstance(date, dt.datetime):
        header = {**header, "date": date.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")}
    return header
