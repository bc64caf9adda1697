"""Worldlines: replay a session, branch it at any cell, import a notebook as a session.

* ``replay()`` re-executes a session's record in a fresh sandboxed kernel with an empty workspace
  (uploads re-applied where they arrived) and reports per cell; progress goes to the session's
  events (``replay.started``, ``replay.progress``, ``replay.completed``).
* ``branch()`` makes a new session whose record is the parent's up to and including a cell
  (artifacts shared: they are content-addressed), whose kernel has the state of that point
  (replayed) and whose files are as they were right after it (its snapshot). The parent is not
  touched and keeps running.
* ``import_notebook()`` makes a session of any valid ``.ipynb``; with ``replay`` its kernel state
  is rebuilt the same way: restored from snapshots where the importer's own record vouches for
  them (``provenance``), else by re-running its cells.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import nbformat

from kernelagent.domain import Cell, Session, User, new_id
from kernelagent.errors import NotFound, TooBig, Unprocessable
from kernelagent.events import ReplayCompleted, ReplayProgress, ReplayStarted
from kernelagent.services.files import FileService
from kernelagent.services.notebooks import cells_from_notebook
from kernelagent.services.ports import Database, EventLog, SessionLocks
from kernelagent.services.provenance import vouched
from kernelagent.services.recording import LOCK_WAIT
from kernelagent.services.replay import CellReport, Replayer
from kernelagent.services.sessions import SessionService
from kernelagent.services.supervisor import KernelSupervisor


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    cells: list[CellReport]
    duration_ms: int

    def summary(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.cells) for s in ("match", "differ", "error")}

    def json(self) -> dict[str, Any]:
        return {
            "cells": [r.json() for r in self.cells],
            "summary": self.summary(),
            "duration_ms": self.duration_ms,
        }


class WorldlineService:
    def __init__(
        self,
        db: Database,
        locks: SessionLocks,
        sessions: SessionService,
        supervisor: KernelSupervisor,
        files: FileService,
        events: EventLog,
        replayer: Replayer,
        import_limit: int = 0,
        import_cells: int = 0,
    ):
        self.import_limit = import_limit  # bytes of an imported notebook (0: no limit)
        self.import_cells = import_cells  # its cells
        self.db = db
        self.locks = locks
        self.sessions = sessions
        self.supervisor = supervisor
        self.files = files
        self.events = events
        self.replayer = replayer
        self._discarding: set[asyncio.Task[None]] = set()

    async def replay(self, user: User, session_id: str) -> ReplayResult:
        """Re-run the session's record in a fresh kernel (the session's own is not touched)."""
        session = await self.sessions.get(user, session_id)
        cells = await self.db.cells.list(session.id)
        kernel = await self.sessions.pool.acquire(f".replay-{new_id()}", refill=False)
        total = sum(c.cell_type == "code" for c in cells)
        await self.events.publish(session.id, ReplayStarted(total=total))

        async def progress(report: CellReport, done: int, of: int) -> None:
            await self.events.publish(
                session.id, ReplayProgress(**report.json(), done=done, total=of)
            )

        started = time.perf_counter()
        try:
            reports = await self.replayer.run(kernel.id, kernel.workspace, cells, progress)
        finally:  # after the answer: nobody waits for the scratch kernel to go
            task = asyncio.create_task(self._discard(kernel.id, kernel.workspace))
            self._discarding.add(task)
            task.add_done_callback(self._discarding.discard)
        result = ReplayResult(reports, round((time.perf_counter() - started) * 1000))
        await self.events.publish(session.id, ReplayCompleted(**result.summary()))
        return result

    async def _discard(self, kernel_id: str, workspace: str) -> None:
        kernels = self.sessions.kernels
        await kernels.shutdown(kernel_id, now=True)
        await kernels.remove_workspace(workspace)
        self.sessions.pool.refill()  # held back while the replay ran

    async def stop(self) -> None:
        """Wait for scratch kernels still being shut down."""
        if self._discarding:
            await asyncio.gather(*self._discarding, return_exceptions=True)

    async def branch(self, user: User, session_id: str, cell_id: str) -> Session:
        parent = await self.sessions.get(user, session_id)
        await self.supervisor.namespaces.settle(parent.id)  # its last cell's, too
        cells = await self.db.cells.list(parent.id)
        upto = next((i for i, c in enumerate(cells) if c.id == cell_id), None)
        if upto is None:
            raise NotFound(f"no cell {cell_id!r} in this session")
        child = await self.sessions.create(user, f"{parent.title} (branch)", parent_id=parent.id)
        copied = [
            dataclasses.replace(
                cell,
                id=new_id(),
                session_id=child.id,
                metadata={**cell.metadata, "branched_from": cell.id},
            )
            for cell in cells[: upto + 1]
        ]
        await self.db.cells.append_many(copied)
        new_ids = {cell.id: copy.id for cell, copy in zip(cells, copied, strict=False)}
        await self.db.artifacts.add_many(
            [
                dataclasses.replace(a, id=new_id(), session_id=child.id, cell_id=new_ids[a.cell_id])
                for a in await self.db.artifacts.list_for_session(parent.id)
                if a.cell_id in new_ids
            ]
        )
        await self._rebuild(child, copied)
        return await self.sessions.get(user, child.id)

    async def import_notebook(
        self,
        user: User,
        raw: bytes,
        title: str = "",
        replay: bool = False,
        files: dict[str, bytes] | None = None,
    ) -> Session:
        """``files``: placed in the workspace first (recorded as uploads before the cells), as
        the files that lay beside the notebook."""
        _within(len(raw), "bytes", self.import_limit, "KERNELAGENT_IMPORT_LIMIT")
        try:
            nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
            nbformat.validate(nb)
            imported = cells_from_notebook(nb)
        except Exception as e:  # noqa: BLE001 - nbformat raises many kinds for malformed input
            raise Unprocessable(f"not a valid .ipynb notebook: {_first_line(e)}") from None
        _within(len(imported), "cells", self.import_cells, "KERNELAGENT_IMPORT_CELLS")
        meta = nb.metadata.get("kernelagent", {})
        title = title or str(meta.get("title") or "") or "Imported notebook"
        session = await self.sessions.create(user, title)
        for path, data in sorted((files or {}).items()):
            await self.files.upload(session, path, data)  # recorded as an upload cell
        cells = await self.db.cells.list(session.id)
        first = len(cells)
        imported_cells = [
            Cell(
                id=new_id(),
                session_id=session.id,
                index=index,
                cell_type=item["cell_type"],
                source=item["source"],
                role=item["role"],
                outputs=item["outputs"],
                execution_count=item["execution_count"],
                status=item["status"] or "ok",
                started_at=None,
                duration_ms=None,
                metadata={**item["metadata"], "imported_id": item["id"]},
            )
            for index, item in enumerate(imported, start=first)
        ]
        imported_cells = await vouched(self.db, user, imported_cells)
        if first == 0:
            await self.db.cells.append_many(imported_cells)
        else:
            for cell in imported_cells:  # after the uploads, at the next free indices
                await self.db.cells.append(cell)
        cells += imported_cells
        if replay:
            await self._rebuild(session, cells)
        return await self.sessions.get(user, session.id)

    async def _rebuild(self, session: Session, cells: list[Cell]) -> None:
        """Give the session's (fresh) kernel the state of the end of ``cells``, holding its
        lock: a cell sent to it meanwhile runs after, on the rebuilt state."""
        async with self.locks.hold(session.id, timeout=LOCK_WAIT):
            kernel_id = await self.supervisor.ensure(session)
            rebuilt = await self.supervisor.rebuild(session, kernel_id, cells)
            await self.supervisor.tell(session, rebuilt, "This session's kernel was started")


def _within(count: int, unit: str, limit: int, setting: str) -> None:
    """TooBig naming ``setting`` when an imported notebook has more ``unit`` than ``limit``
    (0: no limit)."""
    if limit and count > limit:
        raise TooBig(
            f"the notebook has {count:,} {unit}, more than the limit ({setting}={limit:,})",
            setting,
            limit,
        )


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
