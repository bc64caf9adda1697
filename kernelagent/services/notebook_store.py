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
        self._due: dict[str, float] = {}  # session id → when its save is due (loop time)

    async def notebook(self, session: Session) -> nbformat.NotebookNode:
        cells = await self.db.cells.list(session.id)
        return build_notebook(cells, title=session.title, session_id=session.id)

    async def export(self, session: Session) -> bytes:
        """The session's notebook as ``.ipynb`` bytes, also written to storage."""
        data = notebook_bytes(await self.notebook(session))
        await self.storage.put(notebook_key(session.id), data)
        return data

    def schedule_save(self, session: Session) -> None:
        """Write the notebook to storage once activity has paused for ``debounce`` seconds.
        Each call moves the session's deadline; one task per session waits for it (a cell
        costs no task of its own)."""
        self._sessions[session.id] = session
        self._due[session.id] = asyncio.get_running_loop().time() + self.debounce
        if session.id not in self._pending:
            self._pending[session.id] = asyncio.create_task(
                self._save_later(session.id), name=f"notebook-save-{session.id}"
            )

    async def _save_later(self, session_id: str) -> None:
        """Write once activity paused, and again if more came while it was written; while
        storage fails, try again (backing off to ``RETRY_CAP`` s, or sooner after new
        activity) until it takes the notebook."""
        loop = asyncio.get_running_loop()
        wait = self.debounce
        try:
            while True:
                while (left := self._due[session_id] - loop.time()) > 0:
                    await asyncio.sleep(left)
                due = self._due[session_id]
                try:
                    await self._save(self._sessions[session_id])
                except Exception as e:  # noqa: BLE001 - storage away: the rows are the record
                    wait = min(max(wait, 1.0) * 2, RETRY_CAP)
                    log.warning(
                        "could not write the notebook of session %s to storage (again in "
                        "%.0f s): %s", session_id, wait, e,
                    )  # fmt: skip
                    if self._due[session_id] == due:  # no activity meanwhile
                        self._due[session_id] = loop.time() + wait
                    continue
                if self._due[session_id] == due:  # nothing came while it was written
                    return
        finally:
            if self._pending.get(session_id) is asyncio.current_task():
                del self._pending[session_id]
                self._sessions.pop(session_id, None)
                self._due.pop(session_id, None)

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
        self._due.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in sessions:
            with contextlib.suppress(Exception):
                await self._save(session)
