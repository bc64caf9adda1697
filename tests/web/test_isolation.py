"""No route lets one user read or change another's sessions: every route of the server's own
table (REST, Kernel Gateway REST, SSE, artifacts, files, pages, MCP), each method it has, is
called as another user with the owner's ids filled in; none answers 2xx or shows the owner's
data, and afterwards the owner's session is as it was."""

from __future__ import annotations

import json
import re

import pytest
from conftest import running
from llm_server import text
from test_agent import agent_settings, ask, ended, events_of, llm  # noqa: F401
from tornado import web
from tornado.websocket import websocket_connect

from kernelagent.web.base import COOKIE

pytestmark = pytest.mark.sandbox

SECRET = "owner-secret-7f3a"
GROUP = re.compile(r"\((?:[^()]|\\\(|\\\))*\)")  # one capture group of a route pattern


@pytest.fixture(params=["embedded"])
async def server(request, tmp_path, unused_port, llm):  # noqa: F811
    async with running(agent_settings(request, tmp_path, unused_port, llm)) as s:
        yield s


def fill(pattern: str, ids: dict[str, str]) -> list[str] | None:
    """The route's paths with the owner's ids in its groups, by what precedes each (a group of
    literal alternatives, ``(interrupt|restart)``, gives a path for each)."""
    paths, rest = [""], pattern.rstrip("$")
    while (match := GROUP.search(rest)) is not None:
        before = rest[: match.start()]
        inner = match.group()[1:-1]
        if re.fullmatch(r"[a-z|]+", inner):
            choices = inner.split("|")
        else:
            kind = "resource" if before == "/" else None  # a group right after a group
            kind = kind or next((k for k in ids if before.endswith(f"/{k}/")), None)
            if kind is None:
                return None
            choices = [ids[kind]]
        paths = [p + before + choice for p in paths for choice in choices]
        rest = rest[match.end() :]
    return [(p + rest).replace("\\.", ".").replace("/?", "") for p in paths]


async def test_no_route_lets_another_user_read_or_change_a_session(server, llm):  # noqa: F811
    sid = (await server.session(SECRET))["id"]
    plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.title('%s'); plt.show()"
    made = await server.run(sid, plot % SECRET)
    assert made["artifacts"]
    assert (await server.upload(sid, "data.txt", SECRET.encode())).code == 201
    llm.script(text(f"the answer is {SECRET}"))
    async with events_of(server, sid) as events:
        turn_id = await ask(server, sid, "hello")
        await events.until(ended(turn_id))
    before = await server.services.db.cells.list(sid)
    ids = {
        "sessions": sid,
        "kernels": sid,
        "turns": turn_id,
        "cells": before[0].id,
        "artifacts": made["artifacts"][0]["id"],
        "files": "data.txt",
        "kernelspecs": f"agent-{sid}",
        "resource": "logo-64x64.png",
    }
    mallory = await server.new_user("mallory")
    secret = server.app.web.settings["cookie_secret"]
    cookie = web.create_signed_value(secret, COOKIE, mallory).decode()
    as_mallory = {"Cookie": f"{COOKIE}={cookie}", "Authorization": f"token {mallory}"}

    tried = []
    for rule in server.app.web.wildcard_router.rules:
        pattern, handler = rule.matcher.regex.pattern, rule.target
        if not GROUP.search(pattern) or "static" in pattern or pattern == "/(.*)$":
            continue
        paths = fill(pattern, ids)
        assert paths is not None, f"no owner id to fill {pattern} with: add its kind"
        for path in paths:
            tried += await attempt(server, handler, path, mallory, as_mallory, before[0].id)
    assert len(tried) >= 25, tried  # the table was walked, not skipped

    after = await server.services.db.cells.list(sid)
    assert after == before
    session = await server.services.db.sessions.get(sid)
    assert session is not None and session.title == SECRET and session.kernel_id
    files = await server.json(f"/api/v1/sessions/{sid}/files")
    assert [f["path"] for f in files["files"]] == ["data.txt"]
    assert json.loads((await server.fetch(f"/api/v1/sessions/{sid}")).body)["title"] == SECRET


async def attempt(server, handler, path: str, token: str, headers: dict, cell_id: str) -> list:
    """Every method of the route at ``path``, as the other user: none may succeed."""
    if hasattr(handler, "open"):  # a WebSocket
        url = f"ws://127.0.0.1:{server.port}{path}?token={token}"
        with pytest.raises(Exception, match="404"):
            await websocket_connect(url)
        return [("WS", path)]
    tried = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        if getattr(handler, method.lower()) is getattr(web.RequestHandler, method.lower()):
            continue
        body, sent = valid_body(method, path, cell_id)  # past validation: ownership must refuse it
        answer = await server.client.fetch(
            server.base + path, method=method, body=body, headers={**headers, **sent},
            raise_error=False, follow_redirects=False, request_timeout=30,
        )  # fmt: skip
        shown = (answer.body or b"").decode(errors="replace")
        assert not 200 <= answer.code < 300, (method, path, answer.code, shown[:300])
        assert SECRET not in shown, (method, path, answer.code)
        tried.append((method, path))
    return tried


BODIES = {
    "/cells": {"code": "pwned = 1"},
    "/messages": {"content": "pwned"},
    "/answer": {"answer": "pwned"},
    "/approval": {"decision": "approve"},
    "/replay": {},
}


def valid_body(method: str, path: str, cell_id: str) -> tuple[bytes | None, dict[str, str]]:
    """A body the route would accept from its owner, and its content type."""
    if method not in ("POST", "PUT", "PATCH"):
        return None, {}
    if path.endswith("/files"):
        boundary = "isolation-boundary"
        part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.txt"'
        body = f"{part}\r\n\r\npwned\r\n--{boundary}--\r\n".encode()
        return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if path.endswith("/branch"):
        return json.dumps({"cell_id": cell_id}).encode(), {"Content-Type": "application/json"}
    found = next((b for end, b in BODIES.items() if path.endswith(end)), {"title": "pwned"})
    return json.dumps(found).encode(), {"Content-Type": "application/json"}
