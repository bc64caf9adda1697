"""LocalKernels: session kernels on this machine, through jupyter_client's AsyncMultiKernelManager.

The sandbox is not managed here: it is the kernelspec's provisioner (``kernelagent.sandbox``), so
this adapter only picks the kernelspec, passes the provisioner its configuration, and speaks the
Jupyter protocol. It implements the ``KernelBackend`` port; failures come out as
``kernelagent.errors`` exceptions.

* Each kernel has one client of this process (``_Link``): it reads a channel whenever the event
  loop sees its socket ready, parses every message once and hands it to the run
  (``kernel_runs.Run``) whose request it answers, by parent msg_id, so a cell, a silent
  evaluation and the pool's warm-up never see each other's messages.
* A gateway WebSocket's connection (``_Channels``) is a view of that link, not sockets of its own:
  it sees every iopub message and the replies to its own requests, as a jupyter_server WebSocket
  does, without the kernel's messages being received and parsed once more per connection.
* Workspaces are directories ``<workspaces>/<name>``; the kernel sees its own at ``/workspace``
  through the sandbox's bind mount. ``adopt`` renames a pooled kernel's directory to a session's:
  the bind mount follows the directory, so the running kernel sees its new files at once, and
  restarts bind the new path. Names starting with "." are scratch, removed at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import zmq
from jupyter_client import AsyncKernelClient, AsyncKernelManager, AsyncMultiKernelManager
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.session import Session as JupyterSession
from traitlets.config import Config

from kernelagent.adapters import workspace_io
from kernelagent.adapters.kernel_runs import (
    Run,
    end_runs,
    execute_request,
    request,
    start_whole,
)
from kernelagent.adapters.kernelspecs import kernel_dirs
from kernelagent.adapters.workspace_watch import WorkspaceWatch
from kernelagent.config import Settings
from kernelagent.domain import FileStat, KernelMessage
from kernelagent.errors import InvalidInput, KernelDied, NotFound, SandboxError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # kernelagent/, for the kernel-side code
HANDSHAKE_TIMEOUT = 30.0  # seconds for a kernel to answer this process's first request
WORKSPACE_NAME = re.compile(r"\.?[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
CHANNELS = ("shell", "control", "stdin", "iopub")
REQUESTS = frozenset({"shell", "control", "stdin"})  # what a client may send on
# signatures of messages read, remembered to refuse a replayed one; jupyter_client's default of
# 65 536 is ~10 MB per kernel in a long session (1024: ~140 KB), and only the kernel, which holds
# the key, could replay one anyway
DIGEST_HISTORY = 1024

_NOBLOCK, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)  # no enum math
DRAIN_BATCH = 64  # messages read from one channel before the loop runs anything else
FULL_QUEUE_WAIT = 0.005  # seconds between tries to send to a kernel whose queue is full
ASKED_LIMIT = 4096  # a connection's requests awaiting replies, remembered (oldest go first)

log = logging.getLogger(__name__)


class _Link:
    """This process's client of one kernel, and the runs waiting for its messages."""

    def __init__(self, kernels: LocalKernels, kernel_id: str):
        self.kernels = kernels
        self.kernel_id = kernel_id
        self.client = kernels.client(kernel_id)
        self.runs: dict[str, Run] = {}
        self.ended = False
        self._loop = asyncio.get_running_loop()
        # plain sockets over the client's: read when the loop sees their descriptor, not
        # through zmq.asyncio's futures (a future, a callback and flag arithmetic per message)
        self._sockets = {
            name: zmq.Socket.shadow(getattr(self.client, f"{name}_channel").socket.underlying)
            for name in CHANNELS
        }
        self._fds = [socket.FD for socket in self._sockets.values()]
        self._parser = _Parser(self.client.session)
        for fd, name in zip(self._fds, self._sockets, strict=True):
            self._loop.add_reader(fd, self._drain, name)
            self._loop.call_soon(self._drain, name)
        self.ready = asyncio.ensure_future(self._handshake(HANDSHAKE_TIMEOUT))

    async def _handshake(self, timeout: float) -> None:
        """Until the kernel answers ``kernel_info`` and its iopub reaches us (a SUB socket
        misses what is published before its subscription arrives: the first cell's outputs)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            request = self.client.session.msg("kernel_info_request", {})
            run = Run(self, request["header"]["msg_id"])
            self.runs[run.msg_id] = run
            await self.send("shell", request)
            try:
                if await run.reply(1.0) is not None and await _heard_iopub(run, 0.2):
                    return
            finally:
                run.close()
        raise KernelDied(f"the kernel did not answer within {timeout:g} s")

    async def alive(self) -> bool:
        return await self.kernels.is_alive(self.kernel_id)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Without blocking: a kernel's queue that is full (its high-water mark) is waited for.
        A send can take the wake-up of a message that arrived meanwhile (ZMQ's descriptor
        signals changes, not readiness), so the socket is read again after it."""
        if self.ended:
            raise KernelDied("the kernel went away", "shutdown")
        socket = self._sockets[channel]
        frames = [*self.client.session.serialize(message), *message.get("buffers", ())]
        while True:
            try:
                socket.send_multipart(frames, _NOBLOCK)
                break
            except zmq.Again:
                await asyncio.sleep(FULL_QUEUE_WAIT)
            if self.ended:
                raise KernelDied("the kernel went away", "shutdown")
        self._loop.call_soon(self._drain, channel)

    async def exit_reason(self) -> str | None:
        return await self.kernels.exit_reason(self.kernel_id)

    def _drain(self, name: str) -> None:
        """Every message waiting on a channel, each parsed once and handed to its run and to
        the gateway connections watching the kernel. After ``DRAIN_BATCH`` messages the other
        channels and kernels get their turn; the rest is read on the next loop iteration."""
        if self.ended:
            return
        socket = self._sockets[name]
        parse = self._parser.message
        watchers = self.kernels._watchers
        for _ in range(DRAIN_BATCH):
            try:
                frames = _receive(socket)
            except zmq.Again:  # woken by something else than a message (a send's signal)
                return
            try:
                msg = parse(name, frames)
            except Exception:  # noqa: BLE001 - an unreadable frame is dropped
                msg = None
            if msg is not None:
                run = self.runs.get(msg.parent_id or "")
                if run is not None:
                    run.deliver(msg)
                for connection in watchers.get(self.kernel_id, ()):
                    connection.deliver(msg)
            if not socket.getsockopt(_EVENTS) & _POLLIN:  # cheaper than a failed read
                return
        self._loop.call_soon(self._drain, name)

    def end(self, error: KernelDied) -> None:
        """Every run in flight ends with ``error``; the client stops."""
        self.ended = True
        self.ready.cancel()
        end_runs(self.runs, error)
        for fd in self._fds:  # before the sockets close, and their descriptors with them
            self._loop.remove_reader(fd)
        self.client.session.digest_history.clear()
        self.client.stop_channels()


