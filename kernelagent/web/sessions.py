"""``/api/v1/sessions``: create, list, get, update, delete; run a cell; interrupt."""

from __future__ import annotations

import pydantic

from kernelagent.services.execution import ExecutionService
from kernelagent.services.files import FileService
from kernelagent.services.notebook_store import NotebookStore
from kernelagent.services.notebooks import notebook_cell
from kernelagent.services.sessions import TITLE_MAX, SessionService
from kernelagent.services.turns import TurnService
from kernelagent.web.base import ApiHandler, Request, operation
from kernelagent.web.serialize import (
    CellRun,
    SessionBody,
    SessionList,
    artifact_body,
    session_body,
)


class CreateSession(Request):
    title: str = ""


class UpdateSession(Request):
    title: str | None = None
    approval_mode: bool | None = None


class RunCell(Request):
    code: str
    timeout: float | None = pydantic.Field(default=None, gt=0, le=3600)

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")

    @pydantic.field_validator("timeout", mode="before")
    @classmethod
    def _int_is_a_number(cls, value: object) -> object:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SessionsHandler(ApiHandler):
    sessions: SessionService
    execution: ExecutionService

    @operation(
        "listSessions", "The caller's sessions, newest first", "sessions", answer=SessionList
    )
    async def get(self) -> None:
        sessions = await self.sessions.list(self.user)
        running = await self.execution.busy([s.id for s in sessions])
        self.write_model(SessionList(sessions=[session_body(s, s.id in running) for s in sessions]))

    @operation(
        "createSession",
        "Create a session with a kernel from the warm pool",
        "sessions",
        status=201,
        answer=SessionBody,
        body=CreateSession,
        errors=(503,),
        description=f"A title longer than {TITLE_MAX} characters is a 422.",
    )
    async def post(self) -> None:
        body = self.json_body(CreateSession)
        session = await self.sessions.create(self.user, body.title)
        self.write_model(session_body(session), status=201)


class SessionHandler(ApiHandler):
    held = frozenset({"DELETE"})
    sessions: SessionService
    execution: ExecutionService
    turns: TurnService

    @operation(
        "getSession",
        "One session, with the usage of all its turns",
        "sessions",
        answer=SessionBody,
        errors=(404,),
    )
    async def get(self, session_id: str) -> None:
        session = await self.sessions.get(self.user, session_id)
        usage = await self.turns.usage(session.id)
        busy = bool(await self.execution.busy([session.id]))
        self.write_model(session_body(session, busy, usage))

    @operation(
        "updateSession",
        "Rename, or switch approval mode",
        "sessions",
        answer=SessionBody,
        body=UpdateSession,
        errors=(404,),
        description="Absent or null fields are left as they are.",
    )
    async def patch(self, session_id: str) -> None:
        body = self.json_body(UpdateSession)
        session = await self.sessions.get(self.user, session_id)
        if body.title is not None:
            session = await self.sessions.rename(self.user, session_id, body.title)
        if body.approval_mode is not None:
            session = await self.sessions.set_approval_mode(
                self.user, session_id, body.approval_mode
            )
        self.write_model(session_body(session, bool(await self.execution.busy([session.id]))))

    @operation(
        "deleteSession",
        "Delete a session and stop its kernel",
        "sessions",
        status=204,
        errors=(404,),
    )
    async def delete(self, session_id: str) -> None:
        await self.sessions.delete(self.user, session_id)
        self.set_status(204)
        self.finish()


class CellsHandler(ApiHandler):
    """``POST …/cells {"code", "timeout"?}``: a person's cell, run directly (no LLM)."""

    held = frozenset({"POST"})

    sessions: SessionService
    execution: ExecutionService
    files: FileService
    notebooks: NotebookStore

    @operation(
        "runCell",
        "Run a code cell directly (a person's cell, no LLM)",
        "cells",
        answer=CellRun,
        body=RunCell,
        errors=(404, 429, 503),
        description="Waits for the session's lock in arrival order; a cell that times out is "
        "interrupted and keeps its partial output.",
    )
    async def post(self, session_id: str) -> None:
        body = self.json_body(RunCell)
        result = await self.execution.execute(
            session_id, body.code, role="web", timeout=body.timeout, owner=self.user
        )
        session = result.session
        self.notebooks.schedule_save(session)
        cell = notebook_cell(result.cell)
        artifacts = [artifact_body(a, self.files.signed_url(a.id)) for a in result.artifacts]
        self.write_model(CellRun.model_validate({"cell": cell, "artifacts": artifacts}))


class InterruptHandler(ApiHandler):
    """Stops the running cell and the agent's turn, if any."""

    turns: TurnService

    @operation(
        "interrupt",
        "Stop the running cell and the agent's turn",
        "cells",
        status=204,
        errors=(404,),
    )
    async def post(self, session_id: str) -> None:
        await self.turns.interrupt(self.user, session_id)
        self.set_status(204)
        self.finish()
