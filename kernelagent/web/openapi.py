"""``GET /api/v1/openapi.json``: an OpenAPI 3.1 description of the ``/api/v1`` JSON API.

Request bodies are the handlers' own pydantic models (their JSON Schema), so they cannot drift
from what the server validates; answers follow ``serialize.py``; error codes come from
``errors.py``. ``tests/web/test_openapi.py`` fails when a route and this document disagree.
The Kernel Gateway surface is only summarised here: it follows Jupyter Kernel Gateway's own
swagger, which its clients already know.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pydantic

from kernelagent import __version__
from kernelagent.errors import KernelAgentError
from kernelagent.services.sessions import TITLE_MAX
from kernelagent.web.base import COOKIE, ApiHandler
from kernelagent.web.sessions import CreateSession, RunCell, UpdateSession
from kernelagent.web.turns import Answer, Approval, NewMessage
from kernelagent.web.worldlines import Branch

PATH = "/api/v1/openapi.json"

# every event type the services publish on a session's stream, with the fields of its data:
# a JSON type, "?" when it may be null, a capitalised name for a component schema
EVENTS: dict[str, dict[str, Any]] = {
    "turn.started": {"turn_id": "string", "model": "string"},
    "message.delta": {"turn_id": "string", "text": "string"},
    "message.retry": {"turn_id": "string", "attempt": "integer", "error": "string"},
    "message.completed": {"turn_id": "string", "cell_id": "string", "text": "string"},
    "cell.added": {
        "cell_id": "string",
        "index": "integer",
        "role": "string",
        "source": "string",
        "metadata": "object",
    },
    "cell.started": {
        "cell_id": "string",
        "index": "integer",
        "code": "string",
        "role": "string",
        "metadata": "object",
    },
    "cell.output": {
        "cell_id": "string",
        "index": "integer",
        "output": "Output",
        "cleared": "boolean",
    },
    "cell.completed": {
        "cell_id": "string",
        "index": "integer",
        "status": "string",
        "execution_count": "integer?",
        "duration_ms": "integer?",
    },
    "ask_user": {"turn_id": "string", "question": "string", "cell_id": "string"},
    "approval.required": {"turn_id": "string", "cell_id": "string", "code": "string"},
    "usage": {
        "turn_id": "string",
        "prompt_tokens": "integer",
        "completion_tokens": "integer",
        "cost": "number?",
    },
    "turn.completed": {"turn_id": "string"},
    "turn.failed": {"turn_id": "string", "status": "string", "error": "string?"},
    "replay.started": {"total": "integer"},
    "replay.progress": {
        "cell_id": "string",
        "index": "integer",
        "status": "string",
        "diff": "string",
        "error": "string?",
        "duration_ms": "integer",
        "done": "integer",
        "total": "integer",
    },
    "replay.completed": {"match": "integer", "differ": "integer", "error": "integer"},
}

DESCRIPTION = f"""\
The JSON API of kernelagent: sessions (each owns one sandboxed IPython kernel and a notebook
record), code cells, the agent's turns, their live events, files, artifacts, replay, branch and
notebook import.

**Auth**: `Authorization: token <t>` (or `Bearer <t>`) on everything but `/health` and this
document; the web UI uses its signed cookie instead, and then requests other than GET must send
tornado's XSRF token (`X-XSRFToken` header, the value of the `_xsrf` cookie). Another user's
session, file or artifact answers 404, as an unknown one does.

**Errors** are `{{"error": {{"code", "message"}}}}` with the status: 400 malformed JSON or unsafe
path, 401, 403 bad or expired signed URL, 404, 409, 413, 422 wrong shape, 429 session busy, 502
LLM failed, 503 sandbox, kernel or LLM unavailable.

**Events**: `GET /api/v1/sessions/{{session_id}}/events` is a server-sent event stream; its
types: {", ".join(f"`{t}`" for t in EVENTS)}.

