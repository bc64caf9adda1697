"""``GET /api/v1/openapi.json``: a valid OpenAPI 3.1 document that matches the routes the app
serves, the bodies its handlers parse, the events its services publish and the answers it gives,
so an undocumented route, model, event or field fails here."""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
import textwrap
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from tornado import web

from kernelagent.events import EVENT_MODELS, EVENT_TYPES
from kernelagent.web.base import NotFoundHandler

pytestmark = pytest.mark.parametrize("ka_server", ["embedded"], indirect=True)

METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
GROUP = re.compile(r"\((?!\?)[^()]*\)")  # a capturing group (the API's patterns nest none)


async def fetch_document(server) -> dict[str, Any]:
    response = await server.fetch("/api/v1/openapi.json", token=None)
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


def api_routes(server) -> dict[str, tuple[type, set[str]]]:
    """``/api/v1`` routes of the running app as OpenAPI paths → (handler, its methods); a
    regex group is named after the handler's argument that receives it."""
    found: dict[str, tuple[type, set[str]]] = {}
    for rule in server.app.web.wildcard_router.rules:
        pattern = rule.matcher.regex.pattern.removesuffix("$")
        handler = rule.target
        if not pattern.startswith("/api/v1/") or handler is NotFoundHandler:
            continue
        methods = {m for m in METHODS if getattr(handler, m) is not getattr(web.RequestHandler, m)}
        signatures = {tuple(inspect.signature(getattr(handler, m)).parameters)[1:] for m in methods}
        assert len(signatures) == 1, f"{pattern}: methods of {handler.__name__} disagree"
        names = signatures.pop()
        parts = GROUP.split(pattern)
        assert len(parts) == len(names) + 1, f"{pattern}: groups and arguments differ"
        path = parts[0] + "".join(
            "{" + name + "}" + rest for name, rest in zip(names, parts[1:], strict=True)
        )
        path = re.sub(r"\\(.)", r"\1", path)
        assert not re.search(r"[()\[\]*+?^$|\\]", path), f"{pattern}: not a plain path"
        found[path] = (handler, methods)
    return found


def operations(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


async def test_the_document_is_valid_openapi_3_1(ka_server):
    document = await fetch_document(ka_server)
    assert document["openapi"].startswith("3.1")
    validate(document, cls=OpenAPIV31SpecValidator)
    assert "/api/kernels/{kernel_id}/channels" in document["info"]["description"]


async def test_every_route_is_documented_and_every_path_is_a_route(ka_server):
    document = await fetch_document(ka_server)
    served = {path: methods for path, (_, methods) in api_routes(ka_server).items()}
    documented = {
        path: {m for m in METHODS if m in item} for path, item in document["paths"].items()
    }
    assert served == documented


async def test_only_handlers_without_auth_are_documented_without_it(ka_server):
    document = await fetch_document(ka_server)
    handlers = api_routes(ka_server)
    for path, method, operation in operations(document):
        anonymous = operation.get("security", document["security"]) == []
        assert anonymous == (not handlers[path][0].auth_required), (method, path)


async def test_json_bodies_are_the_models_the_handlers_parse(ka_server):
    document = await fetch_document(ka_server)
    handlers = api_routes(ka_server)
    for path, method, operation in operations(document):
        source = textwrap.dedent(inspect.getsource(getattr(handlers[path][0], method)))
        parsed = {
            node.args[0].id
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "json_body"
        }
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        ref = body.get("schema", {}).get("$ref", "")
        assert len(parsed) <= 1, (method, path)
        if parsed:
            assert ref == f"#/components/schemas/{parsed.pop()}", (method, path)
            schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
            assert schema["additionalProperties"] is False  # the model's own schema


async def test_every_event_type_is_documented_with_its_model(ka_server):
    document = await fetch_document(ka_server)
    item = document["paths"]["/api/v1/sessions/{session_id}/events"]["get"]
    documented = item["responses"]["200"]["content"]["text/event-stream"]["x-events"]
    assert list(documented) == list(EVENT_TYPES)
    for model in EVENT_MODELS:
        fields = set(model.model_fields) - {"type"}
        assert set(documented[model.model_fields["type"].default]["properties"]) == fields


def closed(schema: Any) -> Any:
    """``schema`` with every listed object closed: an answer with an undocumented field fails."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: closed(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


class Answers:
    """Checks answers against what the document says of that path, method and status."""

    def __init__(self, document: dict[str, Any]):
        self.document = document
        self.components = closed(copy.deepcopy(document["components"]))

    def check(self, path: str, method: str, status: int, body: Any, kind="application/json"):
        responses = self.document["paths"][path][method]["responses"]
        response = responses.get(str(status), responses["default"])
        if "$ref" in response:
            response = self.document["components"]["responses"][response["$ref"].rsplit("/")[-1]]
        self.conforms(response["content"][kind]["schema"], body)

    def conforms(self, schema: dict[str, Any], instance: Any) -> None:
        root = {**closed(schema), "components": self.components}
        jsonschema.Draft202012Validator(root).validate(instance)


@pytest.mark.sandbox
async def test_answers_and_events_have_the_documented_shapes(ka_server):
    answers = Answers(await fetch_document(ka_server))
    one = "/api/v1/sessions/{session_id}"

    async def call(template: str, method: str, status: int, body: Any = None, **kw: Any) -> Any:
        path = template.format(session_id=sid, turn_id="no-such-turn")
        response = await ka_server.fetch(path, method.upper(), body, **kw)
        assert response.code == status, (method, path, response.code, response.body)
        parsed = json.loads(response.body)
        answers.check(template, method, status, parsed)
        return parsed

    sid = ""
    await call("/api/v1/health", "get", 200, token=None)
    sid = (await call("/api/v1/sessions", "post", 201, {"title": "shapes"}))["id"]
    await call("/api/v1/sessions", "get", 200)
    await call(one, "get", 200)
    await call(one, "patch", 200, {"approval_mode": True})
    code = (
        "from IPython.display import HTML, display\nprint('out'); display(HTML('<b>x</b>'))\n41 + 1"
    )
    ran = await call(one + "/cells", "post", 200, {"code": code})
    assert {o["output_type"] for o in ran["cell"]["outputs"]} == {
        "stream",
        "display_data",
        "execute_result",
    }
    assert ran["artifacts"]
    await call(one + "/cells", "post", 200, {"code": "1/0"})
    upload = await ka_server.upload(sid, "data.csv", b"a,b\n1,2\n")
    answers.check(one + "/files", "post", upload.code, json.loads(upload.body))
    await call(one + "/files", "get", 200)
    await call(one + "/replay", "post", 200)
    notebook = await ka_server.fetch(f"/api/v1/sessions/{sid}/notebook")
    answers.check(
        one + "/notebook", "get", 200, json.loads(notebook.body), "application/x-ipynb+json"
    )

    await call(one + "/cells", "post", 422, {"code": 1})
    await call(one + "/messages", "post", 503, {"content": "hi"})
    await call(one + "/turns/{turn_id}", "get", 404)

    item = answers.document["paths"][one + "/events"]["get"]
    schemas = item["responses"]["200"]["content"]["text/event-stream"]["x-events"]
    events = await ka_server.services.events.read(sid, None)
    assert {"cell.started", "cell.output", "cell.completed", "replay.completed"} <= {
        e.type for e in events
    }
    for event in events:
        answers.conforms(schemas[event.type], event.data)
