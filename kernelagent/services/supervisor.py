"""KernelSupervisor: a session has a live, prepared kernel whenever it runs something.

* ``ensure()`` (the caller holds the session's lock) answers the session's kernel, or, when it is
  gone (it died, was culled when idle, was shut down, or belonged to a server that stopped),
  takes one from the pool and rebuilds the session's state in it, leaving a note in the record.
* ``rebuild()`` is the one routine that gives a kernel the state of a point of a record: the
  workspace is emptied, the cells are replayed (uploads re-applied where they arrived), and the
  files are put back as they were after the last of them. Branches and imports use it too.
* A rebuilt kernel first gets the packages its record's cells installed, at their versions.
* A kernel is prepared once per process before its first cell: the kernel-side extension is
  loaded silently (``kernel_setup_code``), leaving no name in the user's namespace.
* ``restart()``, ``stop()``, ``replace()`` and ``cull_idle()`` end a kernel on purpose; the session
  stays, and its next cell brings a kernel back.
* With several server processes, a kernel every process reaches (on a gateway: ``shared``) is
  served by whichever process a request reaches; the process that started it (or took it over
  when that one died) owns it: only the owner culls it, after the session was idle everywhere.
  A local kernel is served by its own process only (``elsewhere``: requests go there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any

from kernelagent.domain import Cell, Session, SessionStatus
from kernelagent.errors import Conflict, LimitExceeded, LimitReached
from kernelagent.services.files import FileService
from kernelagent.services.kernels import KernelPool
from kernelagent.services.namespaces import NamespaceSnapshots, Restoration
from kernelagent.services.packages import PackageService
from kernelagent.services.ports import Database, KernelBackend, RuntimeState, SessionLocks
from kernelagent.services.provenance import UNRECORDED
from kernelagent.services.recording import Recorder
from kernelagent.services.replay import CellReport, Replayer, replayable
from kernelagent.services.running import run_silently

log = logging.getLogger(__name__)

SETUP_TIMEOUT = 30.0


def latest_snapshot(cells: list[Cell]) -> str | None:
    """The snapshot id of the files after the last of ``cells`` (None: no file yet)."""
    cell = last_snapshotted(cells)
    return None if cell is None else str(cell.metadata["snapshot"])


def last_snapshotted(cells: list[Cell]) -> Cell | None:
    """The last of ``cells`` that took a snapshot of the files."""
    return next((c for c in reversed(cells) if c.metadata.get("snapshot")), None)


@dataclasses.dataclass(frozen=True)
class Rebuilt:
    """How a kernel got a record's state: ``restore`` (a namespace snapshot, then the cells it
    did not cover), ``replay`` (every cell, and ``why`` not by restore) or ``none``."""

    way: str
    reports: list[CellReport]
    variables: int
    why: str
    seconds: float
    snapshot_of: int | None = None

    def told(self) -> str:
        """For the record: which way the state came back, and what it cost."""
        differ = sum(r.status != "match" for r in self.reports)
        different = f" ({differ} gave different outputs)" if differ else ""
        if self.way == "restore":
            return (
                f"its state restored from the snapshot after cell {self.snapshot_of} "
                f"({self.variables} variables; {len(self.reports)} cells re-run{different}) "
                f"in {self.seconds:.1f} s"
            )
        return (
            f"its state rebuilt by replaying {len(self.reports)} cells{different} in "
            f"{self.seconds:.1f} s ({self.why})"
        )

    def metadata(self) -> dict[str, Any]:
        if self.way == "restore":
            return {"restored": {"snapshot_of": self.snapshot_of, "rerun": len(self.reports)}}
        return {"rebuilt": len(self.reports), "why_not_restored": self.why}


class KernelSupervisor:
    def __init__(
        self,
        db: Database,
        locks: SessionLocks,
        kernels: KernelBackend,
        pool: KernelPool,
        files: FileService,
        recorder: Recorder,
        replayer: Replayer,
        state: RuntimeState,
        namespaces: NamespaceSnapshots,
        setup_code: str = "",
        max_kernels_per_user: int = 0,
        max_kernels: int = 0,
        packages: PackageService | None = None,
    ):
        self.packages = packages
        self.max_kernels_per_user = max_kernels_per_user
        self.max_kernels = max_kernels
        self.state = state
        self.namespaces = namespaces
        self.db = db
        self.locks = locks
        self.kernels = kernels
        self.pool = pool
        self.files = files
        self.recorder = recorder
        self.replayer = replayer
        self.setup_code = setup_code
        self.last_used: dict[str, float] = {}  # session id → monotonic time of its last cell
        self._prepared: set[str] = set()
        self._generations: dict[str, int] = {}  # shared kernel id → its restarts, as seen

    async def ensure(self, session: Session) -> str:
        """The session's live kernel; a new one with the state rebuilt if it was gone. The
        caller holds the session's lock, and has checked that no other process holds the
        kernel (``check_here``, before queueing for the lock)."""
        kernel_id = session.kernel_id
        live = bool(kernel_id) and await self.kernels.is_alive(kernel_id)
        if kernel_id and not live:
            live = await self._take_over(session, kernel_id)
        elif live and self.kernels.shared:
            await self._own_orphan(session)
        if not live:
            if kernel_id:
                await self.kernels.shutdown(kernel_id, now=True)
            await self.make_room(session.user_id, session.id)
            kernel = await self.pool.acquire(session.id)
            kernel_id = kernel.id
            await self.state.claim("kernel", session.id)
            await self.db.sessions.update(session.id, kernel_id=kernel_id, status="idle")
            await self._rebuild_gone(session, kernel_id)
        await self._prepare(kernel_id)
        return kernel_id

    async def elsewhere(self, session_id: str) -> str | None:
        """The other live server process that alone reaches the session's (local) kernel;
        None when this process may serve it (its own, a shared one, or nobody's)."""
        if self.kernels.shared:
            return None
        owner = await self.state.owner("kernel", session_id)
        return None if owner is None or owner == self.state.process_id else owner

    async def check_here(self, session_id: str) -> None:
        """Conflict when only another live server process reaches the session's kernel: that
        process must run its cells (a kernel whose process is gone is rebuilt here)."""
        if await self.elsewhere(session_id) is not None:
            raise Conflict(
                "this session's kernel runs in another server process; send cells and kernel "
                "requests for it there (interrupts, answers and approvals work from any)"
            )

    async def holder(self, session_id: str) -> str | None:
        """The URL of the other live process that holds the session's kernel, where requests
        that need the kernel go; None when this process may serve them."""
        owner = await self.elsewhere(session_id)
        return None if owner is None else await self.state.address(owner) or None

    async def is_live(self, session: Session) -> bool:
        if not session.kernel_id:
            return False
        await self.check_here(session.id)
        return await self.kernels.is_alive(session.kernel_id)

    async def rebuild(self, session: Session, kernel_id: str, cells: list[Cell]) -> Rebuilt:
        """Give ``kernel_id`` (the session's, fresh) the state of the end of ``cells``: the
        namespace of the last snapshot restored, and only the cells it does not cover run
        (after the snapshot, or what it could not keep); every cell replayed when there is no
        usable snapshot."""
        started = time.perf_counter()
        todo = replayable(cells)
        await self._prepare(kernel_id)  # cells replay as they ran: with the extension
        if self.packages is not None:  # before any cell or object that imports them
            await self.packages.materialise(kernel_id, cells)
        if not any(c.cell_type == "code" for c in todo):
            await self._restore_files(session, cells)
            return Rebuilt("none", [], 0, "", 0.0)
        restoration, why = await self._restore_namespace(session, kernel_id, cells)
        if restoration is not None:
            remake = [c for c in todo if c.index in set(restoration.remake)]
            after = [c for c in todo if c.index in set(restoration.after)]
            reports = await self.replayer.run(kernel_id, session.id, remake) if remake else []
            if remake:
                await self.namespaces.rebind(kernel_id)
            if after:
                if remake:  # what they wrote is undone: the cells after start on the right files
                    before = [c for c in cells if c.index < after[0].index]
                    await self.files.restore(session, latest_snapshot(before))
                reports += await self.replayer.run(kernel_id, session.id, after)
        else:
            await self.files.restore(session, None)  # the files before the first cell
            reports = await self.replayer.run(kernel_id, session.id, todo)
        await self._restore_files(session, cells)
        elapsed = time.perf_counter() - started
        if restoration is None:
            return Rebuilt("replay", reports, 0, why, elapsed)
        return Rebuilt("restore", reports, restoration.variables, "", elapsed, restoration.index)

    async def _restore_namespace(
        self, session: Session, kernel_id: str, cells: list[Cell]
    ) -> tuple[Restoration | None, str]:
        """The namespace of the last snapshot, with the files as they were after its cell."""
        restoration, why = await self.namespaces.restore(kernel_id, cells)
        if restoration is None:
            return None, why
        at = restoration.index
        try:
            await self.files.restore(session, latest_snapshot([c for c in cells if c.index <= at]))
        except Exception as e:  # noqa: BLE001 - then the files come back the replay's way
            return None, f"the files of cell {at} could not be restored: {e}"
        return restoration, ""

    async def _restore_files(self, session: Session, cells: list[Cell]) -> None:
        """The files as the record has them after its last cell: its last snapshot. When cells
        whose files the record has not (an imported notebook's edited cells) ran after that
        snapshot, the files are what they made, and their snapshot goes on the last cell."""
        snapped = last_snapshotted(cells)
        last = -1 if snapped is None else snapped.index
        unrecorded = [c for c in cells if c.index > last and c.metadata.get(UNRECORDED)]
        if snapped is not None and not unrecorded:
            await self.files.restore(session, str(snapped.metadata["snapshot"]))
            return
        await self.files.mirror(session)
        if unrecorded:
            made = await self.files.snapshot(session)
            await self.db.cells.annotate(cells[-1].id, "snapshot", made)

    async def _take_over(self, session: Session, kernel_id: str) -> bool:
        """The session's kernel, if another server process started it and is gone, but the
        kernel lives on (on a gateway): this process's now, with its state. False if not."""
        if not await self.kernels.take_over(kernel_id, session.id):
            return False
        if await self.state.owner("kernel", session.id) is not None:
            return True  # its process lives on: both reach it, that one owns it
        await self.state.claim("kernel", session.id)
        await self.recorder.markdown_held(
            session.id,
            "system",
            "*The server process that held this session's kernel is gone; another took the "
            "kernel over, with its state.*",
            {"taken_over": kernel_id},
        )
        return True

    async def make_room(self, user_id: str, session_id: str | None = None) -> None:
        """Below the limits on live kernels (the user's, everyone's) before a session (of
        ``user_id``; ``session_id`` if it exists) gets one: the least recently used idle kernel
        over a limit is hibernated (its state comes back when it is used); LimitReached when
        every one is busy."""
        limits = (
            (self.max_kernels_per_user, "KERNELAGENT_MAX_KERNELS_PER_USER", user_id),
            (self.max_kernels, "KERNELAGENT_MAX_KERNELS", None),
        )
        for limit, setting, whose_id in limits:
            if limit <= 0:
                continue
            holding = [
                s for s in await self.db.sessions.holding_kernels(whose_id) if s.id != session_id
            ]
            excess = len(holding) + 1 - limit
            for victim in holding:  # least recently used first
                if excess > 0 and await self._hibernate(victim, setting, limit):
                    excess -= 1
            if excess > 0:
                whose = "you have" if whose_id is not None else "the server has"
                raise LimitReached(
                    f"{whose} {len(holding)} live kernel{'' if len(holding) == 1 else 's'}, the "
                    f"limit ({setting}={limit}), and "
                    "none is idle: wait for a cell to finish, or stop a session's kernel",
                    setting,
                    limit,
                )

    async def _hibernate(self, session: Session, setting: str, limit: int) -> bool:
        """Stop an idle kernel (its snapshots kept) to make room; False if it is busy (a cell,
        a running turn) or another server process alone reaches it."""
        if await self.elsewhere(session.id) is not None:
            return False
        if any(t.status == "running" for t in await self.db.turns.unfinished(session.id)):
            return False
        try:
            async with self.locks.hold(session.id, timeout=0):
                current = await self.db.sessions.get(session.id)
                if current is None or not current.kernel_id:
                    return True
                await self.stop(
                    current,
                    f"The kernel was hibernated to make room for another ({setting}={limit})",
                    held=True,
                    status="idle",
                )
                self.last_used.pop(session.id, None)
                return True
        except LimitExceeded:  # its lock is taken: a cell runs
            return False

    async def _own_orphan(self, session: Session) -> None:
        """A shared kernel whose owner is gone is this process's to cull from now on."""
        if await self.state.owner("kernel", session.id) is None:
            await self.state.claim("kernel", session.id)

    async def _rebuild_gone(self, session: Session, kernel_id: str) -> None:
        await self.namespaces.settle(session.id)
        cells = await self.db.cells.list(session.id)
        rebuilt = await self.rebuild(session, kernel_id, cells)
        await self.tell(session, rebuilt, "The session's kernel was gone; a new one was started")

    async def tell(self, session: Session, rebuilt: Rebuilt, what: str) -> None:
        """Say in the record (the caller holds the lock) how a kernel got its state."""
        if rebuilt.way != "none":
            await self.recorder.markdown_held(
                session.id, "system", f"*{what} and {rebuilt.told()}.*", rebuilt.metadata()
            )

    async def _prepare(self, kernel_id: str) -> None:
        """Load the kernel-side extension once per kernel process (silently). A shared kernel
        another server process restarted since this one last used it is reached afresh."""
        if self.kernels.shared:
            seen = self._generations.get(kernel_id)
            now = self._generations[kernel_id] = await self.state.generation(
                f"restarts:{kernel_id}"
            )
            if seen is not None and seen != now:
                self._prepared.discard(kernel_id)
                await self.kernels.restarted_elsewhere(kernel_id)
        if not self.setup_code or kernel_id in self._prepared:
            return
        if not await run_silently(self.kernels, kernel_id, self.setup_code, SETUP_TIMEOUT):
            log.warning("the setup code failed in kernel %s", kernel_id)
        self._prepared.add(kernel_id)

    async def forget(self, session: Session) -> None:
        """A deleted session: what was kept about it and its kernel (``touch``'s too)."""
        self.last_used.pop(session.id, None)
        await self.state.forget(session.id)
        if session.kernel_id:
            self._prepared.discard(session.kernel_id)
            self._generations.pop(session.kernel_id, None)
        self.namespaces.forget(session.id)

    async def touch(self, session_id: str) -> None:
        self.last_used[session_id] = time.monotonic()
        await self.state.touch(session_id)

    async def restart(self, session: Session) -> None:
        """Restart the kernel in place (same id); a running cell ends as "died"."""
        kernel_id = session.kernel_id
        if not kernel_id:
            return
        await self.check_here(session.id)
        self._prepared.discard(kernel_id)
        await self.kernels.restart(kernel_id)
        if self.kernels.shared:  # the other processes see it before their next use of it
            key = f"restarts:{kernel_id}"
            self._generations[kernel_id] = await self.state.generation(key, bump=True)
        await self.recorder.note(session.id, "The kernel was restarted; its variables are gone.")

    async def stop(
        self,
        session: Session,
        why: str = "The kernel was shut down",
        held: bool = False,
        status: SessionStatus = "stopped",
    ) -> None:
        """Shut the session's kernel down; the next cell starts a new one with state rebuilt.
        ``status``: "stopped" (on request: Jupyter clients see no kernel until the session
        runs again) or "idle" (culled: its kernel comes back as soon as anyone uses it)."""
        if session.kernel_id:
            await self.check_here(session.id)
            await self.namespaces.settle(session.id)  # its state is kept before it goes
            self._prepared.discard(session.kernel_id)
            await self.kernels.shutdown(session.kernel_id, now=True)
        await self.db.sessions.update(session.id, kernel_id=None, status=status)
        await self.state.release("kernel", session.id)
        await self.recorder.note(
            session.id,
            f"{why}; the next cell starts a new one, with its state restored from the last "
            "namespace snapshot (or by replay).",
            held=held,
        )

    async def replace(self, session: Session, kernel_id: str) -> None:
        """Drop a dead or stuck kernel; the next cell gets a new one with the state rebuilt."""
        self._prepared.discard(kernel_id)
        await self.kernels.shutdown(kernel_id, now=True)  # a stuck kernel must not be reused
        await self.db.sessions.update(session.id, kernel_id=None, status="dead")
        await self.state.release("kernel", session.id)

    async def cull_idle(self, ttl: float) -> list[str]:
        """Shut down kernels idle for ``ttl`` seconds (never one running a cell: it holds the
        session's lock; never one another server process owns; never one another process
        used within ``ttl``); their sessions stay. Returns their ids."""
        culled = []
        for session_id, used in list(self.last_used.items()):
            if time.monotonic() - used < ttl:
                continue
            elsewhere = await self.state.last_activity(session_id)
            if elsewhere is not None and time.time() - elsewhere < ttl:
                continue
            with contextlib.suppress(LimitExceeded):  # busy right now: not idle
                async with self.locks.hold(session_id, timeout=0):
                    session = await self.db.sessions.get(session_id)
                    self.last_used.pop(session_id, None)
                    if session is None or not session.kernel_id:
                        continue
                    owner = await self.state.owner("kernel", session_id)
                    if owner is not None and owner != self.state.process_id:
                        continue  # another process holds its kernel now: not ours to stop
                    await self.stop(
                        session,
                        f"The kernel was shut down after {ttl / 60:g} minutes idle",
                        held=True,
                        status="idle",
                    )
                    culled.append(session_id)
        return culled
