"""The web notebook-style chat: server-rendered pages (jinja2 templates) and their static assets.

=========================================  ===============================================
``GET /signin``, ``POST /signin``          the token form; sets the signed cookie ``COOKIE``
``GET /?token=T``                          what ``kernelagent serve`` prints: signs in, then
                                           redirects to ``/`` so the token leaves the URL
``POST /signout``                          clears the cookie
``GET /``                                  the session list (tree of branches, usage)
``GET /sessions/{id}``                     a session: its record, a composer, live updates
``GET /sessions/{id}/cells/{cell_id}``     one cell's HTML, for the live page (one renderer)
``GET /static/…``                          CSS/JS; ``/static/vendor/plotly.min.js`` is the
                                           plotly.js the installed ``plotly`` package ships
=========================================  ===============================================

Pages read the same cookie the JSON API accepts, so the page's scripts call ``/api/v1`` with it
(plus tornado's XSRF token, sent as ``X-XSRFToken``). Every page carries a Content-Security-Policy
that forbids inline scripts: the scripts are static files, data reaches them through a
``<script type="application/json">`` block.

The session page is rendered from the notebook record plus the event log read *first*: the
newest event id goes to the page's ``EventSource`` (``?after=``), so a reload mid-turn neither
loses nor repeats anything — what happened after that id is replayed, and the page's script
replaces cells by id. A running cell's outputs, the streamed text of the model's current message,
and a pending question or approval exist only in the event log until they are recorded; they are
rebuilt from it here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jinja2
import plotly
from tornado import web

import kernelagent
from kernelagent.domain import Cell, Session, User
from kernelagent.errors import KernelAgentError, NotFound
from kernelagent.events import (
    ApprovalRequired,
    AskUser,
    CellAdded,
    CellOutput,
    CellStarted,
    Logged,
    MessageCompleted,
    MessageDelta,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    UsageReported,
)
from kernelagent.services.outputs import extract_artifacts
from kernelagent.services.ports import EventLog
from kernelagent.web.base import COOKIE, COOKIE_DAYS
from kernelagent.web.render import CellView, Renderer, script_json

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; frame-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'"
)
ARTIFACT_WAIT = 1.0  # seconds a just-finished cell's fragment waits for its artifact rows


def asset_dir(name: str) -> Path:
    """``templates``/``static``: inside the package in a wheel, at the repository's top level
    in an editable install."""
    package = Path(kernelagent.__file__).resolve().parent
    for candidate in (package / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the web UI's {name}/ directory is missing")


class Assets:
    """URLs of static files with a content hash (``?v=``), so browsers may cache them forever."""

    def __init__(self, static_dir: Path, vendor_dir: Path):
        self.static_dir, self.vendor_dir = static_dir, vendor_dir
        self._versions: dict[str, str] = {}

    def url(self, name: str) -> str:
        if name not in self._versions:
            vendor = name.startswith("vendor/")
            path = self.vendor_dir / name[7:] if vendor else self.static_dir / name
            self._versions[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return f"/static/{name}?v={self._versions[name]}"


# ------------------------------------------------------------------------------ handlers


class PageHandler(web.RequestHandler):
    """Base of the pages: cookie sign-in, CSP, jinja2 rendering, HTML error pages."""

    login_required = True
    services: Any
    env: jinja2.Environment
    assets: Assets
    renderer: Renderer

    def initialize(self, **deps: Any) -> None:
        for name, value in deps.items():
            setattr(self, name, value)

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        cookie = self.get_signed_cookie(COOKIE, max_age_days=COOKIE_DAYS)
        user = await self.services.auth.authenticate(cookie.decode()) if cookie else None
        self.current_user = user
        if user is None and self.login_required:
            self.redirect("/signin?" + urllib.parse.urlencode({"next": self.request.uri}))

    @property
    def user(self) -> User:
        assert isinstance(self.current_user, User)
        return self.current_user

    def render_page(self, template: str, status: int = 200, **context: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        page = self.env.get_template(template).render(
            static=self.assets.url,
            xsrf_token=self.xsrf_token.decode(),
            user=self.current_user,
            **context,
        )
        self.finish(page)

    def sign_in(self, token: str) -> None:
        self.set_signed_cookie(
            COOKIE,
            token,
            expires_days=COOKIE_DAYS,
            httponly=True,
            samesite="Strict",
            secure=self.request.protocol == "https",
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, KernelAgentError) and (exc.status < 500 or exc.code != "internal_error"):
            self.set_status(exc.status)
            message = str(exc)
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message
        self.render_page("error.html", status=self.get_status(), message=message)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, KernelAgentError) and value.status < 500:
            return
        super().log_exception(typ, value, tb)


class SignInPage(PageHandler):
    login_required = False

    def get(self) -> None:
        self.render_page("signin.html", next=_local(self.get_query_argument("next", "/")))

    async def post(self) -> None:
        token = self.get_body_argument("token", "").strip()
        target = _local(self.get_body_argument("next", "/"))
        if token and await self.services.auth.authenticate(token):
            self.sign_in(token)
            self.redirect(target)
            return
        self.render_page("signin.html", status=401, next=target, error="That token is not valid.")


class SignOut(PageHandler):
    login_required = False

    def post(self) -> None:
        self.clear_cookie(COOKIE)
        self.redirect("/signin")


class SessionsPage(PageHandler):
    """The session list; ``?token=`` (the link ``kernelagent serve`` prints) signs in first."""

    login_required = False

    async def get(self) -> None:
        token = self.get_query_argument("token", None)
        if token is not None:
            if await self.services.auth.authenticate(token.strip()):
                self.sign_in(token.strip())
                self.redirect("/")
            else:
                error = "The token in that link is not valid."
                self.render_page("signin.html", status=401, next="/", error=error)
            return
        if self.current_user is None:
            self.redirect("/signin")
            return
        s = self.services
        sessions = await s.sessions.list(self.user)
        usage = {x.id: await s.turns.usage(x.id) for x in sessions}
        running = await s.execution.busy([x.id for x in sessions])
        rows = [
            {
                "session": x,
                "depth": depth,
                "parent": parent,
                "busy": x.id in running or x.id in s.agent.active,
                "usage": usage[x.id],
            }
            for x, depth, parent in session_tree(sessions)
        ]
        self.render_page("sessions.html", rows=rows, when=when)


class SessionPage(PageHandler):
    async def get(self, session_id: str) -> None:
        s = self.services
        session = await s.sessions.get(self.user, session_id)
        events = await read_all(s.events, session.id)  # first: later events are replayed
        after = events[-1].id if events else ""
        cells = await s.db.cells.list(session.id)
        views = [await cell_view(s, self.renderer, c, events) for c in cells]
        state = live_state(events)
        if state["turn"] is not None:
            turn = await s.db.turns.get(state["turn"]["id"])
            if turn is None or turn.status not in ("running", "waiting"):
                state["turn"] = None
        data = {
            "session_id": session.id,
            "after": after,
            "llm": s.settings.llm_configured,
            "approval_mode": session.approval_mode,
            "turn": state["turn"],
            "running": [c.id for c in cells if c.status == "pending"],
            "upload_limit": s.settings.upload_limit,
            "usage": await s.turns.usage(session.id),
        }
        self.render_page(
            "session.html",
            session=session,
            cells=views,
            data=script_json(data),
            turn=state["turn"],
            usage=data["usage"],
            llm=s.settings.llm_configured,
        )


class CellFragment(PageHandler):
    """One cell's HTML (``templates/cell.html``), for the live page to put in place by id."""

    login_required = False  # a script asks: 401, not a redirect to the sign-in form

    async def get(self, session_id: str, cell_id: str) -> None:
        if self.current_user is None:
            raise web.HTTPError(401, "sign in first")
        s = self.services
        session = await s.sessions.get(self.user, session_id)
        cell = await s.db.cells.get(cell_id)
        if cell is None or cell.session_id != session.id:
            raise NotFound("no such cell")
        await self._wait_for_artifacts(cell)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        view = await cell_view(s, self.renderer, cell)
        html = self.env.get_template("cell.html").render(cell=view)
        self.finish(html)

    async def _wait_for_artifacts(self, cell: Cell) -> None:
        """A cell's artifacts are stored just after ``cell.completed`` is published; a fragment
        asked for at that moment waits (briefly) for them, so its "open" links are there."""
        if cell.cell_type != "code" or cell.status == "pending" or cell.started_at is None:
            return
        ended = cell.started_at + dt.timedelta(milliseconds=cell.duration_ms or 0)
        if dt.datetime.now(dt.UTC) - ended > dt.timedelta(seconds=5):
            return
        expected = len(extract_artifacts(cell.outputs))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ARTIFACT_WAIT
        while expected and loop.time() < deadline:
            if len(await self.services.db.artifacts.list_for_cell(cell.id)) >= expected:
                return
            await asyncio.sleep(0.05)


