"""Recorder: the notebook record, appended in order, and the session's events.

Every cell a session gets (code cells from the execution path, messages, notes, uploads) takes the
next index under the session's lock, so the record's order is the order things happened, whoever
wrote them. Each addition is published on the session's event log; a lost event never loses a
cell (the record is the truth, events are how watchers hear of it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kernelagent.domain import Cell, CellStatus, CellType, Role, new_id, now
from kernelagent.events import CellAdded, SessionEvent
from kernelagent.services.ports import Database, EventLog, SessionLocks

log = logging.getLogger(__name__)

LOCK_WAIT = 600.0  # seconds a cell may queue behind others before "session is busy" (429)


def new_cell(
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


class Recorder:
    def __init__(self, db: Database, locks: SessionLocks, events: EventLog | None):
        self.db = db
        self.locks = locks
        self.events = events
        # told of every event this process publishes (metrics); each must be quick and not fail
        self.observers: list[Callable[[SessionEvent], None]] = []

    async def markdown(
        self, session_id: str, role: Role, text: str, metadata: dict[str, Any] | None = None
    ) -> Cell:
        """Append a markdown cell (a message or a note) in order with the code cells."""
        async with self.locks.hold(session_id, timeout=LOCK_WAIT):
            return await self.markdown_held(session_id, role, text, metadata)

    async def markdown_held(
        self, session_id: str, role: Role, text: str, metadata: dict[str, Any] | None = None
    ) -> Cell:
        """The same, for a caller that holds the session's lock already."""
        cell = await self.db.cells.append_next(
            new_cell(session_id, "markdown", text, role, "ok", dict(metadata or {}))
        )
        await self.publish(
            session_id,
            CellAdded(
                cell_id=cell.id,
                index=cell.index,
                role=role,
                source=text,
                metadata=cell.metadata,
            ),
        )
        return cell

    async def note(self, session_id: str, text: str, held: bool = False) -> Cell:
        """A system note (italic markdown): a restart, a rebuild, why a turn stopped."""
        if held:
            return await self.markdown_held(session_id, "system", f"*{text}*")
        return await self.markdown(session_id, "system", f"*{text}*")

    async def publish(self, session_id: str, event: SessionEvent) -> None:
        for observe in self.observers:
            observe(event)
        if self.events is None:
            return
        try:
            await self.events.publish(session_id, event)
        except Exception:  # a lost event must not lose the cell
            log.exception("could not publish %s for session %s", event.type, session_id)
