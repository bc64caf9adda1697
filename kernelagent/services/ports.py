"""The interfaces services need from adapters. Each has an embedded and a networked implementation.

=================  ==================================  =======================================
port               embedded default                    production backend (chosen by URL)
=================  ==================================  =======================================
``Database``       SQLite file (sqlmodel)              PostgreSQL (``KERNELAGENT_DATABASE_URL``)
``Storage``        local directory (fsspec)            S3 via s3fs (``KERNELAGENT_STORAGE_URL``)
``SessionLocks``   asyncio locks                       Redis with expiry + fencing
=================  ==================================  =======================================

Every method is async; implementations raise ``kernelagent.errors`` exceptions, never driver ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from kernelagent.domain import Artifact, Cell, FileEntry, Reply, Session, Turn, User


class UserRepo(Protocol):
    async def add(self, name: str, token_hash: str) -> User: ...
    async def get(self, user_id: str) -> User | None: ...
    async def by_token_hash(self, token_hash: str) -> User | None: ...
    async def list(self) -> list[User]: ...


class SessionRepo(Protocol):
    async def add(self, session: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def list_for_user(self, user_id: str) -> list[Session]:
        """Newest first (``updated_at`` descending)."""
        ...

    async def update(self, session_id: str, **changes: Any) -> Session:
        """Change ``title``, ``status``, ``kernel_id`` or ``updated_at``; NotFound if missing."""
        ...

    async def delete(self, session_id: str) -> None:
        """Delete the session with its cells, artifacts and file rows."""
        ...


class CellRepo(Protocol):
    async def append(self, cell: Cell) -> None:
        """Insert at ``cell.index``, which must be the next free index (Conflict otherwise).

        One row per cell: saving cell N costs the same at N = 5 and N = 500.
        """
        ...

    async def append_many(self, cells: list[Cell]) -> None:
        """Insert a new session's cells, indexed 0…n-1, in one statement."""
        ...

    async def append_next(self, cell: Cell) -> Cell:
        """Insert at the session's next free index (``cell.index`` is ignored); returns it."""
        ...

    async def update(self, cell: Cell, touch_session: bool = False) -> None:
        """Replace the cell with the same id (outputs, status, timing); ``touch_session`` also
        bumps the session's ``updated_at`` in the same transaction."""
        ...

    async def next_index(self, session_id: str) -> int: ...
    async def list(self, session_id: str) -> list[Cell]:
        """In index order."""
        ...

    async def get(self, cell_id: str) -> Cell | None: ...


class ArtifactRepo(Protocol):
    async def add(self, artifact: Artifact) -> None: ...
    async def get(self, artifact_id: str) -> Artifact | None: ...
    async def add_many(self, artifacts: list[Artifact]) -> None: ...
    async def list_for_session(self, session_id: str) -> list[Artifact]: ...
    async def list_for_cell(self, cell_id: str) -> list[Artifact]: ...


class FileRepo(Protocol):
    async def upsert(self, session_id: str, entry: FileEntry) -> None: ...
    async def list(self, session_id: str) -> list[FileEntry]:
        """Sorted by path."""
        ...

    async def delete(self, session_id: str, path: str) -> None: ...


class TurnRepo(Protocol):
    async def add(self, turn: Turn) -> None: ...
    async def get(self, turn_id: str) -> Turn | None: ...
    async def update(self, turn_id: str, **changes: Any) -> Turn:
        """Change ``status``, ``ended_at``, token counts, ``cost`` or ``error``."""
        ...

    async def list(self, session_id: str) -> list[Turn]:
        """Oldest first."""
        ...

    async def fail_unfinished(self, error: str) -> int:
        """Mark running or waiting turns (of a previous process) failed; returns how many."""
        ...


class Database(Protocol):
    users: UserRepo
    sessions: SessionRepo
    cells: CellRepo
    artifacts: ArtifactRepo
    files: FileRepo
    turns: TurnRepo

    async def close(self) -> None: ...


class Storage(Protocol):
    """Bytes by key (``artifacts/ab/abcdef…``, ``sessions/<id>/files/data.csv``)."""

    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes:
        """NotFound when the key does not exist."""
        ...

    async def exists(self, key: str) -> bool: ...
    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursive), relative to the storage root, sorted."""
        ...

    async def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> None: ...


class EventLog(Protocol):
    """Per-session events with increasing ids (``adapters.events``: in-process or Redis)."""

    async def publish(self, session_id: str, type: str, data: dict[str, Any]) -> Any: ...
    async def read(self, session_id: str, after: str | None, wait: float = 0) -> list[Any]:
        """Events after id ``after`` (all when None), waiting up to ``wait`` s for the first."""
        ...

    async def delete(self, session_id: str) -> None: ...
    async def close(self) -> None: ...


class ChatModel(Protocol):
    """An OpenAI-compatible chat endpoint (``adapters.llm.OpenAIChat``)."""

    async def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: Callable[[str], Awaitable[None]],
        on_retry: Callable[[int, str], Awaitable[None]],
    ) -> Reply:
        """Stream one reply; LLMError (with what to change) when there is none."""
        ...

    async def close(self) -> None: ...


class SessionLocks(Protocol):
    def hold(
        self, session_id: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[int]:
        """Exclusive hold of a session, granted in arrival order; yields a fencing token.

        Tokens increase strictly per session, so a holder whose lock expired (a stalled replica)
        can be told apart from the current one. LimitExceeded after ``timeout`` seconds.
        """
        ...

    async def close(self) -> None: ...