class NotFoundPage(PageHandler):
    login_required = False

    def get(self, *args: str) -> None:
        raise web.HTTPError(404, "There is no page here.")


class VendorFile(web.StaticFileHandler):
    """plotly.js from the installed ``plotly`` package: the same version the kernel's figures
    are made for, and no CDN."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")


# ------------------------------------------------------------------------------ helpers


async def cell_view(
    services: Any, renderer: Renderer, cell: Cell, events: Sequence[Logged] | None = None
) -> CellView:
    """A recorded cell, or a running one with its outputs so far (from the event log)."""
    if cell.cell_type != "code":
        return renderer.cell(cell)
    if cell.status == "pending":
        if events is None:
            events = await read_all(services.events, cell.session_id)
        return renderer.cell(cell, outputs=outputs_from_events(cell.id, events))
    artifacts = await services.db.artifacts.list_for_cell(cell.id)
    return renderer.cell(cell, artifacts=artifacts, sign=services.files.signed_url)


async def read_all(log: EventLog, session_id: str) -> list[Logged]:
    """Every retained event of the session (a Redis log answers in pages of 1000)."""
    events: list[Logged] = []
    while batch := await log.read(session_id, events[-1].id if events else None):
        events += batch
    return events


def live_state(events: Iterable[Logged]) -> dict[str, Any]:
    """What the event log says that the record does not (yet): the running turn, the text of
    the model's message being streamed, and the question or proposed cell it waits on."""
    turn: dict[str, Any] | None = None
    for logged in events:
        event = logged.event
        if isinstance(event, TurnStarted):
            turn = {"id": event.turn_id, "text": "", "waiting": None, "usage": None}
        elif turn is None or getattr(event, "turn_id", turn["id"]) != turn["id"]:
            continue
        elif isinstance(event, TurnCompleted | TurnFailed):
            turn = None
        elif isinstance(event, MessageDelta):
            turn["text"] += event.text
        elif isinstance(event, MessageCompleted):
            turn["text"] = ""
        elif isinstance(event, CellAdded | CellStarted):
            # the turn moved on (its text was recorded, its question answered, its cell ran);
            # a person's cell meanwhile changes nothing
            if event.metadata.get("turn_id") == turn["id"]:
                turn["text"], turn["waiting"] = "", None
        elif isinstance(event, AskUser):
            turn["waiting"] = {"kind": "answer", "question": event.question}
        elif isinstance(event, ApprovalRequired):
            turn["waiting"] = {"kind": "approval", "code": event.code}
        elif isinstance(event, UsageReported):
            turn["usage"] = event.data()
    return {"turn": turn}