**Kernel Gateway API** (not described here: it follows Jupyter Kernel Gateway's swagger in
"jupyter-websocket" mode, so Jupyter clients attach to session kernels): `GET /api`,
`GET /api/kernelspecs`, `GET /api/kernelspecs/{{name}}`, `GET /kernelspecs/{{name}}/{{resource}}`,
`GET`/`POST /api/kernels`, `GET`/`DELETE /api/kernels/{{kernel_id}}`,
`POST /api/kernels/{{kernel_id}}/interrupt` and `/restart`, and the WebSocket
`/api/kernels/{{kernel_id}}/channels` (JSON frames, or the `v1.kernel.websocket.jupyter.org`
subprotocol). A kernel id there is a session id. The same tokens work, also as `?token=`; its
errors keep Jupyter's `{{"message", "reason"}}` shape.
"""

# status → (component name, description); codes as errors.py and web/base.py give them
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Malformed JSON, an unsafe path or an invalid value"),
    401: ("Unauthorized", "No valid token"),
    403: ("Forbidden", "The signed URL is invalid or has expired"),
    404: ("NotFound", "No such resource, or another user's"),
    409: ("Conflict", "The session or turn is not in a state that allows this"),
    413: ("TooLarge", "The body or upload exceeds its limit"),
    422: ("Unprocessable", "Well-formed JSON of the wrong shape"),
    429: ("Busy", "The session is busy: its lock was not free in time"),
    502: ("LLMFailed", "The LLM endpoint gave no usable reply"),
    503: ("Unavailable", "The sandbox, the kernel or the LLM is not available"),
}
WEB_CODES = ("unauthorized", "method_not_allowed", "http_error")  # made in web/base.py

REQUESTS: tuple[type[pydantic.BaseModel], ...] = (
    CreateSession,
    UpdateSession,
    RunCell,
    NewMessage,
    Answer,
    Approval,
    Branch,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


DATE_TIME = {"type": "string", "format": "date-time"}


def _object(required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    """A JSON object whose listed properties are all present unless ``required`` says less."""
    return {
        "type": "object",
        "required": list(properties) if required is None else required,
        "properties": properties,
    }


def _error_codes() -> list[str]:
    codes: set[str] = set(WEB_CODES)
    todo: list[type[KernelAgentError]] = [KernelAgentError]
    while todo:
        cls = todo.pop()
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    return sorted(codes)


def _event_data(shape: dict[str, str]) -> dict[str, Any]:
    """No field is required: a ``cell.output`` that only clears has ``cell_id`` and ``cleared``."""
    properties: dict[str, Any] = {}
    for name, kind in shape.items():
        if kind[0].isupper():
            properties[name] = _ref(kind)
        elif kind.endswith("?"):
            properties[name] = _nullable(kind[:-1])
        else:
            properties[name] = {"type": kind}
    return {"type": "object", "properties": properties}


def _schemas() -> dict[str, Any]:
    string, integer = {"type": "string"}, {"type": "integer"}
    multiline = {"oneOf": [string, {"type": "array", "items": string}]}
    usage = _object(
        prompt_tokens=integer, completion_tokens=integer, cost=_nullable("number", minimum=0)
    )
    return {
        "Error": _object(
            error=_object(code={"type": "string", "enum": _error_codes()}, message=string)
        ),
        "Health": _object(
            status={"const": "ok"},
            version=string,
            sandbox={"type": "string", "examples": ["bubblewrap", "none (unsafe)"]},
            pool=_object(size=integer, ready=integer, error=_nullable("string")),
        ),
        "Session": _object(
            required=[
                "id",
                "title",
                "kernel_id",
                "status",
                "parent_id",
                "created_at",
                "updated_at",
                "approval_mode",
            ],
            id={"type": "string", "format": "uuid"},
            title=string,
            kernel_id=_nullable("string"),
            status={"enum": ["starting", "idle", "busy", "dead", "stopped"]},
            parent_id=_nullable("string", description="the session this one branched from"),
            created_at=DATE_TIME,
            updated_at=DATE_TIME,
            approval_mode={"type": "boolean"},
            usage={**_ref("SessionUsage"), "description": "only in GET of one session"},
        ),
        "SessionUsage": _object(
            turns=integer,
            prompt_tokens=integer,
            completion_tokens=integer,
            cost=_nullable("number", description="dollars; null without KERNELAGENT_PRICES"),
        ),
        "SessionList": _object(
            sessions={"type": "array", "items": _ref("Session"), "description": "newest first"}
        ),
        "MultilineString": multiline,
        "MimeBundle": {
            "type": "object",
            "description": "mime type → data (text, base64 for images, JSON for JSON types)",
            "additionalProperties": True,
        },
        "Output": {
            "description": "one nbformat 4 output",
            "oneOf": [
                _ref("StreamOutput"),
                _ref("DisplayDataOutput"),
                _ref("ExecuteResultOutput"),
                _ref("ErrorOutput"),
            ],
            "discriminator": {
                "propertyName": "output_type",
                "mapping": {
                    "stream": "#/components/schemas/StreamOutput",
                    "display_data": "#/components/schemas/DisplayDataOutput",
                    "execute_result": "#/components/schemas/ExecuteResultOutput",
                    "error": "#/components/schemas/ErrorOutput",
                },
            },
        },
        "StreamOutput": _object(
            output_type={"const": "stream"},
            name={"enum": ["stdout", "stderr"]},
            text=_ref("MultilineString"),
        ),
        "DisplayDataOutput": _object(
            required=["output_type", "data", "metadata"],
            output_type={"const": "display_data"},
            data=_ref("MimeBundle"),
            metadata={"type": "object"},
            transient={"type": "object"},
        ),
        "ExecuteResultOutput": _object(
            output_type={"const": "execute_result"},
            execution_count=_nullable("integer"),
            data=_ref("MimeBundle"),
            metadata={"type": "object"},
        ),
        "ErrorOutput": _object(
            output_type={"const": "error"},
            ename=string,
            evalue=string,
            traceback={"type": "array", "items": string},
        ),
        "CodeCell": {
            **_object(
                id=string,
                cell_type={"const": "code"},
                metadata={
                    "type": "object",
                    "description": "`kernelagent`: role, status, started_at, duration_ms, index",
                },
                execution_count=_nullable("integer"),
                source=_ref("MultilineString"),
                outputs={"type": "array", "items": _ref("Output")},
            ),
            "description": "an nbformat 4.5 code cell",
        },
        "Artifact": _object(
            id=string,
            cell_id=string,
            mime_type=string,
            size=integer,
            sha256=string,
            url={"type": "string", "description": "a signed URL: works without a token"},
        ),
        "CellRun": _object(
            cell=_ref("CodeCell"), artifacts={"type": "array", "items": _ref("Artifact")}
        ),
        "TurnUsage": usage,
        "Turn": _object(
            id=string,
            session_id=string,
            status={"enum": ["running", "waiting", "completed", "failed", "interrupted"]},
            model=string,
            started_at=DATE_TIME,
            ended_at=_nullable("string", format="date-time"),
            usage=_ref("TurnUsage"),
            error=_nullable("string"),
        ),
        "TurnStarted": _object(turn_id=string, turn=_ref("Turn")),
        "TurnRef": _object(turn_id=string),
        "ReplayCell": _object(
            cell_id=string,
            index=integer,
            status={"enum": ["match", "differ", "error"]},
            diff={"type": "string", "description": "unified diff of the normalised outputs"},
            error=_nullable("string"),
            duration_ms=integer,
        ),
        "ReplayReport": _object(
            cells={"type": "array", "items": _ref("ReplayCell")},
            summary=_object(match=integer, differ=integer, error=integer),
            duration_ms=integer,
        ),
        "FileEntry": _object(
            path={"type": "string", "description": "relative to the workspace"},
            size=integer,
            sha256=string,
            modified_at=DATE_TIME,
        ),
        "FileList": _object(files={"type": "array", "items": _ref("FileEntry")}),
        "Notebook": {
            **_object(
                required=["nbformat", "nbformat_minor", "metadata", "cells"],
                nbformat={"const": 4},
                nbformat_minor=integer,
                metadata={"type": "object"},
                cells={"type": "array", "items": {"type": "object"}},
            ),
            "description": "a Jupyter notebook (nbformat 4)",
            "externalDocs": {
                "url": "https://nbformat.readthedocs.io/en/latest/format_description.html"
            },
        },
        "Upload": _object(
            required=["file"],
            file={
                "type": "string",
                "format": "binary",
                "contentMediaType": "application/octet-stream",
            },
            path={"type": "string", "description": "where in the workspace; default: file name"},
        ),
        "NotebookUpload": _object(
            required=["file"],
            file={
                "type": "string",
                "format": "binary",
                "contentMediaType": "application/x-ipynb+json",
            },
        ),
    }


def _request_schemas() -> dict[str, Any]:
    """The request models' own JSON Schema (and any models they nest) as components."""
    schemas: dict[str, Any] = {}
    for model in REQUESTS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """An empty body counts as ``{}``: the body is required only when the model requires some
    field."""
    schema = model.model_json_schema()
    return {
        "required": bool(schema.get("required")),
        "content": {"application/json": {"schema": _ref(model.__name__)}},
    }


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Any],
    errors: tuple[int, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    """One operation; every authenticated one can answer 401, and any can answer ``Error``."""
    codes = sorted({*errors, *(() if extra.get("security") == [] else (401,))})
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        **extra,
        "responses": {
            **responses,
            **{str(c): {"$ref": f"#/components/responses/{ERRORS[c][0]}"} for c in codes},
            "default": {"$ref": "#/components/responses/Error"},
        },
    }


