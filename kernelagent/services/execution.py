"""ExecutionService: the one way code runs in a session's kernel, whoever sends it.

``execute()`` = take the session's lock (arrival order) → the session's live kernel (the
supervisor brings one back if it was gone) → record a pending cell at the next index → the cell
through the kernel port (``running.collect``: outputs as they come, timeout → interrupt with the
partial output kept, a dead kernel recorded with its reason and replaced) → record the cell (a
gateway client gets its reply now, once the cell is durable) → store rich outputs as artifacts →
mirror changed files; the lock is held until all of it is done, so the next cell comes after.
Every step is published on the session's event log (``cell.started``, ``cell.output``,
``cell.completed``), whoever ran the cell, so every watcher of the session sees agent, web and
gateway cells alike as they happen.

After each cell whose files changed, the workspace's snapshot id is kept in the cell's metadata
(``snapshot``): "the files as they were after cell N".
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kernelagent.domain import Artifact, Cell, CellStatus, KernelMessage, Role, Session, User
from kernelagent.errors import KernelDied, NotFound
from kernelagent.events import CellCompleted, CellOutput, CellStarted
from kernelagent.services.files import FileService
from kernelagent.services.namespaces import NamespaceSnapshots
from kernelagent.services.outputs import OutputCollector, extract_artifacts
from kernelagent.services.packages import KEY as PACKAGES
from kernelagent.services.packages import Installs, PackageService
from kernelagent.services.ports import (
    Database,
    KernelBackend,
    KernelRun,
    RuntimeState,
    SessionLocks,
)
from kernelagent.services.provenance import from_outside
from kernelagent.services.recording import LOCK_WAIT, Recorder, new_cell
from kernelagent.services.running import CellResult, OnReply, collect, died_output, evaluate
from kernelagent.services.supervisor import KernelSupervisor

log = logging.getLogger(__name__)

OutputHook = Callable[[Cell, list[dict[str, Any]]], Awaitable[None]]
Deliver = Callable[[str, KernelMessage], Awaitable[None]]  # (channel, message) to a client


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


@dataclasses.dataclass
class _Running:
    """A cell this process runs now."""

    cell_id: str
    kernel_id: str
    run: KernelRun | None = None
    capture: KernelRun | None = None  # the namespace snapshot sent right after the cell
    interrupted: bool = False


class ExecutionService:
    def __init__(
        self,
        db: Database,
        locks: SessionLocks,
        kernels: KernelBackend,
        supervisor: KernelSupervisor,
        recorder: Recorder,
        files: FileService,
        state: RuntimeState,
        namespaces: NamespaceSnapshots,
        default_timeout: float,
        stream_limit: int,
        packages: PackageService | None = None,
    ):
        self.packages = packages
        self.observe_lock_wait: Callable[[float], None] | None = None  # seconds queued (metrics)
        self.state = state
        self.namespaces = namespaces
        self.db = db
        self.locks = locks
        self.kernels = kernels
        self.supervisor = supervisor
        self.recorder = recorder
        self.files = files
        self.default_timeout = default_timeout
        self.stream_limit = stream_limit
        self._running: dict[str, _Running] = {}  # session id → its cell running here

    async def busy(self, session_ids: list[str]) -> set[str]:
        """Which of the sessions run a cell now, in any server process."""
        return await self.state.running(session_ids)

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
        on_started: Callable[[Cell], None] | None = None,
    ) -> Execution:
        """Run ``code`` as the next cell of the session; returns the recorded cell.

        ``owner``: the session must be theirs (NotFound otherwise) — checked on the row read
        under the lock, which also catches a session deleted while the cell queued.
        ``on_started``: told the cell once it is in the record and running (a caller that
        stops waiting can name it).
        """
        await self.supervisor.check_here(session_id)  # at once, not after queueing
        queued = time.perf_counter()
        async with self.locks.hold(session_id, timeout=LOCK_WAIT):
            if self.observe_lock_wait is not None:
                self.observe_lock_wait(time.perf_counter() - queued)
            session = await self.db.sessions.get(session_id)
            if session is None or (owner is not None and session.user_id != owner.id):
                raise NotFound("no such session")
            kernel_id = await self.supervisor.ensure(session)
            cell = await self.db.cells.append_next(
                new_cell(session.id, "code", code, role, "pending", from_outside(metadata or {}))
            )
            await self.recorder.publish(
                session.id,
                CellStarted(
                    cell_id=cell.id,
                    index=cell.index,
                    code=code,
                    role=role,
                    metadata=cell.metadata,
                ),
            )
            running = self._running[session.id] = _Running(cell.id, kernel_id)
            await self.state.set_running(session.id, cell.id)
            if on_started is not None:
                on_started(cell)
            started = time.perf_counter()
            result = CellResult([], "error", None, None)
            installs: Installs | None = None
            early: Cell | None = None  # the row as written when the reply came

            async def record_early(
                outputs: list[dict[str, Any]], status: CellStatus, count: int | None
            ) -> None:
                """The row, written while the kernel's idle status is on its way: most cells
                end as their reply says, and need no write after it."""
                nonlocal early
                if installs is not None or running.interrupted:
                    return  # its final row will differ
                ended = _ended(cell, outputs, status, count, started)
                try:
                    await self.db.cells.update(ended, touch_session=True)
                except Exception:  # noqa: BLE001 - the final write says what went wrong
                    return
                early = ended

            try:  # an install that cannot start still ends the cell in the record
                installs = await self._installs(kernel_id, cell, code)
                result = await self._run(
                    kernel_id,
                    cell,
                    code,
                    timeout or self.default_timeout,
                    on_output,
                    request,
                    record_early,
                )
            except Exception as e:
                result = dataclasses.replace(result, outputs=[*result.outputs, _failure(e)])
                raise
            finally:
                self._running.pop(session.id, None)
                await self.state.set_running(session.id, None)
                status = result.status
                if running.interrupted and status in ("ok", "error"):
                    status = "interrupted"
                cell = _ended(cell, result.outputs, status, result.execution_count, started)
                if installs is not None and (installed := await installs.finish()):
                    cell = dataclasses.replace(
                        cell, metadata={**cell.metadata, PACKAGES: installed}
                    )
                # the record holds whatever happened (and the session's last activity)
                if early is not None and _same_row(early, cell):
                    cell = early  # nothing came after the reply: written already
                else:
                    try:
                        await self.db.cells.update(cell, touch_session=True)
                    except NotFound:  # its row went with the session
                        raise NotFound(
                            "no such session: it was deleted while this cell ran"
                        ) from None
                if result.kernel_lost:
                    await self.supervisor.replace(session, kernel_id)
                if sys.exc_info()[0] is not None:  # failing: say so now, nothing more comes
                    await self._publish_completed(cell)
            if request and result.reply:  # durable now: a client that saw the reply finds it
                await request.deliver("shell", result.reply)
            artifacts: list[Artifact] = []
            try:
                artifacts = await self.files.store_artifacts(
                    session, cell.id, extract_artifacts(cell.outputs)
                )
                if await self.files.mirror(session):
                    snapshot = await self.files.snapshot(session)
                    cell = dataclasses.replace(
                        cell, metadata={**cell.metadata, "snapshot": snapshot}
                    )
                    await self.db.cells.update(cell)
                if full := self.files.over_limit(session.id):  # said in the cell, to all
                    error = {"output_type": "error", "ename": "WorkspaceFull", "evalue": full,
                             "traceback": [f"WorkspaceFull: {full}"]}  # fmt: skip
                    cell = dataclasses.replace(cell, outputs=[*cell.outputs, error])
                    await self.db.cells.update(cell)
            except Exception:
                log.exception("storing the outputs or files of cell %s failed", cell.id)
            await self.supervisor.touch(session.id)
            await self._publish_completed(cell)  # after its artifacts: watchers can link them
            if running.capture is not None:
                if cell.status == "ok":
                    self.namespaces.finish(cell, running.capture)
                else:
                    running.capture.close()
        return Execution(session, cell, artifacts)

    async def _installs(self, kernel_id: str, cell: Cell, code: str) -> Installs | None:
        """The ``%pip install`` lines of the cell, started before the kernel runs it."""
        if self.packages is None or "pip" not in code:
            return None
        earlier = [c for c in await self.db.cells.list(cell.session_id) if c.index < cell.index]
        return await self.packages.begin(kernel_id, code, earlier)

    async def _run(
        self,
        kernel_id: str,
        cell: Cell,
        code: str,
        timeout: float,
        on_output: OutputHook | None,
        request: ClientRequest | None,
        on_reply: OnReply,
    ) -> CellResult:
        session_id = cell.session_id

        async def published(collector: OutputCollector, changed: list[dict[str, Any]]) -> None:
            for n, (index, output) in enumerate(zip(collector.last_indices, changed, strict=True)):
                await self.recorder.publish(
                    session_id,
                    CellOutput(
                        cell_id=cell.id,
                        index=index,
                        output=output,
                        cleared=collector.cleared and n == 0,
                    ),
                )
            if collector.cleared and not changed:
                await self.recorder.publish(session_id, CellOutput(cell_id=cell.id, cleared=True))
            if on_output:
                await on_output(cell, changed)

        try:
            run = await self.kernels.execute(
                kernel_id, code, message=request.message if request else None
            )
        except KernelDied as e:
            return CellResult([died_output(str(e))], "died", None, None, e.cause == "died")
        running = self._running[session_id]
        running.run = run
        try:
            result = await collect(
                self.kernels,
                kernel_id,
                run,
                timeout,
                self.stream_limit,
                on_output=published,
                on_input=(lambda msg: request.deliver("stdin", msg)) if request else None,
                on_reply=on_reply,
            )
        finally:
            run.close()
        if result.status == "ok" and result.capture is not False:  # next in the kernel's queue
            running.capture = await self.namespaces.begin(kernel_id, cell)
        return result

    async def interrupt_here(self, session_id: str) -> None:
        """Interrupt the cell the session runs in this process, if any (recorded as
        "interrupted"); the agent's ``interrupt`` reaches the other processes."""
        running = self._running.get(session_id)
        if running is not None and running.kernel_id:
            running.interrupted = True
            await self.kernels.interrupt(running.kernel_id)

    async def send_input(self, session_id: str, message: dict[str, Any]) -> bool:
        """An ``input_reply`` from a gateway client for the cell running now; False if none."""
        running = self._running.get(session_id)
        if running is None or running.run is None:
            return False
        await running.run.send_input(message)
        return True

    async def evaluate(self, session_id: str, expression: str, timeout: float = 10) -> str:
        """The ``text/plain`` value of ``expression`` in the session's kernel, evaluated silently
        in order with the cells."""
        await self.supervisor.check_here(session_id)
        async with self.locks.hold(session_id, timeout=LOCK_WAIT):
            session = await self.db.sessions.get(session_id)
            if session is None:
                raise NotFound("no such session")
            kernel_id = await self.supervisor.ensure(session)
            return await evaluate(self.kernels, kernel_id, expression, timeout)

    async def live_kernel(self, session_id: str) -> str:
        """The session's kernel, started and its state rebuilt if it was gone (in cell order).
        A live kernel is answered at once, without waiting for a running cell."""
        session = await self.db.sessions.get(session_id)
        if session is None:
            raise NotFound("no such session")
        if await self.supervisor.is_live(session):
            return session.kernel_id or ""
        async with self.locks.hold(session_id, timeout=LOCK_WAIT):
            session = await self.db.sessions.get(session_id)
            if session is None:
                raise NotFound("no such session")
            return await self.supervisor.ensure(session)

    async def _publish_completed(self, cell: Cell) -> None:
        await self.recorder.publish(
            cell.session_id,
            CellCompleted(
                cell_id=cell.id,
                index=cell.index,
                status=cell.status,
                execution_count=cell.execution_count,
                duration_ms=cell.duration_ms,
            ),
        )


def _failure(error: Exception) -> dict[str, Any]:
    name = type(error).__name__
    return {
        "output_type": "error",
        "ename": name,
        "evalue": str(error),
        "traceback": [f"kernelagent could not finish this cell: {name}: {error}"],
    }


def _ended(
    cell: Cell,
    outputs: list[dict[str, Any]],
    status: CellStatus,
    count: int | None,
    started: float,
) -> Cell:
    """The cell as it ended, having run since ``started`` (``time.perf_counter()``)."""
    return dataclasses.replace(
        cell,
        outputs=outputs,
        status=status,
        execution_count=count,
        duration_ms=round((time.perf_counter() - started) * 1000),
    )


def _same_row(written: Cell, final: Cell) -> bool:
    """Whether the row written early holds what the final one would (outputs are compared by
    identity: the collector makes a new dict for each output it changes)."""
    return (
        written.status == final.status
        and written.execution_count == final.execution_count
        and written.metadata == final.metadata
        and len(written.outputs) == len(final.outputs)
        and all(a is b for a, b in zip(written.outputs, final.outputs, strict=True))
    )
