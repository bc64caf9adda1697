"""SessionService: a session owns a workspace and one kernel; create, list, rename, delete.

A new session takes a warm kernel from the pool, which gets the session's workspace. A session
whose kernel died (or was never started) gets a new one on its next execution (the supervisor).
"""

from __future__ import annotations

from kernelagent.domain import Session, User, new_id, now
from kernelagent.errors import Unprocessable
from kernelagent.services.auth import AuthService
from kernelagent.services.files import FileService
from kernelagent.services.kernels import KernelPool
from kernelagent.services.ports import Database, EventLog, KernelBackend, RuntimeState, Storage
from kernelagent.services.supervisor import KernelSupervisor

TITLE_MAX = 200


def clean_title(title: object) -> str:
    if not isinstance(title, str):
        raise Unprocessable("title must be a string")
    title = title.strip()
    if len(title) > TITLE_MAX:
        raise Unprocessable(f"title is longer than {TITLE_MAX} characters")
    return title


class SessionService:
    def __init__(
        self,
        db: Database,
        pool: KernelPool,
        kernels: KernelBackend,
        files: FileService,
        storage: Storage,
        state: RuntimeState,
        events: EventLog | None = None,
        supervisor: KernelSupervisor | None = None,
    ):
        self.supervisor = supervisor  # keeps live kernels below the limits
        self.state = state
        self.events = events
        self.db = db
        self.pool = pool
        self.kernels = kernels
        self.files = files
        self.storage = storage

    async def create(self, user: User, title: str = "", parent_id: str | None = None) -> Session:
        title = clean_title(title) or "Untitled"  # before a kernel is taken: a bad title leaks none
        session_id = new_id()
        if self.supervisor is not None:
            await self.supervisor.make_room(user.id)
        kernel = await self.pool.acquire(session_id)
        created = now()
        session = Session(
            id=session_id,
            user_id=user.id,
            title=title,
            status="idle",
            kernel_id=kernel.id,
            parent_id=parent_id,
            created_at=created,
            updated_at=created,
        )
        try:
            await self.db.sessions.add(session)
            await self.state.claim("kernel", session.id)
        except BaseException:
            await self.kernels.shutdown(kernel.id, now=True)
            raise
        return session

    async def list(self, user: User) -> list[Session]:
        return await self.db.sessions.list_for_user(user.id)

    async def get(self, user: User, session_id: str) -> Session:
        return AuthService.check_owner(user, await self.db.sessions.get(session_id))

    async def rename(self, user: User, session_id: str, title: object) -> Session:
        await self.get(user, session_id)
        return await self.db.sessions.update(session_id, title=clean_title(title), updated_at=now())

    async def set_approval_mode(self, user: User, session_id: str, on: bool) -> Session:
        """In approval mode each cell the agent proposes waits for the user's decision."""
        await self.get(user, session_id)
        return await self.db.sessions.update(session_id, approval_mode=on)

    async def delete(self, user: User, session_id: str) -> None:
        session = await self.get(user, session_id)
        await self.db.sessions.delete(session.id)
        if session.kernel_id:
            await self.kernels.shutdown(session.kernel_id, now=True)
            await self.state.release("kernel", session.id)
        await self.files.forget(session.id)
        if self.supervisor is not None:
            await self.supervisor.forget(session)
        await self.storage.delete_prefix(f"sessions/{session.id}/")
        if self.events is not None:
            await self.events.delete(session.id)
