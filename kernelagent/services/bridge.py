"""The Kernel Gateway surface: session kernels as Jupyter kernels, and the WebSocket ⇄ kernel link.

A gateway kernel id *is* the session id: stable for the session's life, even when the session gets
a new kernel process. ``POST /api/kernels`` makes a new session (its kernel from the warm pool).

Each WebSocket connection (``GatewayChannel``) gets its own ZMQ sockets to the kernel, as in
jupyter_server, so replies go to the client that asked and every client sees all of iopub. The one
exception: a recorded ``execute_request`` goes through ``ExecutionService`` (same lock, same
record, role ``gateway``) with the client's own message, so its iopub carries the client's msg_id;
the reply and any ``input_request`` come back through the channel. Silent executions and every
other request (complete, inspect, history, comm, kernel_info, …) go to the kernel directly.

A client that names itself (``?session_id=``, as JupyterLab does) and drops its connection does
not lose what the kernel said meanwhile: its channel stays subscribed to iopub and buffers (also
the replies of its executions) for ``RECONNECT_WINDOW`` seconds; the same client reconnecting gets
the buffer first, then the live stream, without duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_client.session import Session as JupyterSession

from kernelagent.domain import Session, User
from kernelagent.errors import NotFound
from kernelagent.services.execution import ClientRequest, ExecutionService
from kernelagent.services.sessions import SessionService

log = logging.getLogger(__name__)

GATEWAY_TIMEOUT = 24 * 3600.0  # a person's cell in JupyterLab runs until they interrupt it
RECONNECT_WINDOW = 300.0  # seconds a disconnected client's messages are kept for it
RECONNECT_BUFFER = 10_000  # messages kept per disconnected client (the oldest go first)
SendToClient = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class KernelModel:
    """What ``/api/kernels`` answers (jupyter_server's kernel model)."""

    id: str
    name: str
    last_activity: str
    execution_state: str
    connections: int

    def json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def jupyter_time(session: Session) -> str:
    """``%Y-%m-%dT%H:%M:%S.%fZ``, the only format GatewayClient parses."""
    return session.updated_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class GatewayService:
    """Kernel CRUD over sessions, and the registry of open channels."""

    def __init__(self, sessions: SessionService, execution: ExecutionService, kernels: Any):
        self.sessions = sessions
        self.execution = execution
        self.kernels = kernels  # adapters.kernels.LocalKernels (manager access for sockets)
        self.kernel_name = kernels.kernel_name
        self.channels: dict[str, set[GatewayChannel]] = {}
        self.detached: dict[tuple[str, str], GatewayChannel] = {}  # (session, client) → buffering
        self._restarting: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()

    async def model(self, session: Session) -> KernelModel:
        if session.id in self._restarting:
            state = "restarting"
        elif session.id in self.execution.running:
            state = "busy"
        elif session.status == "dead" or not session.kernel_id:
            state = "dead"
        else:
            state = "idle"
        return KernelModel(
            id=session.id,
            name=self.kernel_name,
            last_activity=jupyter_time(session),
            execution_state=state,
            connections=len(self.channels.get(session.id, ())),
        )

    async def list(self, user: User) -> list[KernelModel]:
        return [await self.model(s) for s in await self.sessions.list(user)]

    async def create(self, user: User, name: str | None) -> KernelModel:
        if name and name not in {self.kernel_name, "python3"}:
            raise NotFound(f"no kernelspec named {name!r}")
        return await self.model(await self.sessions.create(user, "Gateway kernel"))

    async def get(self, user: User, kernel_id: str) -> KernelModel:
        return await self.model(await self.sessions.get(user, kernel_id))

    async def ensure_live(self, user: User, kernel_id: str) -> tuple[Session, str]:
        """The session and its kernel, brought back (state rebuilt) if it was gone: done before
        a client's WebSocket is accepted, so the channel is ready when the client sees it open."""
        session = await self.sessions.get(user, kernel_id)
        return session, await self.execution.live_kernel(session.id)

    async def interrupt(self, user: User, kernel_id: str) -> None:
        session = await self.sessions.get(user, kernel_id)
        if session.kernel_id:
            with contextlib.suppress(KeyError):  # no kernel: nothing runs
                await self.kernels.interrupt(session.kernel_id)

    async def restart(self, user: User, kernel_id: str) -> KernelModel:
        """Restart the session's kernel in place; open channels keep working across it."""
        session = await self.sessions.get(user, kernel_id)
        kernel = await self.execution.live_kernel(session.id)
        session = await self.sessions.get(user, kernel_id)
        self._restarting.add(session.id)
        try:
            await self.broadcast_status(session.id, "restarting")
            await self.execution.restart(session, kernel)
        finally:
            self._restarting.discard(session.id)
        return await self.model(await self.sessions.get(user, kernel_id))

    async def shutdown(self, user: User, kernel_id: str) -> None:
        """Stop the session's kernel; the session stays and gets a fresh kernel on its next cell."""
        session = await self.sessions.get(user, kernel_id)
        await self.execution.stop_kernel(session)
        for channel in list(self.channels.get(session.id, ())):
            await channel.close()
        for key, channel in list(self.detached.items()):
            if key[0] == session.id:
                await channel.close()

    async def broadcast_status(self, session_id: str, state: str) -> None:
        detached = [c for (sid, _), c in self.detached.items() if sid == session_id]
        for channel in [*self.channels.get(session_id, ()), *detached]:
            await channel.send_status(state)

    async def open_channel(
        self, session: Session, kernel: str, send: SendToClient, client_session: str | None
    ) -> GatewayChannel:
        """Counted among the kernel's connections at once; then its sockets connect."""
        channel = GatewayChannel(self, session, kernel, send, client_session)
        earlier = self.detached.pop((session.id, client_session), None) if client_session else None
        self.channels.setdefault(session.id, set()).add(channel)
        try:
            await channel.open(earlier)
        except BaseException:
            await channel.close()
            raise
        return channel

    def close_later(self, channel: GatewayChannel) -> None:
        """A channel's WebSocket went away (called from a sync callback): buffer for the client
        to come back if it named itself and the kernel is the same, else close."""
        self._remove(channel)
        if channel.client_session and not channel.is_closed:
            key = (channel.session.id, channel.client_session)
            replaced = self.detached.pop(key, None)
            if replaced is not None:
                self._spawn(replaced.close(), "gateway-close")
            self.detached[key] = channel
            self._spawn(channel.detach(), "gateway-detach")
        else:
            self._spawn(channel.close(), "gateway-close")

    def close_expired(self, channel: GatewayChannel) -> None:
        """The client did not come back within the window: drop its buffer."""
        log.info("dropping the buffer of gateway client %s", channel.client_session)
        self.closed(channel)
        self._spawn(channel.close(), "gateway-close")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        for group in list(self.channels.values()):
            for channel in list(group):
                await channel.close()
        for channel in list(self.detached.values()):
            await channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _remove(self, channel: GatewayChannel) -> None:
        group = self.channels.get(channel.session.id)
        if group is not None:
            group.discard(channel)
            if not group:
                del self.channels[channel.session.id]

    def closed(self, channel: GatewayChannel) -> None:
        self._remove(channel)
        key = (channel.session.id, channel.client_session or "")
        if self.detached.get(key) is channel:
            del self.detached[key]


class GatewayChannel:
    """One WebSocket connection's view of a kernel: its own ZMQ sockets, reader tasks, routing."""

    SOCKETS = ("shell", "control", "stdin", "iopub")

    def __init__(
        self,
        service: GatewayService,
        session: Session,
        kernel_id: str,
        send: SendToClient,
        client_session: str | None,
    ):
        self.service = service
        self.session = session
        self.kernel_id = kernel_id
        self.send = send
        self.client_session = client_session
        self.manager = service.kernels.manager(kernel_id)
        # A Session of its own: Session.deserialize rejects a signature it has seen before, and
        # every channel of this kernel sees the same iopub messages.
        km_session = self.manager.session
        self.jupyter_session = JupyterSession(
            key=km_session.key,
            signature_scheme=km_session.signature_scheme,
            username=km_session.username,
        )
        self.sockets: dict[str, Any] = {}  # channel → ZMQStream (what connect_* returns)
        self.inbox: asyncio.Queue[tuple[str, list[bytes]]] = asyncio.Queue()
        self.readers: list[asyncio.Task[None]] = []
        self.pending: set[asyncio.Task[Any]] = set()
        self.is_closed = False
        # while the client is away: what it would have been sent (None when connected)
        self.buffer: collections.deque[tuple[str, dict[str, Any]]] | None = None
        self.replayed: set[str] = set()  # msg ids sent from an earlier channel's buffer
        self.expiry: asyncio.TimerHandle | None = None

    async def open(self, earlier: GatewayChannel | None = None) -> None:
        """Connect the sockets; when the same client had a channel before, send what it buffered
        first (the new iopub socket is subscribed before the old one stops: no gap)."""
        m = self.manager
        self.sockets = {
            "shell": m.connect_shell(),
            "control": m.connect_control(),
            "stdin": m.connect_stdin(),
            "iopub": m.connect_iopub(),
        }
        for name, stream in self.sockets.items():
            stream.on_recv(lambda frames, name=name: self.inbox.put_nowait((name, frames)))
        if earlier is not None:
            for channel, msg in await earlier.take_buffer():
                self.replayed.add(msg["header"].get("msg_id", ""))
                await self._send(channel, msg)
            # replies to its executions still running now come here
            earlier.buffer, earlier.send = None, self._send
        self.readers.append(
            asyncio.create_task(self._forward(), name=f"gateway-forward-{self.kernel_id}")
        )

    async def _forward(self) -> None:
        """Kernel → client, in the order the kernel's messages arrived."""
        while True:
            channel, frames = await self.inbox.get()
            msg = self._read(channel, frames)
            if msg is None:
                continue
            if self.replayed and msg["header"].get("msg_id") in self.replayed:
                self.replayed.discard(msg["header"]["msg_id"])
                continue
            await self._send(channel, msg)

    def _read(self, channel: str, frames: list[bytes]) -> dict[str, Any] | None:
        try:
            _, parts = self.jupyter_session.feed_identities(frames)
            return self.jupyter_session.deserialize(parts)  # type: ignore[no-any-return]
        except Exception as e:  # noqa: BLE001 - a bad kernel frame is dropped, not fatal
            log.warning("dropped an unreadable %s message from %s: %s", channel, self.kernel_id, e)
            return None

    async def _send(self, channel: str, msg: dict[str, Any]) -> None:
        if self.buffer is not None:
            self.buffer.append((channel, msg))
            return
        try:
            await self.send(channel, msg)
        except Exception:  # noqa: BLE001 - the client went away; close() cleans up
            log.debug("could not deliver a %s message to a closed channel", channel)

    async def detach(self) -> None:
        """The client went away: keep listening to iopub, buffer, and close after the window."""
        self.buffer = collections.deque(maxlen=RECONNECT_BUFFER)
        for name in ("shell", "control", "stdin"):
            self.sockets.pop(name).close(linger=0)
        self.expiry = asyncio.get_running_loop().call_later(
            RECONNECT_WINDOW, self.service.close_expired, self
        )

    async def take_buffer(self) -> list[tuple[str, dict[str, Any]]]:
        """Stop buffering and hand over everything kept, including what is still queued."""
        buffered = list(self.buffer or ())
        await self.close()
        while not self.inbox.empty():
            channel, frames = self.inbox.get_nowait()
            msg = self._read(channel, frames)
            if msg is not None:
                buffered.append((channel, msg))
        return buffered

    async def receive(self, channel: str, msg: dict[str, Any]) -> None:
        """A message from the client: route it to the execution path or straight to the kernel."""
        msg_type = msg["header"].get("msg_type")
        content = msg.get("content") or {}
        if channel == "shell" and msg_type == "execute_request" and not content.get("silent"):
            request = ClientRequest(msg, self._send)
            task = asyncio.create_task(
                self.service.execution.execute(
                    self.session.id,
                    content.get("code", ""),
                    role="gateway",
                    timeout=GATEWAY_TIMEOUT,
                    request=request,
                ),
                name=f"gateway-execute-{msg['header'].get('msg_id')}",
            )
            self.pending.add(task)
            task.add_done_callback(self._finished)
            return
        if channel == "stdin" and self.session.id in self.service.execution.running:
            # an input_reply to a request the execution service sent on the client's behalf
            self.service.execution.send_stdin(self.kernel_id, msg)
            return
        sock = self.sockets.get(channel)
        if sock is None:
            log.warning("dropped a message for unknown channel %r", channel)
            return
        self.jupyter_session.send(sock, msg, buffers=msg.get("buffers") or None)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception():
            log.error("gateway execution failed: %r", task.exception())

    async def send_status(self, state: str) -> None:
        """A synthetic iopub ``status`` (jupyter_server sends "restarting" the same way)."""
        msg = self.jupyter_session.msg("status", {"execution_state": state})
        msg["channel"] = "iopub"
        await self._send("iopub", msg)

    async def close(self) -> None:
        """Stop reading and close the sockets; executions still running finish and are recorded."""
        if self.is_closed:
            return
        self.is_closed = True
        if self.expiry is not None:
            self.expiry.cancel()
        for task in self.readers:
            task.cancel()
        for task in self.readers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.service.closed(self)