def _param(name: str, where: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


SESSION_ID = {"$ref": "#/components/parameters/session_id"}
TURN_ID = {"$ref": "#/components/parameters/turn_id"}
NO_CONTENT = {"description": "Done; no body"}
JSON_IN = (400, 413, 422)


def _paths() -> dict[str, Any]:
    session = "/api/v1/sessions/{session_id}"
    turn = session + "/turns/{turn_id}"
    return {
        "/api/v1/health": {
            "get": _operation(
                "health",
                "Liveness, version, sandbox and warm pool",
                "meta",
                {"200": _json(_ref("Health"), "The server is up")},
                security=[],
            )
        },
        PATH: {
            "get": _operation(
                "openapi",
                "This document",
                "meta",
                {"200": _json({"type": "object"}, "An OpenAPI 3.1 document")},
                security=[],
            )
        },
        "/api/v1/sessions": {
            "get": _operation(
                "listSessions",
                "The caller's sessions, newest first",
                "sessions",
                {"200": _json(_ref("SessionList"), "The sessions")},
            ),
            "post": _operation(
                "createSession",
                "Create a session with a kernel from the warm pool",
                "sessions",
                {"201": _json(_ref("Session"), "The new session")},
                (*JSON_IN, 503),
                description=f"A title longer than {TITLE_MAX} characters is a 422.",
                requestBody=_body(CreateSession),
            ),
        },
        session: {
            "parameters": [SESSION_ID],
            "get": _operation(
                "getSession",
                "One session, with the usage of all its turns",
                "sessions",
                {"200": _json(_ref("Session"), "The session, with `usage`")},
                (404,),
            ),
            "patch": _operation(
                "updateSession",
                "Rename, or switch approval mode",
                "sessions",
                {"200": _json(_ref("Session"), "The updated session (without `usage`)")},
                (*JSON_IN, 404),
                description="Absent or null fields are left as they are.",
                requestBody=_body(UpdateSession),
            ),
            "delete": _operation(
                "deleteSession",
                "Delete a session and stop its kernel",
                "sessions",
                {"204": NO_CONTENT},
                (404,),
            ),
        },
        session + "/cells": {
            "parameters": [SESSION_ID],
            "post": _operation(
                "runCell",
                "Run a code cell directly (a person's cell, no LLM)",
                "cells",
                {"200": _json(_ref("CellRun"), "The recorded cell and its stored artifacts")},
                (*JSON_IN, 404, 429, 503),
                description="Waits for the session's lock in arrival order; a cell that "
                "times out is interrupted and keeps its partial output.",
                requestBody=_body(RunCell),
            ),
        },
        session + "/interrupt": {
            "parameters": [SESSION_ID],
            "post": _operation(
                "interrupt",
                "Stop the running cell and the agent's turn",
                "cells",
                {"204": NO_CONTENT},
                (404,),
            ),
        },
        session + "/messages": {
            "parameters": [SESSION_ID],
            "post": _operation(
                "sendMessage",
                "Start an agent turn",
                "turns",
                {"202": _json(_ref("TurnStarted"), "The turn runs in the background")},
                (*JSON_IN, 404, 409, 503),
                description="Its progress is on the event stream. 409 while another turn "
                "runs; 503 without an LLM configured.",
                requestBody=_body(NewMessage),
            ),
        },
        turn: {
            "parameters": [SESSION_ID, TURN_ID],
            "get": _operation(
                "getTurn",
                "One turn: status, model, usage, error",
                "turns",
                {"200": _json(_ref("Turn"), "The turn")},
                (404,),
            ),
        },
        turn + "/answer": {
            "parameters": [SESSION_ID, TURN_ID],
            "post": _operation(
                "answerTurn",
                "Answer the agent's `ask_user`",
                "turns",
                {"202": _json(_ref("TurnRef"), "The turn goes on")},
                (*JSON_IN, 404, 409),
                requestBody=_body(Answer),
            ),
        },
        turn + "/approval": {
            "parameters": [SESSION_ID, TURN_ID],
            "post": _operation(
                "approveCell",
                "Approve, edit or reject the agent's proposed cell (approval mode)",
                "turns",
                {"202": _json(_ref("TurnRef"), "The turn goes on")},
                (*JSON_IN, 404, 409),
                description="`edit` needs the edited code in `code` (else 400).",
                requestBody=_body(Approval),
            ),
        },
        session + "/events": {
            "parameters": [SESSION_ID],
            "get": _operation(
                "events",
                "The session's events, live (server-sent events)",
                "events",
                {"200": _event_stream()},
                (400, 404),
                parameters=[
                    _param(
                        "Last-Event-ID",
                        "header",
                        "Resume after this event id (EventSource sends it on reconnect)",
                    ),
                    _param("after", "query", "As `Last-Event-ID`, for clients that cannot set it"),
                ],
            ),
        },
        session + "/replay": {
            "parameters": [SESSION_ID],
            "post": _operation(
                "replay",
                "Re-execute the record in a fresh kernel and compare each cell",
                "worldlines",
                {"200": _json(_ref("ReplayReport"), "One report per code cell")},
                (404, 503),
                description="Progress is on the event stream (`replay.*`).",
            ),
        },
        session + "/branch": {
            "parameters": [SESSION_ID],
            "post": _operation(
                "branch",
                "A new session: the record up to a cell, its files and kernel state there",
                "worldlines",
                {"201": _json(_ref("Session"), "The new session (`parent_id` set)")},
                (*JSON_IN, 404, 503),
                requestBody=_body(Branch),
            ),
        },
        "/api/v1/notebooks": {
            "post": _operation(
                "importNotebook",
                "Import an `.ipynb` as a new session",
                "worldlines",
                {"201": _json(_ref("Session"), "The new session")},
                (400, 413, 422, 503),
                description="422 if the body is not a valid notebook.",
                parameters=[
                    _param(
                        "replay",
                        "query",
                        "Rebuild the kernel state by replaying the cells (`1`/`yes` too)",
                        type="boolean",
                        default=False,
                    )
                ],
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("Notebook")},
                        "application/x-ipynb+json": {"schema": _ref("Notebook")},
                        "multipart/form-data": {"schema": _ref("NotebookUpload")},
                    },
                },
            ),
        },
        session + "/files": {
            "parameters": [SESSION_ID],
            "get": _operation(
                "listFiles",
                "The workspace's files",
                "files",
                {"200": _json(_ref("FileList"), "The files")},
                (404,),
            ),
            "post": _operation(
                "uploadFile",
                "Upload a file into the workspace (recorded in the notebook)",
                "files",
                {"201": _json(_ref("FileEntry"), "The stored file")},
                (400, 404, 413, 429),
                description="`path` may also be given as a query parameter.",
                parameters=[_param("path", "query", "Where in the workspace")],
                requestBody={
                    "required": True,
                    "content": {"multipart/form-data": {"schema": _ref("Upload")}},
                },
            ),
        },
        session + "/files/{path}": {
            "parameters": [
                SESSION_ID,
                _param(
                    "path",
                    "path",
                    "Relative to the workspace; may span segments (`/` sent as is or as `%2F`)",
                ),
            ],
            "get": _operation(
                "downloadFile",
                "A workspace file's bytes (as an attachment)",
                "files",
                {"200": _bytes("The bytes; the type guessed from the name", attachment=True)},
                (400, 404),
            ),
        },
        session + "/notebook": {
            "parameters": [SESSION_ID],
            "get": _operation(
                "exportNotebook",
                "The session's record as an `.ipynb` (also written to storage)",
                "worldlines",
                {
                    "200": {
                        "description": "The notebook, as an attachment",
                        "headers": {"Content-Disposition": _header("attachment; filename=…")},
                        "content": {"application/x-ipynb+json": {"schema": _ref("Notebook")}},
                    }
                },
                (404,),
            ),
        },
        "/api/v1/artifacts/{artifact_id}": {
            "parameters": [_param("artifact_id", "path", "The artifact's id")],
            "get": _operation(
                "getArtifact",
                "An artifact's bytes, with its type",
                "files",
                {"200": _bytes("The bytes; HTML and SVG are sent with `CSP: sandbox`")},
                (403, 404),
                description="For its owner, or for anyone with a valid signed URL "
                "(`?expires=&signature=`, as an artifact's `url` gives).",
                parameters=[
                    _param("expires", "query", "Unix time the signed URL expires", type="integer")
                ],
                security=[{"token": []}, {"cookie": []}, {"signedUrl": []}],
            ),
        },
    }


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


