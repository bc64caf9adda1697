"""The SQL tables as SQLModel classes, and the conversion of their rows to and from domain types.

The schema is owned by the Alembic migrations in ``kernelagent/migrations``; these classes mirror
it (a test compares the two) so that ``repos.py`` can query with typed statements. Two storage
decisions live here, for both backends alike:

* datetimes are timezone-aware UTC in and out: ``UTCDateTime`` stores naive UTC on SQLite, which
  has no time zones, and ``timestamptz`` on PostgreSQL; it refuses naive datetimes, whose meaning
  would depend on the machine that wrote them;
* cell outputs and metadata are JSON text, exactly the nbformat dicts as written (unicode kept),
  rather than a JSON column type that each backend would normalise differently.

Constraint names come from one naming convention, so migrations can refer to them by name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Dialect, Text, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel

from kernelagent.domain import Artifact, Cell, FileEntry, Session, Turn, User

SQLModel.metadata.naming_convention = {
    "pk": "pk_%(table_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware datetime, returned in UTC; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass a timezone-aware one")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: stored as naive UTC
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _fields(row: SQLModel, domain_type: type) -> dict[str, Any]:
    """The attributes of ``row`` that ``domain_type`` (a dataclass) has, by name."""
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(domain_type)}


class UserRow(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(primary_key=True)
    name: str = Field(unique=True)
    token_hash: str = Field(unique=True, index=True)
    created_at: dt.datetime = Field(sa_type=UTCDateTime)

    def to_domain(self) -> User:
        return User(id=self.id, name=self.name, created_at=self.created_at)


class SessionRow(SQLModel, table=True):
    __tablename__ = "sessions"

    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    title: str
    status: str
    kernel_id: str | None = None
    parent_id: str | None = None
    created_at: dt.datetime = Field(sa_type=UTCDateTime)
    updated_at: dt.datetime = Field(sa_type=UTCDateTime)
    approval_mode: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})

    @classmethod
    def from_domain(cls, session: Session) -> SessionRow:
        return cls(**dataclasses.asdict(session))

    def to_domain(self) -> Session:
        return Session(**_fields(self, Session))


class CellRow(SQLModel, table=True):
    """``index`` is unique per session: the constraint that makes a concurrent append fail."""

    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("session_id", "index"),)

    id: str = Field(primary_key=True)
    session_id: str = Field(foreign_key="sessions.id", ondelete="CASCADE")
    index: int
    cell_type: str
    source: str = Field(sa_type=Text)
    role: str
    outputs: str = Field(sa_type=Text)  # JSON list of nbformat outputs
    execution_count: int | None = None
    status: str
    started_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration_ms: int | None = None
    # ``metadata`` is SQLModel's own attribute, hence another name for the column's attribute.
    meta: str = Field(sa_column=Column("metadata", Text, nullable=False))  # JSON object

    @classmethod
    def from_domain(cls, cell: Cell) -> CellRow:
        return cls(
            id=cell.id,
            session_id=cell.session_id,
            outputs=_dump(cell.outputs),
            meta=_dump(cell.metadata),
            **_cell_fields(cell),
        )

    @staticmethod
    def values(cell: Cell) -> dict[str, Any]:
        """Values by *column* name for a Core UPDATE of everything but ``id``/``session_id``."""
        return {
            **_cell_fields(cell),
            "outputs": _dump(cell.outputs),
            "metadata": _dump(cell.metadata),
        }

    def set(self, cell: Cell) -> None:
        """Copy everything but ``id`` and ``session_id`` from ``cell``."""
        for name, value in _cell_fields(cell).items():
            setattr(self, name, value)
        self.outputs = _dump(cell.outputs)
        self.meta = _dump(cell.metadata)

    def to_domain(self) -> Cell:
        return Cell(
            id=self.id,
            session_id=self.session_id,
            outputs=json.loads(self.outputs),
            metadata=json.loads(self.meta),
            **{name: getattr(self, name) for name in _CELL_PLAIN},
        )


_CELL_PLAIN = (
    "index",
    "cell_type",
    "source",
    "role",
    "execution_count",
    "status",
    "started_at",
    "duration_ms",
)


def _cell_fields(cell: Cell) -> dict[str, Any]:
    return {name: getattr(cell, name) for name in _CELL_PLAIN}


class ArtifactRow(SQLModel, table=True):
    __tablename__ = "artifacts"

    id: str = Field(primary_key=True)
    session_id: str = Field(foreign_key="sessions.id", ondelete="CASCADE", index=True)
    cell_id: str = Field(foreign_key="cells.id", ondelete="CASCADE", index=True)
    mime_type: str
    size: int = Field(sa_type=BigInteger)
    sha256: str
    created_at: dt.datetime = Field(sa_type=UTCDateTime)

    @classmethod
    def from_domain(cls, artifact: Artifact) -> ArtifactRow:
        return cls(**dataclasses.asdict(artifact))

    def to_domain(self) -> Artifact:
        return Artifact(**_fields(self, Artifact))


class FileRow(SQLModel, table=True):
    __tablename__ = "files"

    session_id: str = Field(foreign_key="sessions.id", ondelete="CASCADE", primary_key=True)
    path: str = Field(primary_key=True)
    size: int = Field(sa_type=BigInteger)
    sha256: str
    modified_at: dt.datetime = Field(sa_type=UTCDateTime)

    @staticmethod
    def values(session_id: str, entry: FileEntry) -> dict[str, Any]:
        """Column values for an insert or upsert statement."""
        return {"session_id": session_id, **dataclasses.asdict(entry)}

    def to_domain(self) -> FileEntry:
        return FileEntry(**_fields(self, FileEntry))


class TurnRow(SQLModel, table=True):
    __tablename__ = "turns"

    id: str = Field(primary_key=True)
    session_id: str = Field(foreign_key="sessions.id", ondelete="CASCADE", index=True)
    status: str = Field(index=True)
    model: str
    started_at: dt.datetime = Field(sa_type=UTCDateTime)
    ended_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    error: str | None = Field(default=None, sa_type=Text)
    pending: str | None = Field(default=None, sa_type=Text)  # JSON object

    @classmethod
    def from_domain(cls, turn: Turn) -> TurnRow:
        fields = dataclasses.asdict(turn)
        fields["pending"] = None if turn.pending is None else _dump(turn.pending)
        return cls(**fields)

    def to_domain(self) -> Turn:
        fields = _fields(self, Turn)
        fields["pending"] = None if self.pending is None else json.loads(self.pending)
        return Turn(**fields)
