"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of the ``/api/v1`` JSON API, generated.

Paths come from the route table and each handler method's ``@operation`` (``web/base.py``); path
parameters from the route's groups and the method's arguments; every schema from the pydantic
models the handlers parse and answer with (``web/serialize.py`` and the request models), the
events of ``kernelagent.events`` and the error codes of ``errors.py``. Nothing here restates a
shape, so the document cannot drift from what the server does; ``tests/web/test_openapi.py``
checks answers and events against it. The Kernel Gateway surface is only summarised: it follows
Jupyter Kernel Gateway's own swagger, which its clients already know.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from typing import Any

import pydantic

from kernelagent import __version__
from kernelagent.events import EVENT_MODELS, EVENT_TYPES
from kernelagent.web.base import COOKIE, ApiHandler, Operation, operation
from kernelagent.web.serialize import ErrorBody, OpenApiDocument

PATH = "/api/v1/openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")
GROUP = re.compile(r"\((?!\?)[^()]*\)")  # a capturing group (the API's patterns nest none)
REF = "#/components/schemas/{model}"

DESCRIPTION = f"""\
The JSON API of kernelagent: sessions (each owns one sandboxed IPython kernel and a notebook
record), code cells, the agent's turns, their live events, files, artifacts, replay, branch and
notebook import.

**Auth**: `Authorization: token <t>` (or `Bearer <t>`) on everything but `/health` and this
document; the web UI uses its signed cookie instead, and then requests other than GET must send
tornado's XSRF token (`X-XSRFToken` header, the value of the `_xsrf` cookie). Another user's
session, file or artifact answers 404, as an unknown one does.

**Errors** are `{{"error": {{"code", "message"}}}}` with their status (see each operation).

**Events**: `GET /api/v1/sessions/{{session_id}}/events` is a server-sent event stream; its
types: {", ".join(f"`{t}`" for t in EVENT_TYPES)}.

**Kernel Gateway API** (not described here: it follows Jupyter Kernel Gateway's swagger in
"jupyter-websocket" mode, so Jupyter clients attach to session kernels): `GET /api`,
`GET /api/kernelspecs`, `GET /api/kernelspecs/{{name}}`, `GET /kernelspecs/{{name}}/{{resource}}`,
`GET`/`POST /api/kernels`, `GET`/`DELETE /api/kernels/{{kernel_id}}`,
`POST /api/kernels/{{kernel_id}}/interrupt` and `/restart`, and the WebSocket
`/api/kernels/{{kernel_id}}/channels` (JSON frames, or the `v1.kernel.websocket.jupyter.org`
subprotocol). A session's `kernel_id` is its kernel's id there; every live session is also
offered as a kernelspec (`agent-<session id>`) whose start attaches to that session's kernel.
The same tokens work, also as `?token=`; its errors keep Jupyter's `{{"message", "reason"}}`.
"""

# status → (component name, what it means here)
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
PATH_PARAMS = {
    "session_id": "The session's id (a UUID)",
    "turn_id": "The turn's id",
    "artifact_id": "The artifact's id",
}
Route = tuple[str, type[ApiHandler]]


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The document for the ``/api/v1`` routes among ``routes``."""
    models: dict[str, Any] = {"ErrorBody": ErrorBody}
    paths: dict[str, Any] = {}
    for pattern, handler in routes:
        described = {m: getattr(handler, m).operation for m in METHODS if _described(handler, m)}
        if not pattern.startswith("/api/v1/") or not described:
            continue
        path, names = _path(pattern, handler, next(iter(described)))
        paths[path] = {
            method: _operation(op, handler, names, models) for method, op in described.items()
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kernelagent",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "BSD-3-Clause", "identifier": "BSD-3-Clause"},
        },
        "security": [{"token": []}, {"cookie": []}],
        "paths": paths,
        "components": _components(models),
    }


def _described(handler: type, method: str) -> bool:
    return isinstance(getattr(getattr(handler, method, None), "operation", None), Operation)


def _path(pattern: str, handler: type, method: str) -> tuple[str, tuple[str, ...]]:
    """``/api/v1/sessions/([^/]+)/cells`` → ``/api/v1/sessions/{session_id}/cells``: each group
    named after the argument of the handler's method that receives it."""
    names = tuple(inspect.signature(getattr(handler, method)).parameters)[1:]
    parts = GROUP.split(pattern.removesuffix("$"))
    if len(parts) != len(names) + 1:
        raise ValueError(f"{pattern}: its groups and {handler.__name__}'s arguments differ")
    path = parts[0] + "".join(
        "{" + n + "}" + rest for n, rest in zip(names, parts[1:], strict=True)
    )
    return re.sub(r"\\(.)", r"\1", path), names


