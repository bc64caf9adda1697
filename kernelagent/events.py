"""The events of a session's stream, each declared once as a pydantic model.

Publishers build these models (so an event cannot be malformed), event logs store and return
them (``Logged``), the SSE endpoint writes them, the session page rebuilds its live state from
them, and the OpenAPI document takes their JSON Schema from here. ``type`` is the SSE ``event:``
name and the discriminator of ``SessionEvent``; the rest is the ``data:`` JSON.

Example::

    await events.publish(session_id, TurnStarted(turn_id=turn.id, model="gpt-4o-mini"))
    for logged in await events.read(session_id, after=None):
        print(logged.id, logged.type, logged.data)
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

import pydantic


class _Event(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    def data(self) -> dict[str, Any]:
        """The SSE ``data:`` payload (everything but ``type``), JSON-ready."""
        return self.model_dump(mode="json", exclude={"type"})


class TurnStarted(_Event):
    """The agent started a turn (a user message, or a turn resumed after the user answered)."""

    type: Literal["turn.started"] = "turn.started"
    turn_id: str
    model: str


class MessageDelta(_Event):
    """A piece of the model's message, as it streams."""

    type: Literal["message.delta"] = "message.delta"
    turn_id: str
    text: str


class MessageRetry(_Event):
    """The LLM call failed and is retried."""

    type: Literal["message.retry"] = "message.retry"
    turn_id: str
    attempt: int
    error: str


class MessageCompleted(_Event):
    """The model's message is recorded as the markdown cell ``cell_id``."""

    type: Literal["message.completed"] = "message.completed"
    turn_id: str
    cell_id: str
    text: str


class CellAdded(_Event):
    """A markdown cell (a message, a note, an upload) joined the record."""

    type: Literal["cell.added"] = "cell.added"
    cell_id: str
    index: int
    role: str
    source: str
    metadata: dict[str, Any]


class CellStarted(_Event):
    """A code cell started, whoever sent it (agent, web, gateway)."""

    type: Literal["cell.started"] = "cell.started"
    cell_id: str
    index: int
    code: str
    role: str
    metadata: dict[str, Any]


class CellOutput(_Event):
    """One output of a running cell, new or changed, at ``index``; ``cleared``: the outputs
    before it were cleared first (with no ``output``: just cleared)."""

    type: Literal["cell.output"] = "cell.output"
    cell_id: str
    index: int | None = None
    output: dict[str, Any] | None = None
    cleared: bool = False


class CellCompleted(_Event):
    type: Literal["cell.completed"] = "cell.completed"
    cell_id: str
    index: int
    status: str
    execution_count: int | None
    duration_ms: int | None


class AskUser(_Event):
    """The turn waits for the user's answer (``…/turns/{turn_id}/answer``)."""

    type: Literal["ask_user"] = "ask_user"
    turn_id: str
    question: str
    cell_id: str


class ApprovalRequired(_Event):
    """The turn waits for the user to approve, edit or reject ``code``."""

    type: Literal["approval.required"] = "approval.required"
    turn_id: str
    cell_id: str
    code: str


class UsageReported(_Event):
    """The turn's tokens (and cost, when a price is configured) so far."""

    type: Literal["usage"] = "usage"
    turn_id: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


class TurnCompleted(_Event):
    type: Literal["turn.completed"] = "turn.completed"
    turn_id: str


class TurnFailed(_Event):
    """The turn ended without an answer: ``status`` "failed" or "interrupted", and why."""

    type: Literal["turn.failed"] = "turn.failed"
    turn_id: str
    status: str
    error: str | None


class ReplayStarted(_Event):
    type: Literal["replay.started"] = "replay.started"
    total: int


class ReplayProgress(_Event):
    """One cell replayed: ``match``, ``differ`` (with a diff) or ``error``."""

    type: Literal["replay.progress"] = "replay.progress"
    cell_id: str
    index: int
    status: str
    diff: str
    error: str | None
    duration_ms: int
    done: int
    total: int


class ReplayCompleted(_Event):
    type: Literal["replay.completed"] = "replay.completed"
    match: int
    differ: int
    error: int


SessionEvent = Annotated[
    TurnStarted
    | MessageDelta
    | MessageRetry
    | MessageCompleted
    | CellAdded
    | CellStarted
    | CellOutput
    | CellCompleted
    | AskUser
    | ApprovalRequired
    | UsageReported
    | TurnCompleted
    | TurnFailed
    | ReplayStarted
    | ReplayProgress
    | ReplayCompleted,
    pydantic.Field(discriminator="type"),
]
EVENTS: pydantic.TypeAdapter[SessionEvent] = pydantic.TypeAdapter(SessionEvent)
EVENT_MODELS: tuple[type[_Event], ...] = typing.get_args(typing.get_args(SessionEvent)[0])
EVENT_TYPES: tuple[str, ...] = tuple(m.model_fields["type"].default for m in EVENT_MODELS)


def parse_event(type: str, data: dict[str, Any]) -> SessionEvent:
    """An event read back from a log (pydantic.ValidationError when it is not one)."""
    return EVENTS.validate_python({**data, "type": type})


@dataclasses.dataclass(frozen=True)
class Logged:
    """An event as a log holds it: with its id (increasing per session; the SSE ``id:``)."""

    id: str
    event: SessionEvent

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def data(self) -> dict[str, Any]:
        return self.event.data()
