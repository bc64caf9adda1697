"""Value types shared by every layer: users, sessions, cells, artifacts, files. No I/O here.

Outputs stay in their nbformat form (``dict`` as in a ``.ipynb``): that *is* the typed wire format
of the notebook record, validated by ``nbformat``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any, Literal

Role = Literal["user", "assistant", "agent", "web", "gateway", "mcp", "system"]
CellType = Literal["code", "markdown"]
CellStatus = Literal["ok", "error", "timeout", "interrupted", "died", "pending"]
SessionStatus = Literal["starting", "idle", "busy", "dead", "stopped"]
TurnStatus = Literal["running", "waiting", "completed", "failed", "interrupted"]


def new_id() -> str:
    """A UUID4 string: session ids double as Jupyter kernel-gateway ids, which must be UUIDs."""
    return str(uuid.uuid4())


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    name: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    title: str
    status: SessionStatus
    kernel_id: str | None
    parent_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    approval_mode: bool = False  # each agent cell waits for the user's approval


@dataclasses.dataclass(frozen=True)
class Turn:
    """One exchange: a user message and the agent's work until it answers, asks, or stops."""

    id: str
    session_id: str
    status: TurnStatus
    model: str
    started_at: dt.datetime
    ended_at: dt.datetime | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # in dollars, when a price is configured for the model
    error: str | None = None
    # while "waiting": what for, and what the turn needs to go on from the record (the
    # paused tool call, the calls after it, its step); the user's decision joins it
    pending: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a session's notebook record, in order (``index`` counts from 0)."""

    id: str  # nbformat cell id
    session_id: str
    index: int
    cell_type: CellType
    source: str
    role: Role
    outputs: list[dict[str, Any]]
    execution_count: int | None
    status: CellStatus
    started_at: dt.datetime | None
    duration_ms: int | None
    metadata: dict[str, Any]  # extra ``metadata.kernelagent`` keys (turn_id, tool_call_id, ...)


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A rich output stored once in storage under its sha256; this row ties it to a cell."""

    id: str
    session_id: str
    cell_id: str
    mime_type: str
    size: int
    sha256: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """A file of a session's workspace as mirrored to storage."""

    path: str  # relative, POSIX, confined to the workspace
    size: int
    sha256: str
    modified_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """A tool call as the model wrote it."""

    id: str
    name: str
    arguments: str  # raw JSON text (may be malformed: the model is told so)


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True)
class Signal:
    """A request from one server process to the others (or to one, ``to``): "interrupt" a
    session's running cell and turn, or "run_turn" (start or resume a turn where its kernel is).
    """

    kind: Literal["interrupt", "run_turn"]
    session_id: str
    turn_id: str | None = None
    to: str | None = None  # a process id; None: every process
    sender: str | None = None  # the process that sent it


@dataclasses.dataclass(frozen=True)
class KernelMessage:
    """One Jupyter message from a kernel, parsed once where it arrives (the kernel adapter).

    Services read ``msg_type``, ``content`` and ``parent_id``; a gateway client is sent the
    whole message as the kernel sent it: ``raw``, when the adapter kept them, holds the four JSON
    parts (header, parent_header, metadata, content) as received, so they are not re-encoded.
    """

    channel: str  # "shell", "iopub", "stdin" or "control"
    header: dict[str, Any]
    parent_header: dict[str, Any]
    metadata: dict[str, Any]
    content: dict[str, Any]
    buffers: tuple[bytes, ...] = ()
    raw: tuple[bytes, ...] = dataclasses.field(default=(), compare=False, repr=False)

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def parent_id(self) -> str | None:
        return self.parent_header.get("msg_id")

    @classmethod
    def status(cls, state: str, username: str = "kernelagent") -> KernelMessage:
        """A synthetic iopub ``status`` (jupyter_server sends "restarting" the same way)."""
        header = {
            "msg_id": new_id(),
            "msg_type": "status",
            "username": username,
            "session": new_id(),
            "date": now(),
            "version": "5.3",
        }
        return cls("iopub", header, {}, {}, {"execution_state": state})


@dataclasses.dataclass(frozen=True)
class FileStat:
    """A regular file of a workspace: enough to tell whether it changed since it was seen."""

    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class NamespaceCapture:
    """A namespace snapshot as the kernel answered it: what changed since the capture ``base``
    (entries by name: ``sha``/``size``, ``module``, ``unserialisable`` or ``skipped``, each with
    the ``cell`` that set it; and the names removed), and the bytes that were new."""

    id: str
    base: str | None
    changes: dict[str, dict[str, Any]]
    removed: list[str]
    blobs: dict[str, bytes]
    ms: float
    skipped: list[str]


@dataclasses.dataclass(frozen=True)
class NamespaceRestored:
    restored: list[str]
    failed: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Reply:
    """One complete answer of the model: its text, its tool calls and what it cost."""

    text: str
    tool_calls: list[ToolCall]
    usage: Usage
    finish_reason: str | None


@dataclasses.dataclass(frozen=True)
class Package:
    """A distribution at one version (``name`` canonical, as ``packaging`` makes it)."""

    name: str
    version: str


@dataclasses.dataclass(frozen=True)
class PythonTarget:
    """The interpreter a kernel's packages are for, as the kernel reported it."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    installed: dict[str, str]  # what its environment has: canonical name → version
