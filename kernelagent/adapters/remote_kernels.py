"""RemoteKernels: session kernels on a Jupyter Kernel Gateway or Enterprise Gateway.

The ``KernelBackend`` port over the gateway's REST API (``/api/kernels``) and its channels
WebSocket, as jupyter_server's ``GatewayClient`` speaks them:

* Each kernel has one WebSocket of this process (a ``_RemoteLink``, with a ``session_id`` of its
  own); a reader hands every message to the run whose request it answers, as the local backend
  does. A lost WebSocket is reconnected with the same ``session_id``: the gateway buffered the
  kernel's messages meanwhile and sends them on reconnection, so a running cell loses nothing.
* A kernel the gateway lost (it died and the gateway restarted it, or it was culled or shut down
  there) ends the runs in flight with ``KernelDied`` and counts as dead from then on: the
  supervisor rebuilds the session's state in a new kernel by replay, as for a local kernel.
* A gateway client of kernelagent's own Kernel Gateway API gets a WebSocket of its own
  (``_RemoteChannels``).
* Every server process reaches every kernel (``shared``): a process serving a session whose
  kernel another started reaches it with ``take_over`` (one REST call; its workspace directory
  is asked of the kernel on the first file operation, not behind a running cell).
* Workspaces live in the kernels' filesystems, which the server cannot see: every file operation
  goes through the kernel (``KernelFiles``). A workspace whose kernel is not running is offline
  (``WorkspaceOffline``): its files are what was last mirrored to storage.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import socket
import struct
import uuid
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from jupyter_client.session import Session as JupyterSession
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from kernelagent.adapters.kernel_files import KernelFiles
from kernelagent.adapters.kernel_runs import (
    Run,
    end_runs,
    execute_request,
    parse,
    request,
    start_whole,
)
from kernelagent.config import Settings
from kernelagent.domain import FileStat, KernelMessage
from kernelagent.errors import KernelAgentError, KernelDied, WorkspaceOffline

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 60.0
REOPEN_TIMEOUT = 10.0  # seconds a restarted kernel has to answer a client's new socket
RECONNECT_ATTEMPTS = 5
MAX_MESSAGE = 256 * 1024 * 1024  # a WebSocket message: a file chunk is ~6 MiB
ALIVE_FOR = 1.0  # seconds a kernel the gateway just reported is taken to be alive


class GatewayError(KernelAgentError):
    """The gateway refused or failed a request; the message says which and why."""


class _RemoteLink:
    """This process's WebSocket to one remote kernel, and the runs waiting for its messages."""

    def __init__(self, kernels: RemoteKernels, kernel_id: str):
        self.kernels = kernels
        self.kernel_id = kernel_id
        self.session_id = uuid.uuid4().hex  # the gateway buffers for it while we reconnect
        self.runs: dict[str, Run] = {}
        self.ws: WebSocketClientConnection | None = None
        self._reconnecting = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None
        self.ready = asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        self.ws = await self.kernels.websocket(self.kernel_id, self.session_id)
        self.reader = asyncio.create_task(self._read(), name=f"remote-kernel-{self.kernel_id}")
        await self._handshake(HANDSHAKE_TIMEOUT)

    async def _handshake(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            request = self.kernels.session.msg("kernel_info_request", {})
            run = Run(self, request["header"]["msg_id"])
            self.runs[run.msg_id] = run
            try:
                await self.send("shell", request)
                if await run.reply(1.0) is not None:
                    return
            finally:
                run.close()
        raise KernelDied(f"the remote kernel did not answer within {timeout:g} s")

    async def alive(self) -> bool:
        return await self.kernels.is_alive(self.kernel_id)

    async def exit_reason(self) -> str | None:
        return await self.kernels.exit_reason(self.kernel_id)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self.ws is None:
            raise KernelDied("the connection to the remote kernel is not open", "died")
        frame = {**message, "channel": channel}
        buffers = frame.pop("buffers", None) or []
        data = _binary_message(frame, buffers) if buffers else json.dumps(frame, default=str)
        for _ in range(2):  # once more on a reconnected socket
            try:
                await self.ws.write_message(data, binary=bool(buffers))
                return
            except WebSocketClosedError:
                if not await self._reconnect():
                    break
        reason = await self.kernels.exit_reason(self.kernel_id)
        raise KernelDied(reason or "the connection to the remote kernel was lost", "died")

    async def _read(self) -> None:
        while True:
            assert self.ws is not None
            raw = await self.ws.read_message()
            if raw is None:
                if not await self._reconnect():
                    return
                continue
            _quickack(self.ws)
            msg = _parse_frame(raw)
            if msg is None:
                continue
            if msg.channel == "iopub" and msg.msg_type == "status":
                state = msg.content.get("execution_state")
                if state in ("restarting", "autorestarting", "dead") and not msg.parent_id:
                    again = "" if state == "dead" else " (the gateway restarted it, empty)"
                    self.kernels.lose(self.kernel_id, f"the kernel died on the gateway{again}")
                    return
            run = self.runs.get(msg.parent_id or "")
            if run is not None:
                run.deliver(msg)

    async def _reconnect(self) -> bool:
        """Open the WebSocket again (same ``session_id``: the gateway replays what it buffered);
        False, with the kernel lost, when the gateway no longer has it. The reader and a sender
        may both notice: the second finds the socket the first opened."""
        broken = self.ws
        async with self._reconnecting:
            if self.ws is not broken and self.ws is not None and self.ws.protocol is not None:
                return True
            return await self._open_again()

    async def _open_again(self) -> bool:
        for attempt in range(RECONNECT_ATTEMPTS):
            if self.kernel_id in self.kernels._lost:
                return False
            if not await self.kernels.exists(self.kernel_id):
                self.kernels.lose(self.kernel_id, "the gateway no longer has the kernel")
                return False
            try:
                self.ws = await self.kernels.websocket(self.kernel_id, self.session_id)
                log.info("reconnected to remote kernel %s", self.kernel_id)
                return True
            except Exception as e:  # noqa: BLE001 - retried, then the kernel counts as lost
                log.warning("reconnecting to remote kernel %s: %s", self.kernel_id, e)
                await asyncio.sleep(0.2 * 2**attempt)
        self.kernels.lose(self.kernel_id, "the connection to the gateway was lost")
        return False

    def end(self, error: KernelDied) -> None:
        self.ready.cancel()
        end_runs(self.runs, error)
        current = asyncio.current_task()
        if self.reader is not None and self.reader is not current:
            self.reader.cancel()
        if self.ws is not None:
            self.ws.close()


class _RemoteChannels:
    """A gateway client's own WebSocket to a remote kernel (kernelagent's Kernel Gateway API)."""

    def __init__(self, ws: WebSocketClientConnection):
        self.ws = ws
        self.inbox: asyncio.Queue[KernelMessage | None] = asyncio.Queue()
        self.iopub_only = False
        self.closed = False
        self.open = asyncio.Event()  # cleared while a restart replaces the socket
        self.open.set()
        self.probe: tuple[str, asyncio.Event] | None = None  # reopen's kernel_info, answered
        self.reader = asyncio.create_task(self._read(ws))

    async def _read(self, ws: WebSocketClientConnection) -> None:
        while (raw := await ws.read_message()) is not None:
            msg = _parse_frame(raw)
            if msg is None:
                continue
            if self.probe is not None and msg.parent_id == self.probe[0]:
                if msg.channel == "shell":
                    self.probe[1].set()
                continue  # the probe is this adapter's, not the client's
            if not (self.iopub_only and msg.channel != "iopub"):
                self.inbox.put_nowait(msg)
        if ws is self.ws and self.open.is_set():  # not one a restart is replacing
            self.inbox.put_nowait(None)

    async def reopen(self, ws: WebSocketClientConnection, probe: dict[str, Any]) -> None:
        """Go on over ``ws``: after a restart the gateway's channels of the old socket may lead to
        a kernel that is gone (a container kernel is replaced, with new addresses). Returns once
        the gateway relays the new socket's messages (its answer to ``probe``, a kernel_info
        request: a gateway subscribes a new socket to the kernel's output only after a first
        answer), so the client's next request loses none of its output."""
        old, self.ws = self.ws, ws
        old.close()
        answered = asyncio.Event()
        self.probe = (probe["header"]["msg_id"], answered)
        self.reader = asyncio.create_task(self._read(ws))
        await ws.write_message(json.dumps({**probe, "channel": "shell"}, default=str))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REOPEN_TIMEOUT):
                await answered.wait()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self.open.wait()  # what a client sends during a restart goes to the new socket
        frame = {**message, "channel": channel}
        buffers = frame.pop("buffers", None) or []
        if buffers:
            await self.ws.write_message(_binary_message(frame, buffers), binary=True)
        else:
            await self.ws.write_message(json.dumps(frame, default=str))

    async def receive(self) -> KernelMessage:
        msg = await self.inbox.get()
        if msg is None:
            self.inbox.put_nowait(None)
            raise KernelDied("the remote kernel's connection closed")
        return msg

    def received(self) -> list[KernelMessage]:
        taken = []
        while not self.inbox.empty():
            msg = self.inbox.get_nowait()
            if msg is None:
                self.inbox.put_nowait(None)
                break
            taken.append(msg)
        return taken

    def keep_iopub_only(self) -> None:
        self.iopub_only = True

    def close(self) -> None:
        self.closed = True
        self.reader.cancel()
        self.ws.close()


