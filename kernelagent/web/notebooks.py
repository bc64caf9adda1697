"""``GET /api/v1/sessions/{id}/notebook``: the conversation as an ``.ipynb`` attachment."""

from __future__ import annotations

import re

from kernelagent.services.notebook_store import NotebookStore
from kernelagent.services.sessions import SessionService
from kernelagent.web.base import ApiHandler, operation
from kernelagent.web.serialize import Notebook


class NotebookHandler(ApiHandler):
    sessions: SessionService
    notebooks: NotebookStore

    @operation(
        "exportNotebook",
        "The session's record as an `.ipynb` attachment (also written to storage)",
        "worldlines",
        answer=Notebook,
        answer_type="application/x-ipynb+json",
        errors=(404,),
    )
    async def get(self, session_id: str) -> None:
        session = await self.sessions.get(self.user, session_id)
        data = await self.notebooks.export(session)
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", session.title).strip("-") or "notebook"
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.set_header("Content-Disposition", f'attachment; filename="{name}.ipynb"')
        self.finish(data)
