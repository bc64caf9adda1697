"""The agent's turns: ``…/messages`` starts one; ``…/turns/{id}`` shows, answers, approves."""

from __future__ import annotations

from typing import Literal

import pydantic

from kernelagent.services.agent import AgentService
from kernelagent.web.base import ApiHandler, Request
from kernelagent.web.serialize import turn_json


class NewMessage(Request):
    content: str = pydantic.Field(min_length=1)
    model: str | None = pydantic.Field(default=None, min_length=1, max_length=200)


class Answer(Request):
    text: str


class Approval(Request):
    decision: Literal["approve", "reject", "edit"]
    code: str | None = None


class MessagesHandler(ApiHandler):
    """``POST {"content", "model"?}`` → 202 ``{"turn_id"}``; the turn runs in the background."""

    agent: AgentService

    async def post(self, session_id: str) -> None:
        body = self.json_body(NewMessage)
        turn = await self.agent.start(self.user, session_id, body.content, body.model)
        self.write_json({"turn_id": turn.id, "turn": turn_json(turn)}, status=202)


class TurnHandler(ApiHandler):
    agent: AgentService

    async def get(self, session_id: str, turn_id: str) -> None:
        self.write_json(turn_json(await self.agent.turn(self.user, session_id, turn_id)))


class AnswerHandler(ApiHandler):
    agent: AgentService

    async def post(self, session_id: str, turn_id: str) -> None:
        body = self.json_body(Answer)
        await self.agent.answer(self.user, session_id, turn_id, body.text)
        self.write_json({"turn_id": turn_id}, status=202)


class ApprovalHandler(ApiHandler):
    agent: AgentService

    async def post(self, session_id: str, turn_id: str) -> None:
        body = self.json_body(Approval)
        await self.agent.decide(self.user, session_id, turn_id, body.decision, body.code)
        self.write_json({"turn_id": turn_id}, status=202)
