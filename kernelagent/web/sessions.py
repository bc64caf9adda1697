"""``/api/v1/sessions``: create, list, get, update, delete; run a cell; interrupt."""

from __future__ import annotations

import pydantic

from kernelagent.services.agent import AgentService
from kernelagent.services.execution import ExecutionService
from kernelagent.services.files import FileService
from kernelagent.services.notebook_store import NotebookStore
from kernelagent.services.notebooks import build_notebook
from kernelagent.services.sessions import SessionService
from kernelagent.web.base import ApiHandler, Request
from kernelagent.web.serialize import artifact_json, session_json


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

    async def get(self) -> None:
        sessions = await self.sessions.list(self.user)
        running = self.execution.running
        self.write_json({"sessions": [session_json(s, s.id in running) for s in sessions]})

    async def post(self) -> None:
        body = self.json_body(CreateSession)
        session = await self.sessions.create(self.user, body.title)
        self.write_json(session_json(session), status=201)


class SessionHandler(ApiHandler):
    sessions: SessionService
    execution: ExecutionService
    agent: AgentService

    async def get(self, session_id: str) -> None:
        session = await self.sessions.get(self.user, session_id)
        usage = await self.agent.usage(session.id)
        self.write_json(session_json(session, session.id in self.execution.running, usage))

    async def patch(self, session_id: str) -> None:
        body = self.json_body(UpdateSession)
        session = await self.sessions.get(self.user, session_id)
        if body.title is not None:
            session = await self.sessions.rename(self.user, session_id, body.title)
        if body.approval_mode is not None:
            session = await self.sessions.set_approval_mode(
                self.user, session_id, body.approval_mode
            )
        self.write_json(session_json(session, session.id in self.execution.running))

    async def delete(self, session_id: str) -> None:
        await self.sessions.delete(self.user, session_id)
        self.set_status(204)
        self.finish()


class CellsHandler(ApiHandler):
    """``POST …/cells {"code", "timeout"?}``: a person's cell, run directly (no LLM)."""

    sessions: SessionService
    execution: ExecutionService
    files: FileService
    notebooks: NotebookStore

    async def post(self, session_id: str) -> None:
        body = self.json_body(RunCell)
        result = await self.execution.execute(
            session_id, body.code, role="web", timeout=body.timeout, owner=self.user
        )
        session = result.session
        self.notebooks.schedule_save(session)
        cell = build_notebook([result.cell], title=session.title, session_id=session.id).cells[0]
        self.write_json(
            {
                "cell": cell,
                "artifacts": [
                    artifact_json(a, self.files.signed_url(a.id)) for a in result.artifacts
                ],
            }
        )


class InterruptHandler(ApiHandler):
    """Stops the running cell and the agent's turn, if any."""

    agent: AgentService

    async def post(self, session_id: str) -> None:
        await self.agent.interrupt(self.user, session_id)
        self.set_status(204)
        self.finish()
