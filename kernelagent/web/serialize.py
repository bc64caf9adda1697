"""The JSON bodies the REST API answers (SPEC §7), as pydantic models.

Handlers answer with these (``ApiHandler.write_model``), and the OpenAPI document takes their JSON
Schema from here, so a documented shape and the real one cannot differ. Notebook structures
(outputs, code cells, the ``.ipynb``) follow nbformat 4.5.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import pydantic

from kernelagent import errors
from kernelagent.domain import Artifact, FileEntry, Session, SessionStatus, Turn, TurnStatus


class Body(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


# ------------------------------------------------------------------ nbformat 4.5

MultilineString = str | list[str]
MimeBundle = Annotated[
    dict[str, Any],
    pydantic.Field(description="mime type → data (text, base64 for images, JSON for JSON types)"),
]


class StreamOutput(Body):
    output_type: Literal["stream"]
    name: Literal["stdout", "stderr"]
    text: MultilineString


class DisplayDataOutput(Body):
    output_type: Literal["display_data"]
    data: MimeBundle
    metadata: dict[str, Any]
    transient: dict[str, Any] | None = None


class ExecuteResultOutput(Body):
    output_type: Literal["execute_result"]
    execution_count: int | None
    data: MimeBundle
    metadata: dict[str, Any]


class ErrorOutput(Body):
    output_type: Literal["error"]
    ename: str
    evalue: str
    traceback: list[str]


Output = Annotated[
    StreamOutput | DisplayDataOutput | ExecuteResultOutput | ErrorOutput,
    pydantic.Field(discriminator="output_type"),
]


class CodeCell(Body):
    """An nbformat 4.5 code cell; ``metadata.kernelagent``: role, status, started_at,
    duration_ms, index."""

    id: str
    cell_type: Literal["code"]
    metadata: dict[str, Any]
    execution_count: int | None
    source: MultilineString
    outputs: list[Output]


class Notebook(pydantic.BaseModel):
    """A Jupyter notebook (nbformat 4): https://nbformat.readthedocs.io"""

    nbformat: Literal[4]
    nbformat_minor: int
    metadata: dict[str, Any]
    cells: list[dict[str, Any]]


# ------------------------------------------------------------------ answers

#: every ``code`` an error body can carry: the error tree's, and the ones ``web/base.py`` makes
ERROR_CODES = tuple(
    sorted(
        {c.code for c in (errors.KernelAgentError, *errors.KernelAgentError.__subclasses__())}
        | {"unauthorized", "method_not_allowed", "http_error"}
    )
)


class ErrorBody(Body):
    """An error"""

    class Limit(Body):
        setting: str = pydantic.Field(description="The setting that refused it")
        value: float = pydantic.Field(description="Its value")

    class Detail(Body):
        code: Literal[ERROR_CODES]  # type: ignore[valid-type]
        message: str
        limit: ErrorBody.Limit | None = pydantic.Field(
            None, description="For a configured limit (429): which, and its value"
        )

    error: Detail


class OpenApiDocument(pydantic.BaseModel):
    """An OpenAPI 3.1 document"""

    model_config = pydantic.ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


class Health(Body):
    class Pool(Body):
        size: int = pydantic.Field(description="warm kernels kept (KERNELAGENT_POOL_SIZE)")
        target: int = pydantic.Field(
            description="warm kernels aimed for now: size, or more while sessions arrive fast"
        )
        ready: int
        error: str | None

    status: Literal["ok"] = "ok"
    version: str
    sandbox: str = pydantic.Field(examples=["bubblewrap", "none (unsafe)"])
    pool: Pool


class Ready(Body):
    status: Literal["ready", "not_ready", "draining"]
    checks: dict[str, str] = pydantic.Field(
        description='each backend: "ok", or what went wrong',
        examples=[{"database": "ok", "runtime_state": "ok", "storage": "ok"}],
    )


class SessionUsage(Body):
    turns: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = pydantic.Field(description="dollars; null without KERNELAGENT_PRICES")


class SessionBody(Body):
    id: str = pydantic.Field(json_schema_extra={"format": "uuid"})
    title: str
    kernel_id: str | None = pydantic.Field(
        description="the id Jupyter clients use for the session's kernel (the Kernel Gateway "
        "API), while it has one"
    )
    status: SessionStatus
    parent_id: str | None = pydantic.Field(description="the session this one branched from")
    created_at: dt.datetime
    updated_at: dt.datetime
    approval_mode: bool
    usage: SessionUsage | None = pydantic.Field(
        default=None,
        description="only in GET of one session",
        exclude_if=lambda usage: usage is None,
    )


class SessionList(Body):
    sessions: list[SessionBody] = pydantic.Field(description="newest first")


class TurnUsage(Body):
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


class TurnBody(Body):
    id: str
    session_id: str
    status: TurnStatus
    model: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    usage: TurnUsage
    error: str | None


class TurnAccepted(Body):
    turn_id: str
    turn: TurnBody


class TurnRef(Body):
    turn_id: str


class ArtifactBody(Body):
    id: str
    cell_id: str
    mime_type: str
    size: int
    sha256: str
    url: str = pydantic.Field(description="a signed URL: works without a token")


class CellRun(Body):
    cell: CodeCell
    artifacts: list[ArtifactBody]


class FileBody(Body):
    path: str = pydantic.Field(description="relative to the workspace")
    size: int
    sha256: str
    modified_at: dt.datetime


class FileList(Body):
    files: list[FileBody]


class ReplayCell(Body):
    cell_id: str
    index: int
    status: Literal["match", "differ", "error"]
    diff: str = pydantic.Field(description="unified diff of the normalised outputs")
    error: str | None
    duration_ms: int


class ReplaySummary(Body):
    match: int
    differ: int
    error: int


class ReplayReport(Body):
    cells: list[ReplayCell]
    summary: ReplaySummary
    duration_ms: int


# ------------------------------------------------------------------ from domain objects


def session_body(
    session: Session, busy: bool = False, usage: dict[str, Any] | None = None
) -> SessionBody:
    return SessionBody(
        id=session.id,
        title=session.title,
        kernel_id=session.id if session.status != "stopped" else None,
        status="busy" if busy and session.status == "idle" else session.status,
        parent_id=session.parent_id,
        created_at=session.created_at,
        updated_at=session.updated_at,
        approval_mode=session.approval_mode,
        usage=SessionUsage(**usage) if usage is not None else None,
    )


def turn_body(turn: Turn) -> TurnBody:
    return TurnBody(
        id=turn.id,
        session_id=turn.session_id,
        status=turn.status,
        model=turn.model,
        started_at=turn.started_at,
        ended_at=turn.ended_at,
        usage=TurnUsage(
            prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
            cost=turn.cost,
        ),
        error=turn.error,
    )


def artifact_body(artifact: Artifact, url: str) -> ArtifactBody:
    return ArtifactBody(
        id=artifact.id,
        cell_id=artifact.cell_id,
        mime_type=artifact.mime_type,
        size=artifact.size,
        sha256=artifact.sha256,
        url=url,
    )


def file_body(entry: FileEntry) -> FileBody:
    return FileBody(
        path=entry.path, size=entry.size, sha256=entry.sha256, modified_at=entry.modified_at
    )
