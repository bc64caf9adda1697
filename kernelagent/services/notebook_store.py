"""The ``.ipynb`` of each session in storage, next to its files.

The database rows are the durable record (one row per cell, written before a cell's answer); the
``.ipynb`` in storage is a rendering of them, refreshed a moment after activity stops (debounced,
so a burst of cells writes it once, and again until storage takes it) and on every export.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nbformat

from kernelagent.domain import Session
from kernelagent.services.files import notebook_key
from kernelagent.services.notebooks import build_notebook, notebook_bytes
from kernelagent.services.ports import Database, Storage

log = logging.getLogger(__name__)
RETRY_CAP = 60.0  # seconds between attempts to write a notebook while storage fails


class NotebookStore:
    def __init__(self, db: Database, storage: Storage, debounce: float = 2.0):
        self.db = db
        self.storage = storage
        self.debounce = debounce
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._sessions: dict[str, Session] = {}

    async def notebook(self, session: Session) -> nbformat.NotebookNode:
        cells = await self.db.cells.list(session.id)
        return build_notebook(cells, title=session.title, session_id=session.id)

    async def export(self, session: Session) -> bytes:
        """The session's notebook as ``.ipynb`` bytes, also written to storage."""
        data = notebook_bytes(await self.notebook(session))
        await self.storage.put(notebook_key(session.id), data)
        return data

    def schedule_save(self, session: Session) -> None:
        """Write the notebook to storage once activity has paused for ``debounce`` seconds."""
        previous = self._pending.pop(session.id, None)
        if previous:
            previous.cancel()
        self._sessions[session.id] = session
        self._pending[session.id] = asyncio.create_task(
            self._save_later(session), name=f"notebook-save-{session.id}"
        )

    async def _save_later(self, session: Session) -> None:
        """Write once activity paused; while storage fails, try again (backing off to
        ``RETRY_CAP`` s) until it takes the notebook or new activity schedules a fresh save."""
        wait = self.debounce
        try:
            while True:
                await asyncio.sleep(wait)
                try:
                    await self._save(session)
                    return
                except Exception as e:  # noqa: BLE001 - storage away: the rows are the record
                    log.warning(
                        "could not write the notebook of session %s to storage (again in "
                        "%.0f s): %s", session.id, min(wait * 2, RETRY_CAP), e,
                    )  # fmt: skip
                    wait = min(max(wait, 1.0) * 2, RETRY_CAP)
        finally:
            if self._pending.get(session.id) is asyncio.current_task():
                del self._pending[session.id]
                self._sessions.pop(session.id, None)

    async def _save(self, session: Session) -> None:
        """Write the notebook unless the session is gone: it may be deleted while a save waits
        (in this process or another), and nothing of it may reach storage after that."""
        if await self.db.sessions.get(session.id) is None:
            return
        await self.export(session)
        if await self.db.sessions.get(session.id) is None:  # deleted while it was written
            await self.storage.delete(notebook_key(session.id))

    async def stop(self) -> None:
        """Flush pending saves (shutdown must not lose the last cells' notebook)."""
        tasks, sessions = list(self._pending.values()), list(self._sessions.values())
        self._pending.clear()
        self._sessions.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in sessions:
            with contextlib.suppress(Exception):
                await self._save(session)