def _bytes(description: str, attachment: bool = False) -> dict[str, Any]:
    headers = {"Content-Disposition": _header("attachment; filename*=UTF-8''…")}
    return {
        "description": description,
        **({"headers": headers} if attachment else {}),
        "content": {"*/*": {"schema": {}}},
    }


def _event_stream() -> dict[str, Any]:
    return {
        "description": (
            "Each event is `id:` (increasing per session), `event:` (its type) and `data:` (one "
            "line of JSON), as `x-events` gives per type; `: keepalive` comments come every 15 s. "
            "A client reconnecting with `Last-Event-ID` gets every event after it, none twice."
        ),
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "x-events": {name: _event_data(shape) for name, shape in EVENTS.items()},
            }
        },
    }


def _components() -> dict[str, Any]:
    error = _json(_ref("Error"), "An error")
    return {
        "schemas": {**_schemas(), **_request_schemas()},
        "responses": {
            "Error": error,
            **{name: {**error, "description": text} for name, text in ERRORS.values()},
        },
        "parameters": {
            "session_id": _param("session_id", "path", "The session's id (a UUID)"),
            "turn_id": _param("turn_id", "path", "The turn's id"),
        },
        "securitySchemes": {
            "token": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`token <t>` or `Bearer <t>`; `kernelagent user add` prints one",
            },
            "cookie": {
                "type": "apiKey",
                "in": "cookie",
                "name": COOKIE,
                "description": "The web UI's signed cookie (set at `/signin`); requests other "
                "than GET must also send `X-XSRFToken` with the `_xsrf` cookie's value",
            },
            "signedUrl": {
                "type": "apiKey",
                "in": "query",
                "name": "signature",
                "description": "An artifact's signed URL (with `expires`), valid until then",
            },
        },
    }


@functools.cache
def document() -> dict[str, Any]:
    """The document, built once per process (everything in it is fixed at import)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kernelagent",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "BSD-3-Clause", "identifier": "BSD-3-Clause"},
        },
        "security": [{"token": []}, {"cookie": []}],
        "tags": [
            {"name": name}
            for name in ("meta", "sessions", "cells", "turns", "events", "worldlines", "files")
        ],
        "paths": _paths(),
        "components": _components(),
    }


@functools.cache
def _encoded() -> bytes:
    return json.dumps(document(), ensure_ascii=False).encode()


class OpenApiHandler(ApiHandler):
    """No auth: a client needs the description to learn how to authenticate."""

    auth_required = False

    def get(self) -> None:
        self.finish(_encoded())
