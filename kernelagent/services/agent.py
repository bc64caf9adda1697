"""AgentService: a turn is a tool-calling loop over the session's kernel, published as events.

``launch()`` runs a turn (started by ``TurnService``) in a background task of this process (it goes
on when the client goes away): build the conversation from the notebook record → ask the model
(streamed, ``message.delta``) → record its text → run its tool calls (``services.tools``:
``run_python`` through ``ExecutionService``, so the same lock and record as a person's cell) → give
the model a budgeted view of the results → again, until it answers without calling a tool, or a
budget (steps, wall clock, tokens) or an interrupt stops it.

When the turn needs the user (``ask_user``, or a cell in approval mode) it pauses
(``AwaitingUser``): no task waits, the turn row keeps what it waits for (``pending``) and the
question is in the record. The answer, sent to any server process, even after a restart, resumes
it (``TurnService`` decides where): the paused call is finished with the user's answer, the calls
after it are run, and the loop goes on from the record. Every way a turn ends is recorded on the
turn row and published (``turn.completed`` or ``turn.failed`` with the reason); budget stops and
LLM failures also leave a note in the notebook.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Any, Literal

from kernelagent import logs
from kernelagent.domain import (
    Artifact,
    Cell,
    Reply,
    Session,
    ToolCall,
    Turn,
    Usage,
    new_id,
    now,
)
from kernelagent.errors import LLMError
from kernelagent.events import (
    ApprovalRequired,
    AskUser,
    MessageCompleted,
    MessageDelta,
    MessageRetry,
    SessionEvent,
    TurnCompleted,
    TurnFailed,
    UsageReported,
)
from kernelagent.services import tools
from kernelagent.services.conversation import messages_from_record, trim
from kernelagent.services.execution import ExecutionService
from kernelagent.services.files import FileService
from kernelagent.services.output_views import view_artifact
from kernelagent.services.ports import ChatModel, Database, RuntimeState
from kernelagent.services.prompt import WORKSPACE_PROBE, parse_probe, system_prompt
from kernelagent.services.recording import Recorder
from kernelagent.services.sessions import SessionService
from kernelagent.services.tool_results import describe_cell, pictures

log = logging.getLogger(__name__)

Decision = Literal["approve", "reject", "edit"]


class TurnStopped(Exception):
    """A budget or the user ended the turn; the message says which."""


class AwaitingUser(Exception):
    """The turn pauses for the user: ``pending`` is kept with the turn, ``event`` published."""

    def __init__(self, pending: dict[str, Any], event: SessionEvent):
        super().__init__(pending.get("kind"))
        self.pending = pending
        self.event = event


@dataclasses.dataclass(frozen=True)
class AgentLimits:
    max_steps: int = 20
    turn_timeout: float = 600.0
    token_budget: int = 200_000
    tool_result_chars: int = 4000
    history_tokens: int = 60_000
    cell_timeout: float = 30.0
    memory_limit: int = 1024**3
    vision: bool = False
    packages: str = "off"  # what %pip install may install: any, "only a, b", or off


@dataclasses.dataclass
class _Active:
    """A turn running in this process."""

    turn: Turn
    task: asyncio.Task[None] | None = None
    usage: Usage = dataclasses.field(default_factory=Usage)
    elapsed: float = 0.0  # seconds the turn ran before its last pause (the clock's budget)
    started: float = 0.0  # loop time this part of the turn started
    in_cell: bool = False
    stopping: bool = False
    failed_attempts: int = 0  # run_python cells in a row that did not succeed

    def spent(self) -> float:
        return self.elapsed + asyncio.get_running_loop().time() - self.started


class AgentService:
    def __init__(
        self,
        db: Database,
        sessions: SessionService,
        execution: ExecutionService,
        files: FileService,
        recorder: Recorder,
        state: RuntimeState,
        llm: ChatModel | None,
        default_model: str,
        limits: AgentLimits,
        prices: dict[str, tuple[float, float]] | None = None,
    ):
        self.db = db
        self.sessions = sessions
        self.execution = execution
        self.files = files
        self.recorder = recorder
        self.state = state
        self.llm = llm
        self.default_model = default_model
        self.limits = limits
        self.prices = prices or {}
        self.active: dict[str, _Active] = {}  # session id → its turn running in this process
        self._stopping = False
        self.draining = False  # shutting down: no new turn starts here
        self.handlers = {
            "run_python": self._run_python,
            "ask_user": self._ask_user,
            "read_artifact": self._read_artifact,
        }

    # ------------------------------------------------------------------ turns in this process

    def launch(self, session: Session, turn: Turn) -> None:
        """Run (or go on with) ``turn`` in this process, in a task of its own."""
        if session.id in self.active:  # already running here (a signal and a recovery met)
            return
        active = _Active(turn, usage=Usage(turn.prompt_tokens, turn.completion_tokens))
        self.active[session.id] = active
        active.task = asyncio.create_task(self._run(session, active), name=f"turn-{turn.id}")

    def runs(self, turn_id: str) -> bool:
        """Whether this process runs the turn now."""
        return any(a.turn.id == turn_id for a in self.active.values())

    async def interrupt_here(self, session_id: str) -> None:
        """Stop the session's cell and turn, as far as they run in this process."""
        await self.execution.interrupt_here(session_id)
        active = self.active.get(session_id)
        if active is None:
            return
        active.stopping = True
        if not active.in_cell and active.task is not None:
            active.task.cancel()  # the cell itself ends as "interrupted", then the loop stops

    async def wait(self, session_id: str) -> None:
        """Until the session's turn running in this process (if any) has ended or paused."""
        active = self.active.get(session_id)
        if active is not None and active.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(active.task)

    async def drain(self, timeout: float) -> None:
        """Take no new turn; let those running here finish, for up to ``timeout`` seconds
        (paused ones hold no task and need nothing)."""
        self.draining = True
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks and timeout > 0:
            await asyncio.wait(tasks, timeout=timeout)

    async def stop(self) -> None:
        self._stopping = True
        for active in list(self.active.values()):
            if active.task is not None:
                active.task.cancel()
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.llm is not None:
            await self.llm.close()

    # ------------------------------------------------------------------ the loop

    async def _run(self, session: Session, active: _Active) -> None:
        turn = active.turn
        logs.session_id.set(session.id)  # this task's log lines say which turn they are about
        logs.turn_id.set(turn.id)
        error: str | None = None
        status: Literal["completed", "failed", "interrupted", "waiting"] = "completed"
        pause: AwaitingUser | None = None
        active.started = asyncio.get_running_loop().time()
        try:
            await self._loop(session, active)
        except AwaitingUser as e:
            status, pause = "waiting", e
        except asyncio.CancelledError:
            if self._stopping and not active.stopping:
                status, error = "failed", "the server stopped during this turn"
            else:
                status, error = "interrupted", "interrupted by the user"
        except TurnStopped as e:
            status, error = ("interrupted" if active.stopping else "failed"), str(e)
        except LLMError as e:
            status, error = "failed", str(e)
        except Exception as e:
            log.exception("turn %s failed", turn.id)
            status, error = "failed", f"internal error: {type(e).__name__}: {e}"
        finally:
            self.active.pop(session.id, None)
        usage = active.usage
        totals = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost": self._cost(turn.model, usage),
        }
        try:
            if pause is not None:
                pending = {
                    **pause.pending,
                    "elapsed": active.spent(),
                    "failed_attempts": active.failed_attempts,
                }
                await self.db.turns.update(turn.id, status="waiting", pending=pending, **totals)
                await self._publish(session.id, pause.event)  # the turn is answerable now
                return
            if error and status == "failed":
                with contextlib.suppress(Exception):
                    await self.recorder.note(session.id, f"The turn stopped: {error}")
            await self.db.turns.update(
                turn.id, status=status, ended_at=now(), error=error, pending=None, **totals
            )
            if status == "completed":
                await self._publish(session.id, TurnCompleted(turn_id=turn.id))
            else:
                await self._publish(
                    session.id, TurnFailed(turn_id=turn.id, status=status, error=error)
                )
        finally:
            await self.state.release("turn", turn.id)

    async def _loop(self, session: Session, active: _Active) -> None:
        assert self.llm is not None
        limits = self.limits
        pending = active.turn.pending
        first = 0
        if pending:  # resumed: finish the paused call and the calls after it, then go on
            active.elapsed = float(pending.get("elapsed", 0.0))
            active.failed_attempts = int(pending.get("failed_attempts", 0))
            first = int(pending["step"])
            await self._finish_paused(session, active, pending)
            calls = [ToolCall(**c) for c in pending.get("remaining", [])]
            await self._run_calls(session, active, first, calls)
            await self.db.turns.update(active.turn.id, pending=None)
            first += 1
        system = {"role": "system", "content": await self._system_prompt(session)}
        history = await self._history(session)
        for step in range(first, limits.max_steps):
            remaining = limits.turn_timeout - active.spent()
            if remaining <= 0:
                raise TurnStopped(
                    f"the turn reached its time budget of {limits.turn_timeout:g} s "
                    "(KERNELAGENT_AGENT_TURN_TIMEOUT)"
                )
            messages = trim([system, *history], limits.history_tokens)
            try:
                async with asyncio.timeout(remaining):
                    reply = await self._ask_model(session, active, messages)
            except TimeoutError:
                raise TurnStopped(
                    f"the turn reached its time budget of {limits.turn_timeout:g} s "
                    "(KERNELAGENT_AGENT_TURN_TIMEOUT)"
                ) from None
            active.usage = active.usage + reply.usage
            await self._publish_usage(session.id, active)
            if reply.text.strip():
                cell = await self.recorder.markdown(
                    session.id, "assistant", reply.text, {"turn_id": active.turn.id, "step": step}
                )
                await self._publish(
                    session.id,
                    MessageCompleted(turn_id=active.turn.id, cell_id=cell.id, text=reply.text),
                )
            if not reply.tool_calls:
                return
            history.append(
                {
                    "role": "assistant",
                    "content": reply.text or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in reply.tool_calls
                    ],
                }
            )
            history += await self._run_calls(session, active, step, reply.tool_calls)
            if active.stopping:
                raise TurnStopped("interrupted by the user")
            if active.usage.total >= limits.token_budget:
                raise TurnStopped(
                    f"the turn used {active.usage.total} tokens, over its budget of "
                    f"{limits.token_budget} (KERNELAGENT_AGENT_TOKEN_BUDGET)"
                )
        raise TurnStopped(
            f"the turn reached its step budget of {limits.max_steps} model calls "
            "(KERNELAGENT_AGENT_MAX_STEPS) without a final answer"
        )

    async def _run_calls(
        self, session: Session, active: _Active, step: int, calls: list[ToolCall]
    ) -> list[dict[str, Any]]:
        """Run ``calls`` in order; their results as chat messages (images last). A call that
        needs the user pauses the turn with the calls after it still to run."""
        messages: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        for n, call in enumerate(calls):
            try:
                result, pictures = await self._call_tool(session, active, step, call)
            except AwaitingUser as pause:
                pause.pending.update(
                    step=step, remaining=[dataclasses.asdict(c) for c in calls[n + 1 :]]
                )
                raise
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            images += pictures
        if images:
            messages.append(
                {"role": "user", "content": [{"type": "text", "text": "[images]"}, *images]}
            )
        return messages

    async def _ask_model(
        self, session: Session, active: _Active, messages: list[dict[str, Any]]
    ) -> Reply:
        assert self.llm is not None
        turn_id = active.turn.id

        async def on_text(piece: str) -> None:
            await self._publish(session.id, MessageDelta(turn_id=turn_id, text=piece))

        async def on_retry(attempt: int, failure: str) -> None:
            await self._publish(
                session.id, MessageRetry(turn_id=turn_id, attempt=attempt, error=failure)
            )

        return await self.llm.complete(
            active.turn.model, messages, tools.SCHEMAS, on_text, on_retry
        )

    # ------------------------------------------------------------------ tools

    async def _call_tool(
        self, session: Session, active: _Active, step: int, call: ToolCall
    ) -> tuple[str, list[dict[str, Any]]]:
        try:
            tool, args = tools.parse_call(call)
        except tools.BadCall as e:
            return str(e), []
        return await self.handlers[tool.name](session, active, step, call, args)

    def _meta(self, active: _Active, step: int, call: ToolCall) -> dict[str, Any]:
        return {"turn_id": active.turn.id, "step": step, "tool_call_id": call.id}

    async def _run_python(
        self, session: Session, active: _Active, step: int, call: ToolCall, args: Any
    ) -> tuple[str, list[dict[str, Any]]]:
        meta = {**self._meta(active, step, call), "attempt": active.failed_attempts + 1}
        current = await self.db.sessions.get(session.id)
        if current is not None and current.approval_mode:
            proposal = new_id()
            raise AwaitingUser(
                {
                    "kind": "approval",
                    "call": dataclasses.asdict(call),
                    "code": args.code,
                    "proposal": proposal,
                    "meta": meta,
                },
                ApprovalRequired(turn_id=active.turn.id, cell_id=proposal, code=args.code),
            )
        return await self._execute(session, active, args.code, meta)

    async def _execute(
        self, session: Session, active: _Active, code: str, meta: dict[str, Any]
    ) -> tuple[str, list[dict[str, Any]]]:
        active.in_cell = True
        try:
            execution = await self.execution.execute(
                session.id, code, role="agent", timeout=self.limits.cell_timeout, metadata=meta
            )
        finally:
            active.in_cell = False
        cell = execution.cell
        active.failed_attempts = 0 if cell.status == "ok" else active.failed_attempts + 1
        return self.describe_cell(cell, execution.artifacts), self._pictures(cell)

    async def _ask_user(
        self, session: Session, active: _Active, step: int, call: ToolCall, args: Any
    ) -> tuple[str, list[dict[str, Any]]]:
        meta = self._meta(active, step, call)
        cell = await self.recorder.markdown(
            session.id, "assistant", args.question, {**meta, "tool": "ask_user"}
        )
        raise AwaitingUser(
            {"kind": "answer", "call": dataclasses.asdict(call), "question": args.question},
            AskUser(turn_id=active.turn.id, question=args.question, cell_id=cell.id),
        )

    async def _finish_paused(
        self, session: Session, active: _Active, pending: dict[str, Any]
    ) -> None:
        """The paused call, now that the user answered or decided."""
        call = ToolCall(**pending["call"])
        if pending["kind"] == "answer":
            await self.recorder.markdown(
                session.id,
                "user",
                str(pending["answer"]),
                {"turn_id": active.turn.id, "answer_to": call.id},
            )
            return
        meta, code = dict(pending["meta"]), str(pending["code"])
        if pending["decision"] == "reject":
            await self.recorder.markdown(
                session.id,
                "system",
                "*The user rejected this cell; it did not run.*",
                {**meta, "proposed_code": code, "rejected": True},
            )
            return
        if pending["decision"] == "edit":
            meta["proposed_code"], code = code, str(pending["code_edited"])
        await self._execute(session, active, code, meta)

    async def _read_artifact(
        self, session: Session, active: _Active, step: int, call: ToolCall, args: Any
    ) -> tuple[str, list[dict[str, Any]]]:
        artifact = await self.db.artifacts.get(args.artifact_id)
        if artifact is None or artifact.session_id != session.id:
            return f"Error: no artifact {args.artifact_id!r} in this session.", []
        data = await self.files.artifact_bytes(artifact)
        try:
            budget = self.limits.tool_result_chars * 2
            return view_artifact(artifact.mime_type, data, args.view, budget=budget), []
        except ValueError as e:
            return f"Error: {e}", []

    # ------------------------------------------------------------------ what the model sees

    def describe_cell(
        self, cell: Cell, artifacts: list[Artifact] | tuple[Artifact, ...] = ()
    ) -> str:
        """The tool result for one executed cell (``tool_results.describe_cell``)."""
        limits = self.limits
        return describe_cell(
            cell, artifacts, limits.tool_result_chars, limits.cell_timeout, limits.memory_limit
        )

    def _pictures(self, cell: Cell) -> list[dict[str, Any]]:
        return pictures(cell) if self.limits.vision else []

    async def _system_prompt(self, session: Session) -> str:
        try:
            workspace = parse_probe(await self.execution.evaluate(session.id, WORKSPACE_PROBE))
        except Exception as e:  # noqa: BLE001 - the prompt is still useful without it
            log.warning("could not list the workspace of session %s: %s", session.id, e)
            workspace = {}
        return system_prompt(
            workspace, self.limits.cell_timeout, self.limits.memory_limit, self.limits.packages
        )

    async def _history(self, session: Session) -> list[dict[str, Any]]:
        cells = await self.db.cells.list(session.id)
        artifacts: dict[str, list[Artifact]] = {}
        for cell in cells:
            if cell.role == "agent" and any(
                "data" in o and any(m.startswith("image/") for m in o["data"]) for o in cell.outputs
            ):
                artifacts[cell.id] = await self.db.artifacts.list_for_cell(cell.id)
        return messages_from_record(
            cells,
            lambda c: self.describe_cell(c, artifacts.get(c.id, [])),
            self.limits.tool_result_chars,
        )

    # ------------------------------------------------------------------ events and usage

    async def _publish(self, session_id: str, event: SessionEvent) -> None:
        await self.recorder.publish(session_id, event)  # a lost event must not stop the turn

    async def _publish_usage(self, session_id: str, active: _Active) -> None:
        usage = active.usage
        await self._publish(
            session_id,
            UsageReported(
                turn_id=active.turn.id,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=self._cost(active.turn.model, usage),
            ),
        )

    def _cost(self, model: str, usage: Usage) -> float | None:
        price = self.prices.get(model)
        if price is None:
            return None
        return round((usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]) / 1e6, 6)


def parse_prices(text: str) -> dict[str, tuple[float, float]]:
    """``KERNELAGENT_PRICES``: ``{"model": [prompt $/1M tokens, completion $/1M tokens]}``."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
        return {str(k): (float(v[0]), float(v[1])) for k, v in raw.items()}
    except (ValueError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(
            'KERNELAGENT_PRICES must be JSON like {"gpt-4o-mini": [0.15, 0.6]} '
            f"(dollars per million prompt and completion tokens): {e}"
        ) from None