class _Channels:
    """A gateway client's connection to one kernel, through the kernel's link: every iopub
    message, and the replies (shell, control, stdin) to the requests this connection sent."""

    def __init__(self, kernels: LocalKernels, kernel_id: str):
        self.kernels = kernels
        self.kernel_id = kernel_id
        self.inbox: asyncio.Queue[KernelMessage] = asyncio.Queue()
        self.asked: dict[str, None] = {}  # msg ids of this connection's requests, oldest first
        self.iopub_only = False
        self.closed = False

    def deliver(self, msg: KernelMessage) -> None:
        """Called by the link's readers with every message the kernel sends."""
        if msg.channel == "iopub":
            self.inbox.put_nowait(msg)
        elif not self.iopub_only and msg.parent_id in self.asked:
            if msg.channel != "stdin":  # a reply ends its request; an input_request does not
                del self.asked[msg.parent_id]
            self.inbox.put_nowait(msg)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self.closed or self.iopub_only or channel not in REQUESTS:
            raise InvalidInput(f"no channel {channel!r} to send on")
        try:
            link = await self.kernels._link(self.kernel_id)
        except KernelDied:  # as on sockets of a kernel that went away: nothing answers
            log.warning("dropped a %s message for kernel %s: it is gone", channel, self.kernel_id)
            return
        if channel != "stdin":
            self.asked[str(message["header"]["msg_id"])] = None
            if len(self.asked) > ASKED_LIMIT:  # requests the kernel never answered
                del self.asked[next(iter(self.asked))]
        await link.send(channel, message)

    async def receive(self) -> KernelMessage:
        return await self.inbox.get()

    def received(self) -> list[KernelMessage]:
        taken = []
        while not self.inbox.empty():
            taken.append(self.inbox.get_nowait())
        return taken

    def keep_iopub_only(self) -> None:
        self.iopub_only = True
        self.asked.clear()

    def close(self) -> None:
        self.closed = True
        watching = self.kernels._watchers.get(self.kernel_id)
        if watching is not None:
            watching.discard(self)
            if not watching:
                del self.kernels._watchers[self.kernel_id]