class RemoteKernels:
    """Starts, drives and stops kernels on a gateway; see the module docstring."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.base = settings.gateway_url.rstrip("/")
        self.kernel_name = settings.gateway_kernel_name
        self.shared = True
        self.http = AsyncHTTPClient()
        # messages are built here and signed by the gateway, with the kernel's key
        self.session = JupyterSession(key=uuid.uuid4().hex.encode(), username="kernelagent")
        self._links: dict[str, _RemoteLink] = {}
        self._workspaces: dict[str, str] = {}  # kernel id → workspace name
        self._roots: dict[str, str] = {}  # kernel id → its workspace directory in the kernel
        self._restarting: dict[str, asyncio.Future[None]] = {}  # kernel id → done
        self._channels: dict[str, weakref.WeakSet[_RemoteChannels]] = {}  # gateway API clients'
        self._lost: dict[str, str] = {}  # kernel id → why it is no longer ours
        self._seen_alive: dict[str, float] = {}  # kernel id → when the gateway last had it

    # ------------------------------------------------------------------ the gateway's API

    def _headers(self) -> dict[str, str]:
        token = self.settings.gateway_token
        return {"Authorization": f"token {token}"} if token else {}

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        request = HTTPRequest(
            f"{self.base}{path}",
            method=method,
            headers={**self._headers(), "Content-Type": "application/json"},
            body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
            connect_timeout=self.settings.gateway_connect_timeout,
            request_timeout=self.settings.gateway_request_timeout,
        )
        try:
            response = await self.http.fetch(request)
        except HTTPClientError as e:
            detail = e.response.body.decode(errors="replace")[:300] if e.response else ""
            raise GatewayError(f"the gateway answered {e.code} to {method} {path}: {detail}") from e
        except OSError as e:
            raise GatewayError(f"cannot reach the gateway at {self.base}: {e}") from e
        return json.loads(response.body) if response.body else None

    async def websocket(self, kernel_id: str, session_id: str) -> WebSocketClientConnection:
        url = urlparse(self.base)
        scheme = "wss" if url.scheme == "https" else "ws"
        target = (
            f"{scheme}://{url.netloc}{url.path}/api/kernels/{quote(kernel_id)}/channels"
            f"?session_id={session_id}"
        )
        request = HTTPRequest(
            target,
            headers=self._headers(),
            connect_timeout=self.settings.gateway_connect_timeout,
            request_timeout=self.settings.gateway_request_timeout,
        )
        connection = await websocket_connect(request, max_message_size=MAX_MESSAGE)
        stream = getattr(connection.protocol, "stream", None)
        if stream is not None:  # small frames go out at once (a reply is several of them)
            stream.set_nodelay(True)
        return connection

    async def exists(self, kernel_id: str) -> bool:
        try:
            await self._request("GET", f"/api/kernels/{quote(kernel_id)}")
            return True
        except GatewayError as e:
            if isinstance(e.__cause__, HTTPClientError) and e.__cause__.code == 404:
                return False
            raise

    # ------------------------------------------------------------------ lifecycle

    def kernelspec(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        spec = {
            "argv": [],
            "display_name": f"Python 3 (kernelagent, on {urlparse(self.base).netloc})",
            "language": "python",
            "interrupt_mode": "message",
            "env": {},
            "metadata": {},
        }
        return spec, {}

    async def start(self, workspace: str) -> str:
        """A cancelled caller does not cut the start half-way (``start_whole``)."""
        return await start_whole(self._start(workspace), lambda k: self.shutdown(k, now=True))

    async def _start(self, workspace: str) -> str:
        env = {"KERNEL_USERNAME": self.settings.gateway_username}
        model = await self._request("POST", "/api/kernels", {"name": self.kernel_name, "env": env})
        kernel_id = str(model["id"])
        self._give(kernel_id, workspace)
        try:
            await self._link(kernel_id)
            await self._enter_workspace(kernel_id)
        except BaseException:
            await self.shutdown(kernel_id, now=True)
            raise
        return kernel_id

    async def _enter_workspace(self, kernel_id: str) -> None:
        """Make the configured directory (``{kernel_id}`` filled in) the kernel's cwd; without
        one, the kernel's own cwd is its workspace."""
        wanted = self.settings.gateway_workspace.replace("{kernel_id}", kernel_id)
        code = (
            "__import__('os').makedirs({0!r}, exist_ok=True); __import__('os').chdir({0!r})"
            if wanted
            else "None"
        ).format(wanted)
        run = await self.execute(
            kernel_id, code, silent=True, store_history=False,
            user_expressions={"cwd": "__import__('os').getcwd()"},
        )  # fmt: skip
        try:
            reply = await run.reply(self.settings.gateway_request_timeout)
        finally:
            run.close()
        value = (reply.content if reply else {}).get("user_expressions", {}).get("cwd", {})
        if value.get("status") != "ok":
            raise KernelDied(f"the remote kernel could not enter its workspace: {value}")
        self._roots[kernel_id] = str(ast.literal_eval(value["data"]["text/plain"]))

    async def take_over(self, kernel_id: str, workspace: str) -> bool:
        """A kernel on the gateway that another server process started, reached from this
        one too, with its state, if the gateway still has it."""
        if kernel_id in self._workspaces:
            return kernel_id not in self._lost
        try:
            if not await self.exists(kernel_id):
                return False
        except GatewayError as e:
            log.warning("cannot reach kernel %s: %s", kernel_id, e)
            return False
        self._give(kernel_id, workspace)
        self._seen_alive[kernel_id] = asyncio.get_running_loop().time()
        return True

    async def restarted_elsewhere(self, kernel_id: str) -> None:
        if kernel_id not in self._workspaces or kernel_id in self._restarting:
            return
        self._drop_link(kernel_id, "the kernel was restarted while this cell ran", "restarted")
        self._roots.pop(kernel_id, None)  # entered again on the next file operation
        clients = [c for c in self._channels.get(kernel_id, ()) if not c.closed]
        for channels in clients:
            channels.open.clear()
        await self._reopen(kernel_id, clients)

    async def adopt(self, kernel_id: str, workspace: str) -> None:
        """The kernel's workspace takes the session's name (its files stay where they are; a
        session's earlier workspace went with its kernel)."""
        self._give(kernel_id, workspace)

    def _give(self, kernel_id: str, workspace: str) -> None:
        """``workspace`` is ``kernel_id``'s alone from now on: a kernel that had it before was
        replaced (by this process or another, which shut it down) and is forgotten here."""
        for other, name in list(self._workspaces.items()):
            if name == workspace and other != kernel_id:
                self._forget(other, "the session's kernel was replaced while this cell ran")
        self._workspaces[kernel_id] = workspace

    def _forget(self, kernel_id: str, why: str) -> None:
        self._drop_link(kernel_id, why, "shutdown")
        for known in (self._workspaces, self._roots, self._lost, self._seen_alive, self._channels):
            known.pop(kernel_id, None)

    async def interrupt(self, kernel_id: str) -> None:
        if kernel_id not in self._lost:  # any kernel on the gateway: another process's too
            with contextlib.suppress(GatewayError):
                await self._request("POST", f"/api/kernels/{quote(kernel_id)}/interrupt")

    async def restart(self, kernel_id: str) -> None:
        if kernel_id not in self._workspaces or kernel_id in self._lost:
            raise KernelDied("the kernel is gone")
        # No WebSocket opens meanwhile: one opened while the gateway replaces a container
        # kernel would get channels to the container that is going away.
        done = self._restarting[kernel_id] = asyncio.get_running_loop().create_future()
        clients = [c for c in self._channels.get(kernel_id, ()) if not c.closed]
        for channels in clients:
            channels.open.clear()
        try:
            self._drop_link(kernel_id, "the kernel was restarted while this cell ran", "restarted")
            await self._request("POST", f"/api/kernels/{quote(kernel_id)}/restart")
        finally:
            del self._restarting[kernel_id]
            done.set_result(None)
            await self._reopen(kernel_id, clients)
        await self._link(kernel_id)
        await self._enter_workspace(kernel_id)

    async def _reopen(self, kernel_id: str, clients: list[_RemoteChannels]) -> None:
        """Each client on a new socket: after a restart, the gateway's channels of an old one
        may lead to a kernel that is gone. A client whose new socket fails keeps the old."""
        for channels in clients:
            try:
                ws = await self.websocket(kernel_id, uuid.uuid4().hex)
                await channels.reopen(ws, self.session.msg("kernel_info_request", {}))
            except (KernelAgentError, HTTPClientError, OSError, TimeoutError) as e:
                log.warning("kept a client's socket to %s after a restart: %s", kernel_id, e)
            finally:
                channels.open.set()

    async def shutdown(self, kernel_id: str, now: bool = False) -> None:
        known = kernel_id in self._workspaces
        self._forget(kernel_id, "the kernel was shut down while this cell ran")
        if known:
            with contextlib.suppress(GatewayError):
                await self._request("DELETE", f"/api/kernels/{quote(kernel_id)}")

    async def close(self, keep: bool = False) -> None:
        """Shut down every kernel this process started (as the local backend does); with
        ``keep``, only close this process's connections: the kernels run on at the gateway."""
        for kernel_id in list(self._workspaces):
            if keep:
                self._drop_link(kernel_id, "this server process stopped", "shutdown")
                self._workspaces.pop(kernel_id, None)
            else:
                await self.shutdown(kernel_id, now=True)

    async def is_alive(self, kernel_id: str) -> bool:
        if kernel_id not in self._workspaces or kernel_id in self._lost:
            return False
        # asked of the gateway: a kernel deleted or culled there may keep its WebSocket open
        loop = asyncio.get_running_loop()
        if loop.time() - self._seen_alive.get(kernel_id, -ALIVE_FOR) < ALIVE_FOR:
            return True
        try:
            alive = await self.exists(kernel_id)
        except GatewayError:
            return False
        if alive:
            self._seen_alive[kernel_id] = loop.time()
        else:
            self.lose(kernel_id, "the gateway no longer has the kernel (culled or shut down there)")
        return alive

    async def exit_reason(self, kernel_id: str) -> str | None:
        return self._lost.get(kernel_id)

    def running(self) -> int:
        return len(self._workspaces) - len(self._lost)

    def package_dir(self, kernel_id: str) -> Path | None:
        return None  # the gateway's kernels: their %pip says they cannot install

    def lose(self, kernel_id: str, why: str) -> None:
        """The gateway's kernel is no longer the one this session had: its runs end."""
        if kernel_id in self._workspaces and kernel_id not in self._lost:
            log.warning("remote kernel %s lost: %s", kernel_id, why)
            self._lost[kernel_id] = why
            self._seen_alive.pop(kernel_id, None)
            self._drop_link(kernel_id, why, "died")

    # ------------------------------------------------------------------ messages

    async def execute(
        self,
        kernel_id: str,
        code: str = "",
        *,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
        message: dict[str, Any] | None = None,
    ) -> Run:
        link = await self._link(kernel_id)
        if message is None:
            message = execute_request(
                self.session,
                code,
                silent=silent,
                store_history=store_history,
                user_expressions=user_expressions,
                metadata=metadata,
                buffers=buffers,
            )
        return await request(link, message)

    async def connect(self, kernel_id: str) -> _RemoteChannels:
        if not await self.is_alive(kernel_id):
            raise KernelDied("the kernel is gone")
        channels = _RemoteChannels(await self.websocket(kernel_id, uuid.uuid4().hex))
        self._channels.setdefault(kernel_id, weakref.WeakSet()).add(channels)
        return channels

    async def _link(self, kernel_id: str) -> _RemoteLink:
        while (restarting := self._restarting.get(kernel_id)) is not None:
            await asyncio.shield(restarting)
        if kernel_id in self._lost:
            raise KernelDied(self._lost[kernel_id])
        link = self._links.get(kernel_id)
        if link is None:
            if kernel_id not in self._workspaces:
                raise KernelDied("the kernel is gone")
            link = self._links[kernel_id] = _RemoteLink(self, kernel_id)
        try:
            await asyncio.shield(link.ready)
        except (KernelDied, GatewayError, OSError) as e:
            self._drop_link(kernel_id, f"the remote kernel did not answer: {e}", "died")
            raise KernelDied(f"the remote kernel did not answer: {e}") from e
        except asyncio.CancelledError:
            if link.ready.cancelled():
                raise KernelDied("the kernel went away", "shutdown") from None
            raise
        return link

    def _drop_link(self, kernel_id: str, why: str, cause: str) -> None:
        link = self._links.pop(kernel_id, None)
        if link is not None:
            link.end(KernelDied(why, cause))

    # ------------------------------------------------------------------ workspaces

    async def list_files(self, workspace: str) -> dict[str, FileStat]:
        async with self._workspace(workspace) as (files, kernel_id):
            return await files.list_files(kernel_id)

    async def read_file(self, workspace: str, path: str, limit: int) -> bytes:
        async with self._workspace(workspace) as (files, kernel_id):
            return await files.read_file(kernel_id, path, limit)

    async def write_file(self, workspace: str, path: str, data: bytes) -> None:
        async with self._workspace(workspace) as (files, kernel_id):
            await files.write_file(kernel_id, path, data)

    async def remove_file(self, workspace: str, path: str) -> None:
        async with self._workspace(workspace) as (files, kernel_id):
            await files.remove_file(kernel_id, path)

    async def remove_workspace(self, workspace: str) -> None:
        with contextlib.suppress(WorkspaceOffline):
            async with self._workspace(workspace) as (files, kernel_id):
                await files.clear(kernel_id)

    @contextlib.asynccontextmanager
    async def _workspace(self, workspace: str) -> AsyncIterator[tuple[KernelFiles, str]]:
        """The files of ``workspace``'s running kernel; WorkspaceOffline when none runs, or
        when it goes away during the operation."""
        for kernel_id, name in list(self._workspaces.items()):
            if name == workspace and kernel_id not in self._lost:
                break
        else:
            raise WorkspaceOffline(f"the workspace {workspace!r} has no running kernel")
        timeout = self.settings.gateway_request_timeout
        try:
            if kernel_id not in self._roots:  # a kernel reached with take_over
                await self._enter_workspace(kernel_id)
            yield KernelFiles(self.execute, self._roots[kernel_id], timeout=timeout), kernel_id
        except KernelDied as e:
            message = f"the workspace {workspace!r} went away with its kernel: {e}"
            raise WorkspaceOffline(message) from e


