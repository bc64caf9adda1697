"""ExecutionService: the one way code runs in a session's kernel, whoever sends it.

``execute()`` = take the session's lock (arrival order) → record a pending cell at the next index →
``execute_request`` → turn every iopub message of that request into nbformat outputs → on timeout,
interrupt and keep the partial output → on a dead kernel, record the error with its reason and give
the session a new kernel → store rich outputs as artifacts → mirror changed files → record the cell.
Every step is also published on the session's event log (``cell.started``, ``cell.output``,
``cell.completed``, ``cell.added`` for markdown cells), whoever ran the cell, so every watcher of
the session sees agent, web and gateway cells alike as they happen.

A kernel is prepared once before its first cell: ``kernel_setup_code`` runs silently (it adds the
DataFrame summary that the agent's view of outputs uses), leaving no name in the user's namespace.

A session whose kernel is gone (it died, was culled when idle, was shut down, or the server
restarted) gets a new one on its next cell with its state rebuilt: the workspace is emptied, the
recorded cells are replayed (uploads re-applied where they arrived), the files are put back as
they were, and a note in the record says so. After each cell whose files changed, the workspace's
snapshot id is kept in the cell's metadata (``snapshot``): "the files as they were after cell N".
Modelled on nbclient's ``async_execute_cell``: iopub until ``status: idle``, then the shell reply,
while watching the kernel's liveness.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kernelagent.domain import (
    Artifact,
    Cell,
    CellStatus,
    CellType,
    Role,
    Session,
    User,
    new_id,
    now,
)
from kernelagent.errors import NotFound
from kernelagent.services.files import FileService
from kernelagent.services.kernels import KernelBackend
from kernelagent.services.outputs import OutputCollector, extract_artifacts
from kernelagent.services.ports import Database, EventLog, SessionLocks
from kernelagent.services.replay import Replayer, replayable
from kernelagent.services.sessions import SessionService

log = logging.getLogger(__name__)

INTERRUPT_GRACE = 5.0  # seconds a kernel has to answer an interrupt before it is restarted
LOCK_WAIT = 600.0  # seconds a cell may queue behind others before "session is busy" (429)
OutputHook = Callable[[Cell, list[dict[str, Any]]], Awaitable[None]]
Deliver = Callable[[str, dict[str, Any]], Awaitable[None]]  # (channel, message) to a client


@dataclasses.dataclass(frozen=True)
class ClientRequest:
    """An ``execute_request`` a Jupyter client sent (gateway): it is sent to the kernel as is, so
    the iopub messages carry the client's own msg_id; the reply and any ``input_request`` go back
    through ``deliver``."""

    message: dict[str, Any]
    deliver: Deliver


@dataclasses.dataclass(frozen=True)
class Execution:
    session: Session
    cell: Cell
    artifacts: list[Artifact]


class ExecutionService:
    def __init__(
        self,
        db: Database,
        locks: SessionLocks,
        kernels: KernelBackend,
        sessions: SessionService,
        files: FileService,
        default_timeout: float,
        stream_limit: int,
        events: EventLog | None = None,
        kernel_setup_code: str = "",
        replayer: Replayer | None = None,
    ):
        self.replayer = replayer
        self.last_used: dict[str, float] = {}  # session id → loop time of its last cell
        self.db = db
        self.events = events
        self.kernel_setup_code = kernel_setup_code
        self._prepared: set[str] = set()
        self.locks = locks
        self.kernels = kernels
        self.sessions = sessions
        self.files = files
        self.default_timeout = default_timeout
        self.stream_limit = stream_limit
        self._clients: dict[str, Any] = {}
        self._interrupted: set[str] = set()
        self._restarted: set[str] = set()
        self.running: set[str] = set()  # session ids executing now

    async def execute(
        self,
        session_id: str,
        code: str,
        role: Role,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
        on_output: OutputHook | None = None,
        request: ClientRequest | None = None,
        owner: User | None = None,
    ) -> Execution:
        """Run ``code`` as the next cell of the session; returns the recorded cell.

        ``owner``: the session must be theirs (NotFound otherwise) — checked on the row read
        under the lock, which also catches a session deleted while the cell queued.
        """
        async with self.locks.hold(session_id, timeout=LOCK_WAIT):
            session = await self.db.sessions.get(session_id)
            if session is None or (owner is not None and session.user_id != owner.id):
                raise NotFound("no such session")
            kernel_id = await self._live_kernel(session)
            cell = await self.db.cells.append_next(
                _new_cell(session.id, "code", code, role, "pending", dict(metadata or {}))
            )
            await self._publish(
                session.id,
                "cell.started",
                {
                    "cell_id": cell.id,
                    "index": cell.index,
                    "code": code,
                    "role": role,
                    "metadata": cell.metadata,
                },
            )
            self.running.add(session.id)
            self._interrupted.discard(session.id)
            started = time.perf_counter()
            outputs: list[dict[str, Any]] = []
            status: CellStatus = "error"
            count: int | None = None
            reply: dict[str, Any] | None = None
            try:
                outputs, status, count, reply = await self._run(
                    kernel_id,
                    session,
                    cell,
                    code,
                    timeout or self.default_timeout,
                    on_output,
                    request,
                )
            except Exception as e:
                outputs = [*outputs, _failure(e)]
                raise
            finally:
                self.running.discard(session.id)
                cell = dataclasses.replace(
                    cell,
                    outputs=outputs,
                    status=status,
                    execution_count=count,
                    duration_ms=round((time.perf_counter() - started) * 1000),
                )
                # the record holds whatever happened (and the session's last activity)
                await self.db.cells.update(cell, touch_session=True)
                if sys.exc_info()[0] is not None:  # failing: say so now, nothing more comes
                    await self._publish_completed(cell)
            artifacts: list[Artifact] = []
            try:
                artifacts = await self.files.store_artifacts(
                    session, cell.id, extract_artifacts(outputs)
                )
                if await self.files.mirror(session):
                    snapshot = await self.files.snapshot(session)
                    cell = dataclasses.replace(
                        cell, metadata={**cell.metadata, "snapshot": snapshot}
                    )
                    await self.db.cells.update(cell)
            except Exception:
                log.exception("storing the outputs or files of cell %s failed", cell.id)
            self.last_used[session.id] = asyncio.get_running_loop().time()
            await self._publish_completed(cell)  # after its artifacts: watchers can link them
        if request and reply:  # after the record: a client that saw the reply finds the cell
            await request.deliver("shell", reply)
        return Execution(session, cell, artifacts)

    async def restart(self, session: Session, kernel_id: str) -> None:
        """Restart the kernel in place (same id and sockets); a running cell ends as "died"."""
        if session.id in self.running:
            self._restarted.add(session.id)
        self._forget_client(kernel_id)
        await self.kernels.restart(kernel_id)
        await self.note(session, "The kernel was restarted; its variables are gone.")

    async def stop_kernel(self, session: Session, why: str = "The kernel was shut down") -> None:
        """Shut the session's kernel down; the next cell starts a new one with state rebuilt."""
        if not session.kernel_id:
            return
        if session.id in self.running:
            self._restarted.add(session.id)
        self._forget_client(session.kernel_id)
        with contextlib.suppress(KeyError):
            await self.kernels.shutdown(session.kernel_id, now=True)
        await self.db.sessions.update(session.id, kernel_id=None, status="stopped")
        await self.note(
            session, f"{why}; the next cell starts a new one, with its state rebuilt by replay."
        )

    async def note(self, session: Session, text: str) -> Cell:
        """Record a system note (a markdown cell) at the next index, in order with the cells."""
        return await self.record_markdown(session.id, "system", f"*{text}*")

    async def record_markdown(
        self, session_id: str, role: Role, text: str, metadata: dict[str, Any] | None = None
    ) -> Cell:
        """Append a markdown cell (a message or a note) in order with the code cells."""
        async with self.locks.hold(session_id, timeout=LOCK_WAIT):
            cell = await self.db.cells.append_next(
                _new_cell(session_id, "markdown", text, role, "ok", dict(metadata or {}))
            )
        await self._publish(
            session_id,
            "cell.added",
            {
                "cell_id": cell.id,
                "index": cell.index,
                "role": role,
                "source": text,
                "metadata": cell.metadata,
            },
        )
        return cell

    async def record_upload(self, session: Session, path: str, size: int, sha256: str) -> Cell:
        """Record an upload at this point of the notebook (replay re-applies it here)."""
        snapshot = await self.files.snapshot(session)
        return await self.record_markdown(
            session.id,
            "system",
            f"*Uploaded `{path}` ({size:,} bytes).*",
            {"upload": {"path": path, "size": size, "sha256": sha256}, "snapshot": snapshot},
        )

    async def live_kernel(self, session_id: str) -> str:
        """The session's kernel, started and its state rebuilt if it was gone (in cell order).

        A live kernel is answered at once, without waiting for a running cell."""
        session = await self.db.sessions.get(session_id)
        if session is None:
            raise NotFound("no such session")
        if session.kernel_id and await self._alive(session.kernel_id):
            return session.kernel_id
        async with self.locks.hold(session_id, timeout=LOCK_WAIT):
            session = await self.db.sessions.get(session_id)
            if session is None:
                raise NotFound("no such session")
            return await self._live_kernel(session)

    async def _live_kernel(self, session: Session) -> str:
        kernel_id = await self.sessions.ensure_kernel(session)
        if kernel_id != session.kernel_id:
            if session.kernel_id:
                self._forget_client(session.kernel_id)
            await self._rebuild(session, kernel_id)
        await self._prepare(kernel_id)
        return kernel_id

    async def _rebuild(self, session: Session, kernel_id: str) -> None:
        """Replay the record into a replacement kernel; the files end as they were."""
        cells = await self.db.cells.list(session.id)
        todo = replayable(cells)
        if self.replayer is None or not any(c.cell_type == "code" for c in todo):
            return
        snapshot = latest_snapshot(cells)
        started = time.perf_counter()
        await self.files.restore(session, None)
        try:
            reports = await self.replayer.run(kernel_id, self.files.workspace(session.id), todo)
        finally:
            if snapshot is not None:
                await self.files.restore(session, snapshot)
        differ = sum(r.status != "match" for r in reports)
        text = (
            f"*The session's kernel was gone; a new one was started and its state rebuilt by "
            f"replaying {len(reports)} cells in {time.perf_counter() - started:.1f} s"
            + (f" ({differ} gave different outputs)" if differ else "")
            + ".*"
        )
        cell = await self.db.cells.append_next(
            _new_cell(session.id, "markdown", text, "system", "ok", {"rebuilt": len(reports)})
        )
        await self._publish(
            session.id,
            "cell.added",
            {
                "cell_id": cell.id,
                "index": cell.index,
                "role": "system",
                "source": text,
                "metadata": cell.metadata,
            },
        )

    async def cull_idle(self, ttl: float) -> list[str]:
        """Shut down kernels idle for ``ttl`` seconds; their sessions stay. Returns their ids."""
        loop_now = asyncio.get_running_loop().time()
        culled = []
        for session_id, used in list(self.last_used.items()):
            if loop_now - used < ttl or session_id in self.running:
                continue
            del self.last_used[session_id]
            session = await self.db.sessions.get(session_id)
            if session is None or not session.kernel_id:
                continue
            await self.stop_kernel(
                session, f"The kernel was shut down after {ttl / 60:g} minutes idle"
            )
            culled.append(session_id)
        return culled

    async def evaluate(self, session_id: str, expression: str, timeout: float = 10) -> str:
        """The ``text/plain`` value of ``expression`` in the session's kernel, evaluated silently
        (``user_expressions``: no cell, no history, no output) in order with the cells."""
        async with self.locks.hold(session_id, timeout=LOCK_WAIT):
            session = await self.db.sessions.get(session_id)
            if session is None:
                raise NotFound("no such session")
            kernel_id = await self._live_kernel(session)
            client = self._client(kernel_id)
            msg_id = client.execute(
                "", silent=True, store_history=False, user_expressions={"value": expression}
            )
            reply = await self._reply(client, msg_id, timeout)
        value = ((reply or {}).get("content") or {}).get("user_expressions", {}).get("value", {})
        if value.get("status") != "ok":
            raise RuntimeError(f"{value.get('ename')}: {value.get('evalue')}")
        return str(value.get("data", {}).get("text/plain", ""))

    async def _prepare(self, kernel_id: str) -> None:
        """Run the setup code once per kernel process (silently)."""
        if not self.kernel_setup_code or kernel_id in self._prepared:
            return
        client = self._client(kernel_id)
        msg_id = client.execute(self.kernel_setup_code, silent=True, store_history=False)
        reply = await self._reply(client, msg_id, timeout=30)
        if reply is None or reply["content"].get("status") != "ok":
            log.warning("the setup code failed in kernel %s: %s", kernel_id, reply)
        self._prepared.add(kernel_id)

    async def _reply(self, client: Any, msg_id: str, timeout: float) -> dict[str, Any] | None:
        with contextlib.suppress(queue.Empty, TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    reply = await client.get_shell_msg(timeout=timeout)
                    if reply["parent_header"].get("msg_id") == msg_id:
                        return reply  # type: ignore[no-any-return]
        return None

    async def _publish_completed(self, cell: Cell) -> None:
        await self._publish(
            cell.session_id,
            "cell.completed",
            {
                "cell_id": cell.id,
                "index": cell.index,
                "status": cell.status,
                "execution_count": cell.execution_count,
                "duration_ms": cell.duration_ms,
            },
        )

    async def _publish(self, session_id: str, type: str, data: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            await self.events.publish(session_id, type, data)
        except Exception:  # a lost event must not lose the cell
            log.exception("could not publish %s for session %s", type, session_id)

    async def interrupt(self, session: Session) -> None:
        """Interrupt the running cell of ``session`` (recorded as "interrupted")."""
        if session.kernel_id and session.id in self.running:
            self._interrupted.add(session.id)
            await self.kernels.interrupt(session.kernel_id)

    async def _run(
        self,
        kernel_id: str,
        session: Session,
        cell: Cell,
        code: str,
        timeout: float,
        on_output: OutputHook | None,
        request: ClientRequest | None = None,
    ) -> tuple[list[dict[str, Any]], CellStatus, int | None, dict[str, Any] | None]:
        client = self._client(kernel_id)
        collector = OutputCollector(stream_limit=self.stream_limit)
        stdin_relay: asyncio.Task[None] | None = None
        if request is None:
            msg_id = client.execute(
                code, store_history=True, allow_stdin=False, stop_on_error=False
            )
        else:
            client.shell_channel.send(request.message)
            msg_id = request.message["header"]["msg_id"]
            if request.message["content"].get("allow_stdin"):
                stdin_relay = asyncio.create_task(
                    self._relay_stdin(client, msg_id, request.deliver), name=f"stdin-{msg_id}"
                )
        try:
            return await self._collect(
                kernel_id, client, collector, msg_id, session, cell, timeout, on_output, request
            )
        finally:
            if stdin_relay:
                stdin_relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stdin_relay

    async def _collect(
        self,
        kernel_id: str,
        client: Any,
        collector: OutputCollector,
        msg_id: str,
        session: Session,
        cell: Cell,
        timeout: float,
        on_output: OutputHook | None,
        request: ClientRequest | None,
    ) -> tuple[list[dict[str, Any]], CellStatus, int | None, dict[str, Any] | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        status: CellStatus = "ok"
        count: int | None = None
        timed_out = False
        while True:
            remaining = deadline - loop.time()
            if session.id in self._restarted:
                self._restarted.discard(session.id)
                collector.feed("error", _died("the kernel was restarted while this cell ran"))
                return collector.outputs, "died", count, None
            if remaining <= 0:
                if timed_out:  # the interrupt was not honoured: the kernel is stuck
                    await self._replace_kernel(kernel_id, session)
                    stuck = f"did not stop {INTERRUPT_GRACE:g} s after an interrupt"
                    collector.feed("error", _died(stuck))
                    return collector.outputs, "timeout", count, None
                timed_out = True
                await self.kernels.interrupt(kernel_id)
                deadline = loop.time() + INTERRUPT_GRACE
                continue
            try:
                msg = await client.get_iopub_msg(timeout=min(remaining, 0.5))
            except (queue.Empty, TimeoutError):
                if not await self._alive(kernel_id):
                    reason = self.kernels.exit_reason(kernel_id) or "the kernel died"
                    await self._replace_kernel(kernel_id, session)
                    collector.feed("error", _died(reason))
                    return collector.outputs, "died", count, None
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msg_type, content = msg["msg_type"], msg["content"]
            if msg_type == "status":
                if content["execution_state"] == "idle":
                    break
                continue
            if msg_type == "execute_input":
                count = content.get("execution_count")
                continue
            if msg_type == "error" and status == "ok":
                status = "error"
            changed = collector.feed(msg_type, content)
            if changed is not None:
                for n, (index, output) in enumerate(
                    zip(collector.last_indices, changed, strict=True)
                ):
                    await self._publish(
                        session.id,
                        "cell.output",
                        {
                            "cell_id": cell.id,
                            "index": index,
                            "output": output,
                            "cleared": collector.cleared and n == 0,
                        },
                    )
                if collector.cleared and not changed:
                    await self._publish(
                        session.id, "cell.output", {"cell_id": cell.id, "cleared": True}
                    )
                if on_output:
                    await on_output(cell, changed)
        reply = await self._drain_reply(client, msg_id)
        if timed_out:
            status = "timeout"
        elif session.id in self._interrupted:
            status = "interrupted"
        return collector.outputs, status, count, reply

    def _forget_client(self, kernel_id: str) -> None:
        self._prepared.discard(kernel_id)
        client = self._clients.pop(kernel_id, None)
        if client is not None:
            client.stop_channels()

    def _client(self, kernel_id: str) -> Any:
        client = self._clients.get(kernel_id)
        if client is None:
            client = self._clients[kernel_id] = self.kernels.client(kernel_id)
        return client

    async def _drain_reply(self, client: Any, msg_id: str) -> dict[str, Any] | None:
        """Consume this request's shell reply so the next cell does not see it."""
        with contextlib.suppress(queue.Empty, TimeoutError):
            while True:
                reply = await client.get_shell_msg(timeout=5)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return reply  # type: ignore[no-any-return]
        return None

    async def _relay_stdin(self, client: Any, msg_id: str, deliver: Deliver) -> None:
        """Pass the kernel's ``input_request``s for ``msg_id`` to the client that asked."""
        while True:
            try:
                msg = await client.get_stdin_msg(timeout=1)
            except (queue.Empty, TimeoutError):
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                await deliver("stdin", msg)

    def send_stdin(self, kernel_id: str, message: dict[str, Any]) -> None:
        """An ``input_reply`` from a gateway client, for a request this service sent."""
        client = self._clients.get(kernel_id)
        if client is not None:
            client.stdin_channel.send(message)

    async def _alive(self, kernel_id: str) -> bool:
        try:
            return await self.kernels.is_alive(kernel_id)
        except KeyError:
            return False

    async def _replace_kernel(self, kernel_id: str, session: Session) -> None:
        """Drop a dead or stuck kernel; the next cell gets a new one with the state rebuilt."""
        self._forget_client(kernel_id)
        with contextlib.suppress(KeyError):  # a stuck or dead kernel must not be reused
            await self.kernels.shutdown(kernel_id, now=True)
        await self.db.sessions.update(session.id, kernel_id=None, status="dead")

    async def close(self) -> None:
        for client in self._clients.values():
            client.stop_channels()
        self._clients.clear()


def latest_snapshot(cells: list[Cell]) -> str | None:
    """The snapshot id of the files after the last of ``cells`` (None: no file yet)."""
    for cell in reversed(cells):
        if cell.metadata.get("snapshot"):
            return str(cell.metadata["snapshot"])
    return None


def _new_cell(
    session_id: str,
    cell_type: CellType,
    source: str,
    role: Role,
    status: CellStatus,
    metadata: dict[str, Any],
) -> Cell:
    """A cell about to be appended (``append_next`` assigns its index)."""
    return Cell(
        id=new_id(),
        session_id=session_id,
        index=-1,
        cell_type=cell_type,
        source=source,
        role=role,
        outputs=[],
        execution_count=None,
        status=status,
        started_at=now(),
        duration_ms=None,
        metadata=metadata,
    )


def _failure(error: Exception) -> dict[str, Any]:
    name = type(error).__name__
    return {
        "output_type": "error",
        "ename": name,
        "evalue": str(error),
        "traceback": [f"kernelagent could not finish this cell: {name}: {error}"],
    }


def _died(reason: str) -> dict[str, Any]:
    return {
        "ename": "KernelDied",
        "evalue": reason,
        "traceback": [
            f"KernelDied: {reason}; the next cell starts a new kernel, its state rebuilt by "
            "replaying the notebook (without this cell)"
        ],
    }