async def _heard_iopub(run: Run, timeout: float) -> bool:
    """Whether an iopub message of ``run`` came within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (wait := deadline - loop.time()) > 0:
        item = await run.messages.get(wait)
        if item is None:
            return False
        if isinstance(item, KernelMessage) and item.channel == "iopub":
            return True
    return False


def _receive(socket: zmq.Socket[bytes]) -> list[bytes]:
    """One message's frames, without blocking. A frame says whether more follow: asking the
    socket instead (``recv_multipart``) costs an option lookup per frame."""
    frame = socket.recv(_NOBLOCK, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = socket.recv(_NOBLOCK, copy=False)
        frames.append(frame.bytes)
    return frames


class _Parser:
    """``Session.deserialize``'s checks (signature, replay guard), without turning the headers'
    dates into ``datetime``s (nothing here reads them, and dateutil took 7 % of the event loop
    under load), keeping the JSON parts as sent, for gateway clients. The session's settings
    are read once: each read of a traitlet is a call, a dozen per message."""

    def __init__(self, session: JupyterSession):
        self.session = session
        self.auth = session.auth  # an HMAC to copy per message, or None (no key)
        self.unpack = session.unpack
        self.history_size = session.digest_history_size

    def message(self, channel: str, frames: list[bytes]) -> KernelMessage:
        _, parts = self.session.feed_identities(frames)
        if len(parts) < 5:
            raise ValueError(f"a message has at least 5 parts, not {len(parts)}")
        signature, *fields = parts[:5]
        if self.auth is not None:
            history = self.session.digest_history  # culling may put a new set in its place
            if not signature or signature in history:
                raise ValueError("unsigned or replayed message")
            history.add(signature)
            if len(history) > self.history_size:
                self.session._cull_digest_history()
            digest = self.auth.copy()
            for field in fields:
                digest.update(field)
            if not hmac.compare_digest(signature, digest.hexdigest().encode()):
                raise ValueError("invalid signature")
        unpack = self.unpack
        header, parent, metadata, content = (unpack(field) for field in fields)
        return KernelMessage(
            channel,
            header,
            parent or {},
            metadata or {},
            content or {},
            tuple(parts[5:]),
            raw=tuple(fields),
        )


class LocalKernels:
    """Starts, drives and stops sandboxed kernels; one ``AsyncKernelManager`` each."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.kernel_name = settings.kernelspec
        self.shared = False  # a kernel is this process's child: reached through it only
        sandboxes = settings.provisioner_config()
        # the kernel-side extension is this package's: a kernel must see it even when the
        # package is not inside the Python environment the sandbox binds (an editable install);
        # a kernel image has its own copy
        bwrap = sandboxes["BubblewrapProvisioner"]
        bwrap["ro_binds"] = [*bwrap.get("ro_binds", []), str(PACKAGE_DIR)]
        config = Config(sandboxes)
        config.Session.digest_history_size = DIGEST_HISTORY
        self.specs = KernelSpecManager(kernel_dirs=kernel_dirs(), config=config)
        self.mkm = AsyncMultiKernelManager(kernel_spec_manager=self.specs, config=config)
        self.workspaces_dir = settings.workspaces_dir
        self.workspaces_dir.mkdir(parents=True, exist_ok=True)
        self._links: dict[str, _Link] = {}
        self._watchers: dict[str, set[_Channels]] = {}  # kernel id → gateway connections
        self._ending: dict[str, set[asyncio.Event]] = {}  # kernels restarting or shutting down
        self._kernelspec: tuple[dict[str, Any], dict[str, bytes]] | None = None
        self._workspaces: dict[str, str] = {}  # kernel id → workspace name
        self._watch = WorkspaceWatch()  # a cell that wrote no file costs no scan

    # ------------------------------------------------------------------ lifecycle

    def clear_scratch(self) -> None:
        """Remove scratch workspaces an earlier server process left (its pooled kernels,
        replays): called by the server at start-up, before it starts any kernel."""
        for stale in self.workspaces_dir.glob(".*"):
            shutil.rmtree(stale, ignore_errors=True)

    async def start(self, workspace: str) -> str:
        """A cancelled caller does not cut the start half-way (``start_whole``)."""
        return await start_whole(self._start(workspace), lambda k: self.shutdown(k, now=True))

    async def _start(self, workspace: str) -> str:
        self.check_kernelspec()
        path = self.workspace_path(workspace)
        path.mkdir(parents=True, exist_ok=True)
        try:
            kernel_id: str = await self.mkm.start_kernel(
                kernel_name=self.kernel_name, cwd=str(path)
            )
        except RuntimeError as e:
            # The provisioner's SandboxError names the cause and the fix; the sandbox package is
            # reached only through the kernelspec, so it is recognised by module, not imported.
            if type(e).__module__.startswith("kernelagent.sandbox"):
                raise SandboxError(str(e)) from e
            raise
        self._workspaces[kernel_id] = workspace
        try:
            await self._wait_ready(kernel_id)
        except BaseException:
            await self.shutdown(kernel_id, now=True)
            raise
        return kernel_id

    def kernelspec(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        if self._kernelspec is None:
            self.check_kernelspec()
            spec = self.specs.get_kernel_spec(self.kernel_name)
            resources = {
                path.name: path.read_bytes()
                for path in sorted(Path(spec.resource_dir).iterdir())
                if path.is_file() and path.name != "kernel.json"
            }
            self._kernelspec = (spec.to_dict(), resources)
        return self._kernelspec

    def check_kernelspec(self) -> None:
        """Raise NotFound, listing what exists, when the configured kernelspec is missing."""
        try:
            self.specs.get_kernel_spec(self.kernel_name)
        except NoSuchKernel:
            names = ", ".join(sorted(self.specs.find_kernel_specs()))
            message = f"no kernelspec named {self.kernel_name!r} (available: {names})"
            raise NotFound(message) from None

    async def _wait_ready(self, kernel_id: str) -> None:
        client = self.client(kernel_id)
        try:
            await client.wait_for_ready(timeout=self.settings.kernel_start_timeout)
        except RuntimeError as e:
            reason = await self.exit_reason(kernel_id) or str(e)
            raise KernelDied(f"kernel died during start: {reason}") from e
        finally:
            client.stop_channels()

    async def take_over(self, kernel_id: str, workspace: str) -> bool:
        return False  # another process's kernels were its children: gone with it

    async def restarted_elsewhere(self, kernel_id: str) -> None:
        return None  # no other process restarts this process's kernels

    def running(self) -> int:
        return len(self.mkm.list_kernel_ids())

    async def adopt(self, kernel_id: str, workspace: str) -> None:
        """Rename the kernel's directory to ``workspace``'s (same filesystem), moving files
        already in ``workspace`` into it first."""
        manager = self.manager(kernel_id)
        source = self.workspace_path(self._workspaces[kernel_id])
        target = self.workspace_path(workspace)
        # renames, in the loop: a thread hop would let the pool's refill start a kernel first
        _adopt(source, target, self.kernel_uid(kernel_id))
        self._watch.forget(self._workspaces[kernel_id])
        self._watch.forget(workspace)  # another directory now: scanned afresh
        self._workspaces[kernel_id] = workspace
        if manager._launch_args is not None:  # what restart_kernel replays
            manager._launch_args["cwd"] = str(target)

    async def interrupt(self, kernel_id: str) -> None:
        if kernel_id in self.mkm:
            await self.mkm.interrupt_kernel(kernel_id)

    async def restart(self, kernel_id: str) -> None:
        if kernel_id not in self.mkm:
            raise KernelDied("the kernel is gone")
        async with self._no_new_link(kernel_id):
            self._drop_link(kernel_id, "the kernel was restarted while this cell ran", "restarted")
            await self.mkm.restart_kernel(kernel_id)
            await self._wait_ready(kernel_id)
        if self._watchers.get(kernel_id):  # gateway clients hear the restarted kernel at once
            await self._link(kernel_id)

    async def shutdown(self, kernel_id: str, now: bool = False) -> None:
        async with self._no_new_link(kernel_id):
            self._drop_link(kernel_id, "the kernel was shut down while this cell ran", "shutdown")
            self._workspaces.pop(kernel_id, None)
            self._watchers.pop(kernel_id, None)
            with contextlib.suppress(KeyError):  # gone meanwhile (a cancelled start)
                if kernel_id in self.mkm:
                    await self.mkm.shutdown_kernel(kernel_id, now=now)

    @contextlib.asynccontextmanager
    async def _no_new_link(self, kernel_id: str) -> AsyncIterator[None]:
        """While a kernel restarts or shuts down, a request waits for the end before linking
        to it: a link made meanwhile would be left open (after a shutdown) or stale."""
        done = asyncio.Event()
        ending = self._ending.setdefault(kernel_id, set())
        ending.add(done)
        try:
            yield
        finally:
            ending.discard(done)
            if not ending:
                self._ending.pop(kernel_id, None)
            done.set()

    async def close(self, keep: bool = False) -> None:
        """Stop every kernel and close the ZMQ context (left to GC, it warns and may linger).
        ``keep`` changes nothing: a local kernel does not outlive its server."""
        for kernel_id in self.mkm.list_kernel_ids():
            await self.shutdown(kernel_id, now=True)
        for kernel_id in list(self._links):  # none should be left; their sockets close first
            self._drop_link(kernel_id, "the server is stopping", "shutdown")
        self.mkm.context.destroy(linger=0)
        self._watch.close()

    async def is_alive(self, kernel_id: str) -> bool:
        if kernel_id not in self.mkm:
            return False
        try:
            return bool(await self.manager(kernel_id).is_alive())
        except KeyError:
            return False

    async def exit_reason(self, kernel_id: str) -> str | None:
        if kernel_id not in self.mkm:
            return None
        reason = getattr(self.manager(kernel_id).provisioner, "exit_reason", None)
        return reason() if reason else None

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
                link.client.session,
                code,
                silent=silent,
                store_history=store_history,
                user_expressions=user_expressions,
                metadata=metadata,
                buffers=buffers,
            )
        return await request(link, message)

    async def connect(self, kernel_id: str) -> _Channels:
        """Once the kernel's link is ready, its iopub delivers: a cell sent at once is seen."""
        await self._link(kernel_id)
        channels = _Channels(self, kernel_id)
        self._watchers.setdefault(kernel_id, set()).add(channels)
        return channels

    async def _link(self, kernel_id: str) -> _Link:
        while ending := self._ending.get(kernel_id):
            await next(iter(ending)).wait()
        link = self._links.get(kernel_id)
        if link is None:
            if kernel_id not in self.mkm:
                raise KernelDied("the kernel is gone")
            link = self._links[kernel_id] = _Link(self, kernel_id)
        try:
            await asyncio.shield(link.ready)
        except KernelDied:
            self._drop_link(kernel_id, "the kernel did not answer", "died")
            raise
        except asyncio.CancelledError:
            if link.ready.cancelled():  # ended meanwhile (restart, shutdown)
                raise KernelDied("the kernel went away", "shutdown") from None
            raise
        return link

    def _drop_link(self, kernel_id: str, why: str, cause: str) -> None:
        link = self._links.pop(kernel_id, None)
        if link is not None:
            link.end(KernelDied(why, cause))

    # ------------------------------------------------------------------ workspaces

    def workspace_path(self, workspace: str) -> Path:
        """The host directory of a workspace (tests, ``doctor``; services use the names)."""
        if not WORKSPACE_NAME.fullmatch(workspace):
            raise InvalidInput(f"not a workspace name: {workspace!r}")
        return self.workspaces_dir / workspace

    async def list_files(self, workspace: str) -> dict[str, FileStat]:
        listing = self._watch.listed(workspace)
        if listing is None:
            root = self.workspace_path(workspace)
            listing = await asyncio.to_thread(self._watch.scan, workspace, root)
        return listing

    async def read_file(self, workspace: str, path: str, limit: int) -> bytes:
        root = self.workspace_path(workspace)
        return await asyncio.to_thread(workspace_io.read_file, root, path, limit)

    async def write_file(self, workspace: str, path: str, data: bytes) -> None:
        root = self.workspace_path(workspace)
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(workspace_io.write_file, root, path, data)

    async def remove_file(self, workspace: str, path: str) -> None:
        root = self.workspace_path(workspace)
        await asyncio.to_thread(workspace_io.remove_file, root, path)

    async def remove_workspace(self, workspace: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.workspace_path(workspace), True)
        self._watch.forget(workspace)

    def package_dir(self, kernel_id: str) -> Path | None:
        try:
            provisioner = self.manager(kernel_id).provisioner
        except KeyError:
            return None
        path = getattr(provisioner, "packages_dir", None)  # the sandboxes have one
        return Path(path) if path else None

    # ------------------------------------------------------------------ this adapter only

    def manager(self, kernel_id: str) -> AsyncKernelManager:
        """jupyter_client's manager of a kernel (``doctor``, tests, benchmarks)."""
        return self.mkm.get_kernel(kernel_id)

    def client(self, kernel_id: str) -> AsyncKernelClient:
        """A new client with its channels started; the caller stops it. On the kernels' one
        ZMQ context: a context of its own would be two more threads per kernel. No heartbeat
        channel: it is a thread and a ping every 3 s per kernel, and whether a kernel lives is
        its process's answer (``is_alive``), not the heartbeat's."""
        client: AsyncKernelClient = self.manager(kernel_id).client(context=self.mkm.context)
        client.start_channels(hb=False)
        return client

    def kernel_uid(self, kernel_id: str) -> int:
        """Host uid of the kernel's processes; workspace files must belong to it."""
        provisioner = self.manager(kernel_id).provisioner
        return int(getattr(provisioner, "host_uid", os.geteuid()))


def _adopt(source: Path, target: Path, uid: int) -> None:
    if target.exists():
        for entry in target.iterdir():
            moved = source / entry.name
            entry.rename(moved)
            if os.geteuid() == 0:
                _chown_tree(moved, uid)
        target.rmdir()
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)


def _chown_tree(root: Path, uid: int) -> None:
    os.lchown(root, uid, uid)
    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), uid, uid)
