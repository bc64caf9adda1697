"""TurnService: the API's verbs for the agent's turns, and where each turn runs.

A turn runs in the server process that holds its session's kernel (``AgentService`` there runs
the loop): ``start`` and the user's answer or approval, sent to any process, dispatch it there, by
a signal when it is another one (``RuntimeState``), claiming it on that process's behalf so no
recovery takes it meanwhile. One answer wins, whichever process it reached (a conditional update
of the turn row). An interrupt reaches every process. ``recover`` (at start-up and every lease)
fails the running turns whose process is gone, and starts here a turn this process was asked to
run but never heard of; paused turns are kept, since any process can resume them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from typing import Any, Literal

from kernelagent.domain import Session, Signal, Turn, User, new_id, now
from kernelagent.errors import Conflict, Draining, InvalidInput, NotConfigured, NotFound
from kernelagent.events import TurnFailed, TurnStarted
from kernelagent.services.agent import AgentService
from kernelagent.services.ports import Database, RuntimeState
from kernelagent.services.recording import Recorder
from kernelagent.services.sessions import SessionService
from kernelagent.services.supervisor import KernelSupervisor

log = logging.getLogger(__name__)

GONE = "the server process running this turn stopped"


class TurnService:
    def __init__(
        self,
        db: Database,
        sessions: SessionService,
        agent: AgentService,
        recorder: Recorder,
        state: RuntimeState,
        supervisor: KernelSupervisor,
    ):
        self.supervisor = supervisor
        self.db = db
        self.sessions = sessions
        self.agent = agent
        self.recorder = recorder
        self.state = state
        self._recovery: asyncio.Task[None] | None = None
        self._grace = dt.timedelta(seconds=15)  # a turn younger than this may be on its way
        state.on_signal(self._on_signal)

    async def start(self, user: User, session_id: str, content: str, model: str | None) -> Turn:
        session = await self.sessions.get(user, session_id)
        if self.agent.llm is None:
            raise NotConfigured(
                "no LLM is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for another "
                "OpenAI-compatible endpoint); code cells still run without one"
            )
        if not content.strip():
            raise InvalidInput("the message is empty")
        if self.agent.draining:
            raise Draining("this server process is shutting down: send the message again")
        if session.id in self.agent.active or await self._unfinished(session.id):
            raise Conflict(
                "a turn is already running in this session: wait for it, answer it, or interrupt it"
            )
        turn = Turn(new_id(), session.id, "running", model or self.agent.default_model, now())
        await self.state.claim("turn", turn.id)  # before the row: no recovery may take it
        try:
            await self.db.turns.add(turn)
            await self.recorder.publish(session.id, TurnStarted(turn_id=turn.id, model=turn.model))
            await self.recorder.markdown(session.id, "user", content, {"turn_id": turn.id})
        except BaseException:
            await self.state.release("turn", turn.id)
            raise
        await self._dispatch(session, turn)
        return turn

    async def answer(self, user: User, session_id: str, turn_id: str, text: str) -> None:
        session, turn = await self._paused(user, session_id, turn_id, "answer")
        await self._resume(session, turn, {"answer": text})

    async def decide(
        self, user: User, session_id: str, turn_id: str, decision: str, code: str | None
    ) -> None:
        if decision not in ("approve", "reject", "edit"):
            raise InvalidInput("decision must be one of approve, reject, edit")
        if decision == "edit" and not (code or "").strip():
            raise InvalidInput("an edit needs the edited code in 'code'")
        session, turn = await self._paused(user, session_id, turn_id, "approval")
        await self._resume(session, turn, {"decision": decision, "code_edited": code})

    async def interrupt(self, user: User, session_id: str) -> None:
        """Stop the running cell (if any) and the turn (if any), in whichever process."""
        session = await self.sessions.get(user, session_id)
        await self.agent.interrupt_here(session.id)
        await self.state.signal(Signal("interrupt", session.id, sender=self.state.process_id))
        for turn in await self.db.turns.unfinished(session.id):
            if turn.status == "waiting":
                await self._end_paused(turn, "interrupted", "interrupted by the user")

    async def turn(self, user: User, session_id: str, turn_id: str) -> Turn:
        session = await self.sessions.get(user, session_id)
        turn = await self.db.turns.get(turn_id)
        if turn is None or turn.session_id != session.id:
            raise NotFound("no such turn")
        return turn

    async def usage(self, session_id: str) -> dict[str, Any]:
        turns = await self.db.turns.list(session_id)
        costs = [t.cost for t in turns if t.cost is not None]
        return {
            "turns": len(turns),
            "prompt_tokens": sum(t.prompt_tokens for t in turns),
            "completion_tokens": sum(t.completion_tokens for t in turns),
            "cost": round(sum(costs), 6) if costs else None,
        }

    # ------------------------------------------------------------------ where turns run

    async def start_recovery(self, every: float) -> None:
        """Fail the running turns of processes that are gone, now and every ``every`` s."""
        self._grace = dt.timedelta(seconds=every)
        await self.recover()
        self._recovery = asyncio.create_task(self._recover_every(every), name="turn-recovery")

    async def _recover_every(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.recover()
            except Exception:
                log.exception("recovering turns failed")

    async def recover(self) -> int:
        """A running turn whose process is gone cannot go on: it fails, saying why. One this
        process was asked to run but is not running (its signal was lost) starts here. Paused
        turns are kept (any process can resume them). Returns how many failed."""
        failed = 0
        for turn in await self.db.turns.unfinished():
            if turn.status != "running" or self.agent.runs(turn.id):
                continue
            owner = await self.state.owner("turn", turn.id)
            if owner is None:
                failed += await self._end_orphan(turn)
            elif owner == self.state.process_id and turn.session_id not in self.agent.active:
                session = await self.db.sessions.get(turn.session_id)
                if session is not None and now() - turn.started_at > self._grace:
                    self.agent.launch(session, turn)
        if failed:
            log.warning("%d turn(s) of a stopped server process were marked failed", failed)
        return failed

    async def _orphaned(self, turn: Turn) -> bool:
        return not self.agent.runs(turn.id) and not await self.state.owner("turn", turn.id)

    async def _end_orphan(self, turn: Turn) -> int:
        ended = await self.db.turns.transition(
            turn.id, "running", status="failed", error=GONE, ended_at=now(), pending=None
        )
        if ended:  # the note first, as a turn that fails here: its end is the turn's last event
            await self.recorder.note(turn.session_id, f"The turn stopped: {GONE}")
            await self.recorder.publish(
                turn.session_id, TurnFailed(turn_id=turn.id, status="failed", error=GONE)
            )
        return int(ended)

    async def _unfinished(self, session_id: str) -> bool:
        """Whether the session has a turn running or paused (an orphan is ended first)."""
        for turn in await self.db.turns.unfinished(session_id):
            if turn.status == "running" and await self._orphaned(turn):
                await self._end_orphan(turn)
            else:
                return True
        return False

    async def _dispatch(self, session: Session, turn: Turn) -> None:
        """Run the turn here, or in the process that alone reaches the session's kernel."""
        owner = await self.supervisor.elsewhere(session.id)
        if owner is None:
            self.agent.launch(session, turn)
            return
        await self.state.claim("turn", turn.id, owner)
        await self.state.signal(Signal("run_turn", session.id, turn.id, to=owner))

    async def _on_signal(self, signal: Signal) -> None:
        if signal.sender == self.state.process_id:
            return
        if signal.kind == "interrupt":
            await self.agent.interrupt_here(signal.session_id)
        elif signal.kind == "run_turn" and signal.turn_id:
            turn = await self.db.turns.get(signal.turn_id)
            session = await self.db.sessions.get(signal.session_id)
            if not (turn and session and turn.status == "running"):
                return
            if session.id not in self.agent.active:
                await self.state.claim("turn", turn.id)
                self.agent.launch(session, turn)

    async def _paused(
        self, user: User, session_id: str, turn_id: str, kind: Literal["answer", "approval"]
    ) -> tuple[Session, Turn]:
        session = await self.sessions.get(user, session_id)
        turn = await self.db.turns.get(turn_id)
        if turn is None or turn.session_id != session.id:
            raise NotFound("no such turn")
        wanted = "an answer" if kind == "answer" else "an approval"
        if turn.status not in ("running", "waiting"):
            raise Conflict("this turn is not running")
        if turn.status != "waiting" or (turn.pending or {}).get("kind") != kind:
            raise Conflict(f"this turn is not waiting for {wanted}")
        return session, turn

    async def _resume(self, session: Session, turn: Turn, given: dict[str, Any]) -> None:
        """The user's answer or decision joins the pending call; the turn goes on (one
        answer wins, whichever process it reached)."""
        pending = {**(turn.pending or {}), **given}
        await self.state.claim("turn", turn.id)
        if not await self.db.turns.transition(
            turn.id, "waiting", status="running", pending=pending
        ):
            await self.state.release("turn", turn.id)
            raise Conflict("this turn was answered already")
        await self._dispatch(session, dataclasses.replace(turn, status="running", pending=pending))

    async def _end_paused(self, turn: Turn, status: str, error: str) -> None:
        if await self.db.turns.transition(
            turn.id, "waiting", status=status, error=error, ended_at=now(), pending=None
        ):
            await self.recorder.publish(
                turn.session_id, TurnFailed(turn_id=turn.id, status=status, error=error)
            )

    async def stop(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