def _quickack(ws: WebSocketClientConnection) -> None:
    """Acknowledge at once what the gateway sent. A gateway that leaves Nagle's algorithm on
    holds its next small frame (a reply is several) until the last one is acknowledged, and a
    delayed ACK would make that ~40 ms per round trip. Linux clears the flag after use."""
    stream = getattr(ws.protocol, "stream", None)
    sock = getattr(stream, "socket", None)
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _parse_frame(raw: str | bytes) -> KernelMessage | None:
    """A message of the channels WebSocket: JSON text, or the binary form carrying buffers."""
    try:
        if isinstance(raw, str):
            frame = json.loads(raw)
            buffers: list[bytes] = []
        else:
            count = struct.unpack("!I", raw[:4])[0]
            offsets = [*struct.unpack(f"!{count}I", raw[4 : 4 + 4 * count]), len(raw)]
            frame = json.loads(raw[offsets[0] : offsets[1]])
            buffers = [raw[offsets[i] : offsets[i + 1]] for i in range(1, count)]
        frame["buffers"] = buffers
        return parse(str(frame.pop("channel", "")), frame)
    except Exception:  # noqa: BLE001 - an unreadable frame is dropped, not fatal
        return None


def _binary_message(frame: dict[str, Any], buffers: list[bytes]) -> bytes:
    """The channels WebSocket's binary form: offsets, then the JSON, then the buffers."""
    parts = [json.dumps(frame, default=str).encode(), *map(bytes, buffers)]
    count = len(parts)
    offsets, position = [], 4 * (count + 1)
    for part in parts:
        offsets.append(position)
        position += len(part)
    return struct.pack(f"!{count + 1}I", count, *offsets) + b"".join(parts)