def _operation(
    op: Operation, handler: type[ApiHandler], names: Sequence[str], models: dict[str, Any]
) -> dict[str, Any]:
    parameters = [
        _param(n, "path", op.path_params.get(n) or PATH_PARAMS.get(n, n)) for n in names
    ] + [_param(p.name, p.where, p.description, p.schema) for p in op.params]
    result: dict[str, Any] = {
        "operationId": op.id,
        "summary": op.summary,
        "tags": [op.tag],
        **({"description": op.description} if op.description else {}),
        "parameters": parameters,
    }
    if not handler.auth_required:
        result["security"] = []
    elif op.security:
        result["security"] = [{s: []} for s in ("token", "cookie", *op.security)]
    bodies = {"application/json": op.body} if op.body else op.bodies
    if bodies:
        required = op.body is None or bool(op.body.model_json_schema().get("required"))
        result["requestBody"] = {
            "required": required,
            "content": {kind: {"schema": _ref(m, models)} for kind, m in bodies.items()},
        }
    errors = {*op.errors, *((400, 413, 422) if op.body else ()), *(401,) * handler.auth_required}
    result["responses"] = {
        str(op.status): _answer(op, models),
        **{str(c): {"$ref": f"#/components/responses/{ERRORS[c][0]}"} for c in sorted(errors)},
        "default": {"$ref": "#/components/responses/Error"},
    }
    return result


def _answer(op: Operation, models: dict[str, Any]) -> dict[str, Any]:
    if op.answer is None:
        return {"description": "Done; no body"}
    if op.answer is bytes:
        return {"description": "The bytes", "content": {op.answer_type: {"schema": {}}}}
    if op.answer_type == "text/event-stream":
        events = {m.model_fields["type"].default: _event_data(m, models) for m in EVENT_MODELS}
        one = {  # each event of the stream (x-events: the data of each type)
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "event": {"type": "string", "enum": sorted(events)},
                "data": {"type": "string", "contentMediaType": "application/json"},
                "retry": {"type": "integer"},
            },
        }
        stream = {"schema": one, "x-events": events}
        return {"description": op.description, "content": {op.answer_type: stream}}
    description = (op.answer.__doc__ or op.summary).strip().splitlines()[0]
    return {
        "description": description,
        "content": {op.answer_type: {"schema": _ref(op.answer, models)}},
    }


def _event_data(model: type[pydantic.BaseModel], models: dict[str, Any]) -> dict[str, Any]:
    """The schema of an event's ``data:`` (the model without its ``type``)."""
    schema = model.model_json_schema(ref_template=REF)
    for name, nested in schema.pop("$defs", {}).items():
        models.setdefault(name, nested)
    schema["properties"].pop("type")
    schema["required"] = [r for r in schema.get("required", []) if r != "type"]
    return schema


def _ref(model: type[pydantic.BaseModel], models: dict[str, Any]) -> dict[str, str]:
    models[model.__name__] = model
    return {"$ref": REF.format(model=model.__name__)}


def _param(name: str, where: str, description: str, schema: Any = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _components(models: dict[str, Any]) -> dict[str, Any]:
    schemas = {k: v for k, v in models.items() if isinstance(v, dict)}
    classes = [(m, "serialization") for m in models.values() if not isinstance(m, dict)]
    _, defs = pydantic.json_schema.models_json_schema(classes, ref_template=REF)
    schemas.update(defs.get("$defs", {}))
    error = {
        "description": "An error",
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }
    return {
        "schemas": dict(sorted(schemas.items())),
        "responses": {
            "Error": error,
            **{name: {**error, "description": text} for name, text in ERRORS.values()},
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


class OpenApiHandler(ApiHandler):
    """No auth: a client needs the description to learn how to authenticate."""

    auth_required = False
    routes: Sequence[Route]
    _encoded: bytes | None = None

    @operation("openapi", "This document", "meta", answer=OpenApiDocument)
    def get(self) -> None:
        cls = type(self)
        if cls._encoded is None:  # the routes are fixed: built once per process
            cls._encoded = json.dumps(document(self.routes), ensure_ascii=False).encode()
        self.finish(cls._encoded)