def outputs_from_events(cell_id: str, events: Iterable[Logged]) -> list[dict[str, Any]]:
    """A running cell's outputs so far, replayed from its ``cell.output`` events."""
    outputs: list[dict[str, Any]] = []
    for logged in events:
        event = logged.event
        if not isinstance(event, CellOutput) or event.cell_id != cell_id:
            continue
        if event.cleared:
            outputs = []
        if event.output is None or event.index is None or event.index < 0:
            continue
        if event.index < len(outputs):
            outputs[event.index] = event.output
        elif event.index == len(outputs):
            outputs.append(event.output)
    return outputs


def session_tree(sessions: Sequence[Session]) -> list[tuple[Session, int, Session | None]]:
    """``(session, depth, parent)`` in display order: each branch right under its parent."""
    by_id = {s.id: s for s in sessions}
    children: dict[str | None, list[Session]] = {}
    for s in sessions:
        parent = s.parent_id if s.parent_id in by_id else None
        children.setdefault(parent, []).append(s)
    ordered: list[tuple[Session, int, Session | None]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            ordered.append((s, depth, by_id.get(s.parent_id or "")))
            walk(s.id, depth + 1)

    walk(None, 0)
    return ordered


def when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _local(target: str) -> str:
    """Only same-site paths are followed after sign-in (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def page_routes(services: Any) -> list[tuple[str, type, dict[str, Any]]]:
    """Routes of the web UI (after the API's, whose catch-all answers unknown ``/api/`` paths)."""
    static_dir = asset_dir("static")
    vendor_dir = Path(plotly.__file__).resolve().parent / "package_data"
    assets = Assets(static_dir, vendor_dir)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(asset_dir("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    frame_head = (
        f'<link rel="stylesheet" href="{assets.url("frame.css")}">'
        f'<script src="{assets.url("frame.js")}" defer></script>'
    )
    deps = {
        "services": services,
        "env": env,
        "assets": assets,
        "renderer": Renderer(frame_head),
    }
    return [
        (r"/", SessionsPage, deps),
        (r"/signin", SignInPage, deps),
        (r"/signout", SignOut, deps),
        (r"/sessions/([^/]+)", SessionPage, deps),
        (r"/sessions/([^/]+)/cells/([^/]+)", CellFragment, deps),
        (r"/static/vendor/(plotly\.min\.js)", VendorFile, {"path": str(vendor_dir)}),
        (r"/static/(.*)", web.StaticFileHandler, {"path": str(static_dir)}),
        (r"/(.*)", NotFoundPage, deps),
    ]


__all__ = ["CSP", "live_state", "outputs_from_events", "page_routes", "session_tree"]
