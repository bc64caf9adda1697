"""AgentService: a turn is a tool-calling loop over the session's kernel, published as events.

``start()`` records the user's message and runs the turn in a background task (it goes on when
the client goes away): build the conversation from the notebook record → ask the model (streamed,
``message.delta``) → record its text → run its tool calls (``run_python`` through
``ExecutionService``, so the same lock and record as a person's cell; ``ask_user`` and, in approval
mode, every cell wait for the user) → give the model a budgeted view of the results → again, until
it answers without calling a tool, or a budget (steps, wall clock, tokens) or an interrupt stops it.
Every way a turn ends is recorded on the turn row and published (``turn.completed`` or
``turn.failed`` with the reason); budget stops and LLM failures also leave a note in the notebook.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import logging
from typing import Any, Literal

from kernelagent.domain import (
    Artifact,
    Cell,
    Reply,
    Session,
    ToolCall,
    Turn,
    Usage,
    User,
    new_id,
    now,
)
from kernelagent.errors import Conflict, InvalidInput, LLMError, NotConfigured, NotFound
from kernelagent.services.conversation import messages_from_record, trim
from kernelagent.services.execution import ExecutionService
from kernelagent.services.files import FileService
from kernelagent.services.output_views import view_artifact, view_outputs
from kernelagent.services.ports import ChatModel, Database, EventLog
from kernelagent.services.prompt import WORKSPACE_PROBE, human_size, parse_probe, system_prompt
from kernelagent.services.sessions import SessionService

log = logging.getLogger(__name__)

Decision = Literal["approve", "reject", "edit"]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "run_python",
            "description": (
                "Run Python code as the next cell of the persistent IPython kernel (cwd "
                "/workspace). Returns a summary of its outputs: text, errors, tables, charts."
            ),
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "The cell's code"}},
                "required": ["code"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "ask_user",
            "description": (
                "Ask the user a question when their request is ambiguous or needs a decision; "
                "the turn waits for the answer."
            ),
            "parameters": {
                "type": "object",
                "properties": {"question": {"type": "string"}},
                "required": ["question"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_artifact",
            "description": (
                "Look closer at one output by its artifact id (shown as `artifact <id>`). "
                "view: 'text' (default), 'html' for raw HTML, 'data' for a chart's data."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "artifact_id": {"type": "string"},
                    "view": {"type": "string", "enum": ["text", "html", "data"]},
                },
                "required": ["artifact_id"],
            },
        },
    },
]
TOOL_NAMES = ", ".join(t["function"]["name"] for t in TOOLS)


class TurnStopped(Exception):
    """A budget or the user ended the turn; the message says which."""


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


@dataclasses.dataclass
class _Active:
    """A turn running in this process."""

    turn: Turn
    model: str
    task: asyncio.Task[None] | None = None
    usage: Usage = dataclasses.field(default_factory=Usage)
    waiting_for: Literal["answer", "approval"] | None = None
    waiter: asyncio.Future[Any] | None = None
    paused: float = 0.0  # seconds spent waiting for the user (not counted against the clock)
    in_cell: bool = False
    stopping: bool = False
    failed_attempts: int = 0  # run_python cells in a row that did not succeed


class AgentService:
    def __init__(
        self,
        db: Database,
        sessions: SessionService,
        execution: ExecutionService,
        files: FileService,
        events: EventLog,
        llm: ChatModel | None,
        default_model: str,
        limits: AgentLimits,
        prices: dict[str, tuple[float, float]] | None = None,
    ):
        self.db = db
        self.sessions = sessions
        self.execution = execution
        self.files = files
        self.events = events
        self.llm = llm
        self.default_model = default_model
        self.limits = limits
        self.prices = prices or {}
        self.active: dict[str, _Active] = {}  # session id → its running turn

    # ------------------------------------------------------------------ the API's verbs

    async def start(self, user: User, session_id: str, content: str, model: str | None) -> Turn:
        session = await self.sessions.get(user, session_id)
        if self.llm is None:
            raise NotConfigured(
                "no LLM is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for another "
                "OpenAI-compatible endpoint); code cells still run without one"
            )
        if not content.strip():
            raise InvalidInput("the message is empty")
        if session.id in self.active:
            raise Conflict(
                "a turn is already running in this session: wait for it, answer it, or interrupt it"
            )
        turn = Turn(new_id(), session.id, "running", model or self.default_model, now())
        active = _Active(turn, turn.model)
        self.active[session.id] = active
        try:
            await self.db.turns.add(turn)
            await self._publish(
                session.id, "turn.started", {"turn_id": turn.id, "model": turn.model}
            )
            await self.execution.record_markdown(session.id, "user", content, {"turn_id": turn.id})
        except BaseException:
            self.active.pop(session.id, None)
            raise
        active.task = asyncio.create_task(self._run(session, active), name=f"turn-{turn.id}")
        return turn

    async def answer(self, user: User, session_id: str, turn_id: str, text: str) -> None:
        active = await self._waiting(user, session_id, turn_id, "answer")
        assert active.waiter is not None
        active.waiter.set_result(text)

    async def decide(
        self, user: User, session_id: str, turn_id: str, decision: str, code: str | None
    ) -> None:
        if decision not in ("approve", "reject", "edit"):
            raise InvalidInput("decision must be one of approve, reject, edit")
        if decision == "edit" and not (code or "").strip():
            raise InvalidInput("an edit needs the edited code in 'code'")
        active = await self._waiting(user, session_id, turn_id, "approval")
        assert active.waiter is not None
        active.waiter.set_result((decision, code))

    async def interrupt(self, user: User, session_id: str) -> None:
        """Stop the running cell (if any) and the turn (if any)."""
        session = await self.sessions.get(user, session_id)
        active = self.active.get(session.id)
        await self.execution.interrupt(session)
        if active is None:
            return
        active.stopping = True
        if active.waiter is not None and not active.waiter.done():
            active.waiter.cancel()
        elif not active.in_cell and active.task is not None:
            active.task.cancel()  # the cell itself ends as "interrupted", then the loop stops

    async def turn(self, user: User, session_id: str, turn_id: str) -> Turn:
        session = await self.sessions.get(user, session_id)
        turn = await self.db.turns.get(turn_id)
        if turn is None or turn.session_id != session.id:
            raise NotFound("no such turn")
        return turn

    async def wait(self, session_id: str) -> None:
        """Until the session's running turn (if any) has ended."""
        active = self.active.get(session_id)
        if active is not None and active.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(active.task)

    async def usage(self, session_id: str) -> dict[str, Any]:
        turns = await self.db.turns.list(session_id)
        costs = [t.cost for t in turns if t.cost is not None]
        return {
            "turns": len(turns),
            "prompt_tokens": sum(t.prompt_tokens for t in turns),
            "completion_tokens": sum(t.completion_tokens for t in turns),
            "cost": round(sum(costs), 6) if costs else None,
        }

    async def recover(self) -> None:
        """At start-up: turns a previous server process left running cannot go on."""
        failed = await self.db.turns.fail_unfinished("the server restarted during this turn")
        if failed:
            log.warning("%d turn(s) were running when the server stopped; marked failed", failed)

    async def stop(self) -> None:
        for active in list(self.active.values()):
            active.stopping = True
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
        error: str | None = None
        status: Literal["completed", "failed", "interrupted"] = "completed"
        try:
            await self._loop(session, active)
        except asyncio.CancelledError:
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
        if error and status == "failed":
            with contextlib.suppress(Exception):
                await self.execution.note(session, f"The turn stopped: {error}")
        usage = active.usage
        await self.db.turns.update(
            turn.id,
            status=status,
            ended_at=now(),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=self._cost(active.model, usage),
            error=error,
        )
        if status == "completed":
            await self._publish(session.id, "turn.completed", {"turn_id": turn.id})
        else:
            await self._publish(
                session.id, "turn.failed", {"turn_id": turn.id, "status": status, "error": error}
            )

    async def _loop(self, session: Session, active: _Active) -> None:
        assert self.llm is not None
        limits = self.limits
        loop = asyncio.get_running_loop()
        started = loop.time()
        system = {"role": "system", "content": await self._system_prompt(session)}
        history = await self._history(session)
        for step in range(limits.max_steps):
            remaining = started + active.paused + limits.turn_timeout - loop.time()
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
                cell = await self.execution.record_markdown(
                    session.id, "assistant", reply.text, {"turn_id": active.turn.id, "step": step}
                )
                await self._publish(
                    session.id,
                    "message.completed",
                    {"turn_id": active.turn.id, "cell_id": cell.id, "text": reply.text},
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
            images: list[dict[str, Any]] = []
            for call in reply.tool_calls:
                result, pictures = await self._call_tool(session, active, step, call)
                history.append({"role": "tool", "tool_call_id": call.id, "content": result})
                images += pictures
            if images:
                history.append(
                    {"role": "user", "content": [{"type": "text", "text": "[images]"}, *images]}
                )
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

    async def _ask_model(
        self, session: Session, active: _Active, messages: list[dict[str, Any]]
    ) -> Reply:
        assert self.llm is not None
        turn_id = active.turn.id

        async def on_text(piece: str) -> None:
            await self._publish(session.id, "message.delta", {"turn_id": turn_id, "text": piece})

        async def on_retry(attempt: int, failure: str) -> None:
            await self._publish(
                session.id,
                "message.retry",
                {"turn_id": turn_id, "attempt": attempt, "error": failure},
            )

        return await self.llm.complete(active.model, messages, TOOLS, on_text, on_retry)

    # ------------------------------------------------------------------ tools

    async def _call_tool(
        self, session: Session, active: _Active, step: int, call: ToolCall
    ) -> tuple[str, list[dict[str, Any]]]:
        try:
            args = json.loads(call.arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("the arguments must be a JSON object")
        except ValueError as e:
            return (
                f"Error: the arguments of {call.name} are not valid JSON ({e}). "
                'Call it again with a JSON object, e.g. {"code": "print(1)"}.',
                [],
            )
        if call.name == "run_python":
            code = args.get("code")
            if not isinstance(code, str) or not code.strip():
                return 'Error: run_python needs {"code": "<python source>"}.', []
            return await self._run_python(session, active, step, call, code)
        if call.name == "ask_user":
            question = str(args.get("question") or "").strip()
            if not question:
                return 'Error: ask_user needs {"question": "..."}.', []
            return await self._ask_user(session, active, step, call, question), []
        if call.name == "read_artifact":
            return await self._read_artifact(session, args), []
        return f"Error: there is no tool named {call.name!r}; the tools are {TOOL_NAMES}.", []

    async def _run_python(
        self, session: Session, active: _Active, step: int, call: ToolCall, code: str
    ) -> tuple[str, list[dict[str, Any]]]:
        meta: dict[str, Any] = {
            "turn_id": active.turn.id,
            "step": step,
            "tool_call_id": call.id,
            "attempt": active.failed_attempts + 1,
        }
        current = await self.db.sessions.get(session.id)
        if current is not None and current.approval_mode:
            proposal = new_id()
            await self._publish(
                session.id,
                "approval.required",
                {"turn_id": active.turn.id, "cell_id": proposal, "code": code},
            )
            decision, edited = await self._wait_for_user(session, active, "approval")
            if decision == "reject":
                await self.execution.record_markdown(
                    session.id,
                    "system",
                    "*The user rejected this cell; it did not run.*",
                    {**meta, "proposed_code": code, "rejected": True},
                )
                return (
                    "The user rejected this code; it did not run. Ask what they want, "
                    "or try something else.",
                    [],
                )
            if decision == "edit":
                meta["proposed_code"] = code
                code = edited
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
        self, session: Session, active: _Active, step: int, call: ToolCall, question: str
    ) -> str:
        meta = {"turn_id": active.turn.id, "step": step, "tool_call_id": call.id}
        cell = await self.execution.record_markdown(
            session.id, "assistant", question, {**meta, "tool": "ask_user"}
        )
        await self._publish(
            session.id,
            "ask_user",
            {"turn_id": active.turn.id, "question": question, "cell_id": cell.id},
        )
        answer = await self._wait_for_user(session, active, "answer")
        await self.execution.record_markdown(
            session.id, "user", answer, {"turn_id": active.turn.id, "answer_to": call.id}
        )
        return str(answer)

    async def _read_artifact(self, session: Session, args: dict[str, Any]) -> str:
        artifact = await self.db.artifacts.get(str(args.get("artifact_id", "")))
        if artifact is None or artifact.session_id != session.id:
            return f"Error: no artifact {args.get('artifact_id')!r} in this session."
        data = await self.files.artifact_bytes(artifact)
        try:
            return view_artifact(
                artifact.mime_type, data, args.get("view"), budget=self.limits.tool_result_chars * 2
            )
        except ValueError as e:
            return f"Error: {e}"

    async def _wait_for_user(
        self, session: Session, active: _Active, kind: Literal["answer", "approval"]
    ) -> Any:
        loop = asyncio.get_running_loop()
        active.waiting_for, active.waiter = kind, loop.create_future()
        await self.db.turns.update(active.turn.id, status="waiting")
        started = loop.time()
        try:
            return await active.waiter
        except asyncio.CancelledError:
            if active.stopping:
                raise TurnStopped("interrupted by the user") from None
            raise
        finally:
            active.paused += loop.time() - started
            active.waiting_for, active.waiter = None, None
            with contextlib.suppress(Exception):
                await self.db.turns.update(active.turn.id, status="running")

    async def _waiting(
        self, user: User, session_id: str, turn_id: str, kind: Literal["answer", "approval"]
    ) -> _Active:
        session = await self.sessions.get(user, session_id)
        active = self.active.get(session.id)
        if active is None or active.turn.id != turn_id:
            if await self.db.turns.get(turn_id) is None:
                raise NotFound("no such turn")
            raise Conflict("this turn is not running")
        if active.waiting_for != kind or active.waiter is None or active.waiter.done():
            wanted = "an answer" if kind == "answer" else "an approval"
            raise Conflict(f"this turn is not waiting for {wanted}")
        return active

    # ------------------------------------------------------------------ what the model sees

    def describe_cell(
        self, cell: Cell, artifacts: list[Artifact] | tuple[Artifact, ...] = ()
    ) -> str:
        """The tool result for one executed cell: its outputs' budgeted view, failures typed."""
        budget = self.limits.tool_result_chars
        view = view_outputs(cell.outputs, artifacts, budget=budget)
        error = next((o for o in cell.outputs if o.get("output_type") == "error"), {})
        head = ""
        if cell.status == "timeout":
            head = (
                f"TIMEOUT: the cell ran longer than {self.limits.cell_timeout:g} s and was "
                "interrupted (state up to that point persists). Last output:\n"
            )
        elif cell.status == "died":
            reason = str(error.get("evalue", "the kernel died"))
            if "out of memory" in reason:
                head = (
                    f"OUT OF MEMORY: {reason}. The next cell gets a new kernel with the earlier "
                    "cells replayed (not this one). Use less memory: fewer columns (usecols), "
                    "chunks, smaller dtypes.\n"
                )
            else:
                head = (
                    f"KERNEL DIED: {reason}. The next cell gets a new kernel whose state is "
                    "rebuilt by replaying the earlier cells (not this one).\n"
                )
        elif cell.status == "interrupted":
            head = "INTERRUPTED by the user.\n"
        elif error.get("ename") in ("ModuleNotFoundError", "ImportError"):
            head = (
                f"MISSING MODULE: {error.get('evalue')}. The sandbox has no network, so nothing "
                "can be installed: use the installed libraries.\n"
            )
        elif error.get("ename") == "MemoryError":
            head = (
                f"OUT OF MEMORY: the cell asked for more than the kernel's memory limit "
                f"({human_size(self.limits.memory_limit)}) and got a MemoryError; the kernel and "
                "its other variables survived. Use less memory: fewer columns (usecols), chunks, "
                "smaller dtypes.\n"
            )
        elif cell.status == "error":
            head = "ERROR:\n"
        proposed = cell.metadata.get("proposed_code")
        if proposed is not None and proposed != cell.source:
            ran = f"```python\n{cell.source}\n```"
            head = f"The user edited your code before it ran; this ran:\n{ran}\n{head}"
        return head + view

    def _pictures(self, cell: Cell) -> list[dict[str, Any]]:
        """Downscaled PNG images of the cell's outputs, for vision-capable models."""
        if not self.limits.vision:
            return []
        pictures = []
        for output in cell.outputs:
            data = output.get("data") or {}
            for mime in ("image/png", "image/jpeg"):
                if mime in data:
                    url = _downscaled(str(data[mime]), mime)
                    pictures.append({"type": "image_url", "image_url": {"url": url}})
                    break
        return pictures[:4]

    async def _system_prompt(self, session: Session) -> str:
        try:
            workspace = parse_probe(await self.execution.evaluate(session.id, WORKSPACE_PROBE))
        except Exception as e:  # noqa: BLE001 - the prompt is still useful without it
            log.warning("could not list the workspace of session %s: %s", session.id, e)
            workspace = {}
        return system_prompt(workspace, self.limits.cell_timeout, self.limits.memory_limit)

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

    async def _publish(self, session_id: str, type: str, data: dict[str, Any]) -> None:
        try:
            await self.events.publish(session_id, type, data)
        except Exception:  # a lost event must not stop the turn
            log.exception("could not publish %s for session %s", type, session_id)

    async def _publish_usage(self, session_id: str, active: _Active) -> None:
        usage = active.usage
        await self._publish(
            session_id,
            "usage",
            {
                "turn_id": active.turn.id,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost": self._cost(active.model, usage),
            },
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


def _downscaled(b64: str, mime: str, size: int = 512) -> str:
    from PIL import Image  # matplotlib's dependency; only needed for vision models

    raw = base64.b64decode(b64)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.save(out, format="PNG")
            raw, mime = out.getvalue(), "image/png"
    except Exception:  # noqa: BLE001 - send it as it is
        pass
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"
