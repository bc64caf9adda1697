"""The Kernel Gateway surface: session kernels as Jupyter kernels, and the WebSocket ⇄ kernel link.

A gateway kernel id *is* the session id, which the session's ``kernel_id`` shows: stable for the
session's life, even when the session gets a new kernel process. ``POST /api/kernels`` makes a new
session (its kernel from the warm pool); every live session is also offered as a kernelspec of
its own (``agent-<session id>``, "Agent: <title>"), whose start attaches to that session's kernel,
so JupyterLab's kernel picker lists the agent's sessions. Kernel Gateway's semantics hold: after
``DELETE`` a kernel is 404 and not listed until its session runs a cell again; a culled kernel
stays listed and comes back when used.

Each WebSocket connection (``GatewayChannel``) gets its own connection to the kernel's channels
(``KernelBackend.connect``), as in jupyter_server, so replies go to the client that asked and
every client sees all of iopub (a local kernel's connections are views of its one link, so its
messages are read once however many clients it has). The one
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
from pathlib import Path
from typing import Any

from kernelagent.domain import KernelMessage, Session, Signal, User
from kernelagent.errors import NotFound
from kernelagent.services.execution import ClientRequest, ExecutionService
from kernelagent.services.ports import KernelBackend, KernelChannels, RuntimeState
from kernelagent.services.sessions import SessionService
from kernelagent.services.supervisor import KernelSupervisor

log = logging.getLogger(__name__)

GATEWAY_TIMEOUT = 24 * 3600.0  # a person's cell in JupyterLab runs until they interrupt it
RECONNECT_WINDOW = 300.0  # seconds a disconnected client's messages are kept for it
RECONNECT_BUFFER = 10_000  # messages kept per disconnected client (the oldest go first)
SERVER_COMMS = "kernelagent."  # comm ids of what the server moves through iopub (files, snapshots)
SendToClient = Callable[[str, KernelMessage], Awaitable[None]]
AGENT_SPEC = "agent-"  # kernelspec name prefix of a session's own kernelspec


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


@dataclasses.dataclass(frozen=True)
class KernelSpecModel:
    """What ``/api/kernelspecs`` answers per kernelspec (jupyter_server's model)."""

    name: str
    spec: dict[str, Any]
    resources: dict[str, str]

    def json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def jupyter_time(session: Session) -> str:
    """``%Y-%m-%dT%H:%M:%S.%fZ``, the only format GatewayClient parses."""
    return session.updated_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def listed(session: Session) -> bool:
    """A session's kernel exists for Jupyter clients unless it was deleted through them."""
    return session.status != "stopped"


class GatewayService:
    """Kernel CRUD over sessions, and the registry of open channels."""

    def __init__(
        self,
        sessions: SessionService,
        execution: ExecutionService,
        supervisor: KernelSupervisor,
        kernels: KernelBackend,
        state: RuntimeState,
    ):
        self.state = state
        self.sessions = sessions
        self.execution = execution
        self.supervisor = supervisor
        self.kernels = kernels
        self.kernel_name = kernels.kernel_name
        self.channels: dict[str, set[GatewayChannel]] = {}
        self.detached: dict[tuple[str, str], GatewayChannel] = {}  # (session, client) → buffering
        self._restarting: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self.executions: set[asyncio.Task[Any]] = set()  # cells clients sent, running here

    async def model(
        self, session: Session, name: str | None = None, busy: bool | None = None
    ) -> KernelModel:
        """``busy``: whether it runs a cell, when the caller asked already (a listing)."""
        if busy is None:
            busy = bool(await self.execution.busy([session.id]))
        if session.id in self._restarting:
            state = "restarting"
        elif busy:
            state = "busy"
        elif session.status == "dead":
            state = "dead"
        else:
            state = "idle"
        return KernelModel(
            id=session.id,
            name=name or self.kernel_name,
            last_activity=jupyter_time(session),
            execution_state=state,
            connections=await self.state.connections(session.id),
        )

    async def list(self, user: User) -> list[KernelModel]:
        sessions = [s for s in await self.sessions.list(user) if listed(s)]
        busy = await self.execution.busy([s.id for s in sessions])  # one question for all
        return [await self.model(s, busy=s.id in busy) for s in sessions]

    async def create(self, user: User, name: str | None) -> KernelModel:
        """A new session's kernel; or, for a session's own kernelspec, that session's kernel
        (brought back if it was gone)."""
        if name and name.startswith(AGENT_SPEC):
            session = await self._session(
                user, name.removeprefix(AGENT_SPEC), f"kernelspec {name!r}"
            )
            await self.execution.live_kernel(session.id)
            return await self.model(await self.sessions.get(user, session.id), name)
        if name and name not in {self.kernel_name, "python3"}:
            raise NotFound(f"no kernelspec named {name!r}")
        return await self.model(await self.sessions.create(user, "Gateway kernel"))

    async def get(self, user: User, kernel_id: str) -> KernelModel:
        return await self.model(await self._session(user, kernel_id))

    async def _session(self, user: User, session_id: str, what: str = "") -> Session:
        """The user's session whose kernel Jupyter clients may use (NotFound after DELETE)."""
        try:
            session = await self.sessions.get(user, session_id)
        except NotFound:
            session = None
        if session is None or not listed(session):
            raise NotFound(f"no {what or f'kernel {session_id!r}'}")
        return session

    async def kernelspecs(self, user: User) -> list[KernelSpecModel]:
        """The kernelspec of new kernels, then one per live session of the user: "Agent: …"."""
        spec, resources = self.kernels.kernelspec()
        links = {Path(name).stem: f"/kernelspecs/{self.kernel_name}/{name}" for name in resources}
        found = [KernelSpecModel(self.kernel_name, spec, links)]
        for session in await self.sessions.list(user):
            if listed(session):
                agent = {
                    **spec,
                    "display_name": f"Agent: {session.title}",
                    "metadata": {**spec.get("metadata", {}), "kernelagent_session": session.id},
                }
                found.append(KernelSpecModel(AGENT_SPEC + session.id, agent, links))
        return found

    async def kernelspec_resource(self, name: str, resource: str) -> bytes:
        if name != self.kernel_name and not name.startswith(AGENT_SPEC):
            raise NotFound(f"no kernelspec named {name!r}")
        data = self.kernels.kernelspec()[1].get(resource)
        if data is None:
            raise NotFound(f"no resource {resource!r}")
        return data

    async def ensure_live(self, user: User, kernel_id: str) -> tuple[Session, str]:
        """The session and its kernel, brought back (state rebuilt) if it was gone: done before
        a client's WebSocket is accepted, so the channel is ready when the client sees it open."""
        session = await self._session(user, kernel_id)
        return session, await self.execution.live_kernel(session.id)

    async def interrupt(self, user: User, kernel_id: str) -> None:
        """Interrupt the kernel, from whichever server process reaches it; a shared kernel's
        running cell is marked interrupted by the process running it."""
        session = await self._session(user, kernel_id)
        owner = await self.supervisor.elsewhere(session.id)
        if owner is not None:
            await self.state.signal(Signal("interrupt", session.id, to=owner))
            return
        if session.kernel_id:
            await self.kernels.interrupt(session.kernel_id)
        if self.kernels.shared:
            sender = self.state.process_id
            await self.state.signal(Signal("interrupt", session.id, sender=sender))

    async def restart(self, user: User, kernel_id: str) -> KernelModel:
        """Restart the session's kernel in place; open channels keep working across it."""
        session = await self._session(user, kernel_id)
        await self.execution.live_kernel(session.id)
        session = await self.sessions.get(user, kernel_id)
        self._restarting.add(session.id)
        try:
            await self.broadcast_status(session.id, "restarting")
            await self.supervisor.restart(session)
        finally:
            self._restarting.discard(session.id)
        return await self.model(await self.sessions.get(user, kernel_id))

    async def shutdown(self, user: User, kernel_id: str) -> None:
        """Stop the session's kernel (404 from now on); the session stays, and gets a fresh
        kernel, with its state rebuilt, on its next cell."""
        session = await self._session(user, kernel_id)
        await self.supervisor.stop(session)
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
        """Counted among the kernel's connections at once; then it connects."""
        channel = GatewayChannel(self, session, kernel, send, client_session)
        earlier = self.detached.pop((session.id, client_session), None) if client_session else None
        self.channels.setdefault(session.id, set()).add(channel)
        await self.state.connections(session.id, 1)
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

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def stop(self, timeout: float = 30.0) -> None:
        """Close every channel; the cells clients sent get ``timeout`` seconds to finish and be
        recorded, then are cancelled (recorded as far as they got) before the kernels go."""
        for group in list(self.channels.values()):
            for channel in list(group):
                await channel.close()
        for channel in list(self.detached.values()):
            await channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.executions:
            _, late = await asyncio.wait(self.executions, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _remove(self, channel: GatewayChannel) -> None:
        group = self.channels.get(channel.session.id)
        if group is not None and channel in group:
            group.discard(channel)
            if not group:
                del self.channels[channel.session.id]
            self._spawn(self.state.connections(channel.session.id, -1), "gateway-uncount")

    def closed(self, channel: GatewayChannel) -> None:
        self._remove(channel)
        key = (channel.session.id, channel.client_session or "")
        if self.detached.get(key) is channel:
            del self.detached[key]


class GatewayChannel:
    """One WebSocket connection's view of a kernel: its own connection, a reader task, routing."""

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
        self.kernel: KernelChannels | None = None
        self.readers: list[asyncio.Task[None]] = []
        self.is_closed = False
        # while the client is away: what it would have been sent (None when connected)
        self.buffer: collections.deque[tuple[str, KernelMessage]] | None = None
        self.replayed: set[str] = set()  # msg ids sent from an earlier channel's buffer
        self.expiry: asyncio.TimerHandle | None = None

    async def open(self, earlier: GatewayChannel | None = None) -> None:
        """Connect to the kernel; when the same client had a channel before, send what it
        buffered first (the new connection listens before the old one stops: no gap)."""
        self.kernel = await self.service.kernels.connect(self.kernel_id)
        if earlier is not None:
            for channel, msg in await earlier.take_buffer():
                self.replayed.add(msg.msg_id)
                await self._send(channel, msg)
            # replies to its executions still running now come here
            earlier.buffer, earlier.send = None, self._send
        self.readers.append(
            asyncio.create_task(self._forward(), name=f"gateway-forward-{self.kernel_id}")
        )

    async def _forward(self) -> None:
        """Kernel → client, in the order the kernel's messages arrived."""
        assert self.kernel is not None
        while True:
            msg = await self.kernel.receive()
            if self.replayed and msg.msg_id in self.replayed:
                self.replayed.discard(msg.msg_id)
                continue
            if _the_servers_own(msg):
                continue
            await self._send(msg.channel, msg)

    async def _send(self, channel: str, msg: KernelMessage) -> None:
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
        if self.kernel is not None:
            self.kernel.keep_iopub_only()
        self.expiry = asyncio.get_running_loop().call_later(
            RECONNECT_WINDOW, self.service.close_expired, self
        )

    async def take_buffer(self) -> list[tuple[str, KernelMessage]]:
        """Stop buffering and hand over everything kept, including what is still queued."""
        buffered = list(self.buffer or ())
        kernel = self.kernel
        await self.close()
        if kernel is not None:
            buffered += [(msg.channel, msg) for msg in kernel.received()]
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
            self.service.executions.add(task)
            task.add_done_callback(self._finished)
            return
        # an input_reply to a request the execution service sent on the client's behalf
        if channel == "stdin" and await self.service.execution.send_input(self.session.id, msg):
            return
        if self.kernel is None or self.is_closed:
            log.warning("dropped a %s message for a closed channel", channel)
            return
        if channel == "iopub":  # the kernel's to publish on, no client's
            log.warning("dropped a %s message a client sent on iopub", msg_type)
            return
        await self.kernel.send(channel, msg)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.service.executions.discard(task)
        if not task.cancelled() and task.exception():
            log.error("gateway execution failed: %r", task.exception())

    async def send_status(self, state: str) -> None:
        """A synthetic iopub ``status`` (jupyter_server sends "restarting" the same way)."""
        await self._send("iopub", KernelMessage.status(state))

    async def close(self) -> None:
        """Stop reading and disconnect; executions still running finish and are recorded."""
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
        if self.kernel is not None:
            self.kernel.close()
        self.service.closed(self)


def _the_servers_own(msg: KernelMessage) -> bool:
    """The bytes a file transfer or a namespace snapshot carries on iopub: the server's, in
    comms of its own that no frontend has (and a binary frame some clients cannot read)."""
    return msg.msg_type == "comm_msg" and str(msg.content.get("comm_id", "")).startswith(
        SERVER_COMMS
    )
