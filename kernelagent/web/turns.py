"""The agent's turns: ``…/messages`` starts one; ``…/turns/{id}`` shows, answers, approves."""

from __future__ import annotations

from typing import Literal

import pydantic

from kernelagent.services.turns import TurnService
from kernelagent.web.base import ApiHandler, Request, operation
from kernelagent.web.serialize import TurnAccepted, TurnBody, TurnRef, turn_body


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

    turns: TurnService

    @operation(
        "sendMessage",
        "Start an agent turn",
        "turns",
        status=202,
        answer=TurnAccepted,
        body=NewMessage,
        errors=(404, 409, 503),
        description="Its progress is on the event stream. 409 while another turn runs; 503 "
        "without an LLM configured.",
    )
    async def post(self, session_id: str) -> None:
        body = self.json_body(NewMessage)
        turn = await self.turns.start(self.user, session_id, body.content, body.model)
        self.write_model(TurnAccepted(turn_id=turn.id, turn=turn_body(turn)), status=202)


class TurnHandler(ApiHandler):
    turns: TurnService

    @operation(
        "getTurn", "One turn: status, model, usage, error", "turns", answer=TurnBody, errors=(404,)
    )
    async def get(self, session_id: str, turn_id: str) -> None:
        self.write_model(turn_body(await self.turns.turn(self.user, session_id, turn_id)))


class AnswerHandler(ApiHandler):
    turns: TurnService

    @operation(
        "answerTurn",
        "Answer the agent's `ask_user`",
        "turns",
        status=202,
        answer=TurnRef,
        body=Answer,
        errors=(404, 409),
    )
    async def post(self, session_id: str, turn_id: str) -> None:
        body = self.json_body(Answer)
        await self.turns.answer(self.user, session_id, turn_id, body.text)
        self.write_model(TurnRef(turn_id=turn_id), status=202)


class ApprovalHandler(ApiHandler):
    turns: TurnService

    @operation(
        "approveCell",
        "Approve, edit or reject the agent's proposed cell (approval mode)",
        "turns",
        status=202,
        answer=TurnRef,
        body=Approval,
        errors=(404, 409),
        description="`edit` needs the edited code in `code` (else 400).",
    )
    async def post(self, session_id: str, turn_id: str) -> None:
        body = self.json_body(Approval)
        await self.turns.decide(self.user, session_id, turn_id, body.decision, body.code)
        self.write_model(TurnRef(turn_id=turn_id), status=202)
