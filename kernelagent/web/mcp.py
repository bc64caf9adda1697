"""The MCP server at ``/mcp``: any agent drives kernelagent sessions as tools.

Built on the official SDK's ``MCPServer`` (Streamable HTTP, stateless, JSON answers: any
replica answers any request). ``McpHandler`` authenticates the bearer token as every API route
does and hands the request to the SDK; tools act as that user, through the same services as the
REST API (cells run on the one execution path, recorded with role ``mcp``), so what an MCP
client does appears live in the web chat and in JupyterLab, and the other way round.

What a model reads is budgeted as the built-in agent's tool results are: a cell's outputs as
text with artifact ids, one artifact closer (an image as image content, downscaled), files
trimmed. A cell that outlasts ``wait_seconds`` is answered with its cell id, to poll with
``get_cell``, instead of failing. Errors a model can act on come back as tool errors.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from kernelagent import __version__
from kernelagent.domain import Artifact, Cell, Session, User
from kernelagent.errors import KernelAgentError, NotFound
from kernelagent.services.output_views import trim, view_artifact
from kernelagent.services.tool_results import downscale
from kernelagent.web.asgi import AsgiHandler

WAIT = 20.0  # seconds a tool waits for a cell by default before answering with its id
MAX_WAIT = 120.0
IMAGE_SIZE = 1024  # pixels: an image's longer side, as sent to a model
IMAGE_BYTES = 512 * 1024  # an image's PNG, as sent to a model
POLL = 0.2

INSTRUCTIONS = """\
kernelagent runs Python in sandboxed, persistent Jupyter kernels, one per session; each
session's record is a notebook. Create or pick a session, then run_python in it: variables,
imports and files persist between calls. Outputs come back summarised, with artifact ids for
plots, tables and HTML; read_artifact shows one closer (an image as an image). The sandbox has
no network: put data in the workspace with write_file (or upload_from_url when allowed).
"""

_user: contextvars.ContextVar[User] = contextvars.ContextVar("kernelagent_mcp_user")


def _answering(tool: Callable[..., Awaitable[Any]], budget: int) -> Callable[..., Awaitable[Any]]:
    """The tool with its text trimmed to ``budget`` characters, and the services' errors as
    tool errors whose text a model can act on."""

    @functools.wraps(tool)
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            answer = await tool(*args, **kwargs)
        except KernelAgentError as e:
            raise ToolError(str(e)) from e
        return trim(answer, budget) if isinstance(answer, str) else answer

    return run


class KernelagentMcp(MCPServer[Any]):
    """Lists each of the user's notebooks as a resource (the templates serve every read)."""

    services: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The SDK sets up the root logger when it is built, if nothing did before (a rich
        console handler, at INFO). Logging is the application's (``logs.configure``): an app
        embedded in another program leaves that program's logging as it was, and its requests
        are not each drawn on a console."""
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            super().__init__(*args, **kwargs)
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)

    async def list_resources(self) -> list[mcp_types.Resource]:
        listed = await super().list_resources()
        user = _user.get(None)
        if user is None:
            return listed
        for session in await self.services.sessions.list(user):
            listed.append(
                mcp_types.Resource(
                    uri=f"kernelagent://sessions/{session.id}/notebook",
                    name=f"{session.title or 'Untitled'} (notebook)",
                    mime_type="application/x-ipynb+json",
                )
            )
        return listed


def build_mcp(services: Any) -> KernelagentMcp:
    """The MCP server over the app's services (``app.Services``)."""
    s = services
    server = KernelagentMcp(name="kernelagent", version=__version__, instructions=INSTRUCTIONS)
    server.services = s
    running: set[asyncio.Task[Any]] = set()  # cells whose callers stopped waiting

    def user() -> User:
        return _user.get()

    async def session_of(session_id: str) -> Session:
        return await s.sessions.get(user(), session_id)

    async def owned_artifact(artifact_id: str) -> Artifact:
        """The artifact, if a session of the user's made it; NotFound otherwise."""
        artifact = await s.db.artifacts.get(artifact_id)
        session = artifact and await s.db.sessions.get(artifact.session_id)
        if artifact is None or session is None or session.user_id != user().id:
            raise NotFound(f"no artifact {artifact_id!r}")
        return artifact

    async def describe(cell: Cell) -> str:
        artifacts: list[Artifact] = await s.db.artifacts.list_for_cell(cell.id)
        where = f"cell {cell.index} (id {cell.id}), {cell.status}"
        return f"[{where}]\n{s.agent.describe_cell(cell, artifacts)}"

    budget = s.settings.tool_result_chars  # what any tool answers, in characters

    def tool(description: str, **kwargs: Any) -> Callable[[Any], Any]:
        def register(fn: Callable[..., Awaitable[Any]]) -> Any:
            answering = _answering(fn, budget)
            server.add_tool(answering, description=description, structured_output=False, **kwargs)
            return fn

        return register

    @tool("List your kernelagent sessions (newest first): id, title, status, last change.")
    async def list_sessions() -> str:
        sessions = await s.sessions.list(user())
        if not sessions:
            return "No sessions yet: create_session makes one."
        return "\n".join(
            f"{x.id}  {x.title or 'Untitled'}  [{x.status}]  {x.updated_at:%Y-%m-%d %H:%M}"
            for x in sessions
        )

    @tool("Create a session: a new persistent Python kernel and notebook. Returns its id.")
    async def create_session(title: str = "") -> str:
        session = await s.sessions.create(user(), title)
        return f"Created session {session.id} ({session.title or 'Untitled'})."

    @tool(
        "Open a session: its title, the files in its workspace and its last cells (code and "
        "summarised outputs), to pick up where it was left."
    )
    async def open_session(session_id: str, last_cells: int = 5) -> str:
        session = await session_of(session_id)
        cells = await s.db.cells.list(session.id)
        files = await s.files.list(session)
        lines = [
            f"Session {session.id}: {session.title or 'Untitled'} [{session.status}], "
            f"{len(cells)} cells.",
            "Files: " + (", ".join(f"{f.path} ({f.size} B)" for f in files) or "none"),
        ]
        for cell in cells[-max(last_cells, 0) :] if last_cells > 0 else []:
            if cell.cell_type == "code":
                lines.append(f"\n```python\n{cell.source}\n```\n{await describe(cell)}")
            else:
                lines.append(f"\n[{cell.role}] {cell.source[:2000]}")
        return "\n".join(lines)

    @tool(
        "Run Python code in the session's kernel (state persists between calls) and get its "
        "outputs, summarised, with artifact ids for images, tables and HTML. A cell still "
        "running after wait_seconds is answered with its cell id: call get_cell to wait on."
    )
    async def run_python(
        session_id: str, code: str, wait_seconds: float = WAIT, timeout_seconds: float = 0
    ) -> str:
        owner = user()
        started: asyncio.Future[Cell] = asyncio.get_running_loop().create_future()

        def on_started(cell: Cell) -> None:
            if not started.done():
                started.set_result(cell)

        task = asyncio.create_task(
            s.execution.execute(
                session_id, code, "mcp", timeout=timeout_seconds or None, owner=owner,
                on_started=on_started,
            )
        )  # fmt: skip
        done, _ = await asyncio.wait({task}, timeout=min(max(wait_seconds, 0), MAX_WAIT))
        if task in done:
            result = task.result()
            s.notebooks.schedule_save(result.session)
            return await describe(result.cell)
        running.add(task)
        task.add_done_callback(running.discard)
        if started.done():
            cell = started.result()
            return (
                f"Still running after {wait_seconds:g} s: cell {cell.index} (id {cell.id}). "
                "Call get_cell with this id to wait for its outputs, or interrupt to stop it."
            )
        return (
            f"Queued after {wait_seconds:g} s behind another cell of this session. Call "
            "get_cell (without a cell id: the newest cell) to follow it."
        )

    @tool(
        "A cell's outputs, summarised; waits up to wait_seconds while it runs. Without a "
        "cell_id: the session's newest cell."
    )
    async def get_cell(session_id: str, cell_id: str = "", wait_seconds: float = WAIT) -> str:
        session = await session_of(session_id)
        deadline = asyncio.get_running_loop().time() + min(max(wait_seconds, 0), MAX_WAIT)
        while True:
            cell = await _cell(session, cell_id)
            if cell.status != "pending" or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(POLL)
        if cell.status == "pending":
            return f"Still running: cell {cell.index} (id {cell.id}). Call get_cell again."
        return await describe(cell)

    async def _cell(session: Session, cell_id: str) -> Cell:
        if cell_id:
            cell = await s.db.cells.get(cell_id)
            if cell is None or cell.session_id != session.id:
                raise NotFound(f"no cell {cell_id!r} in this session")
            return cell
        cells = await s.db.cells.list(session.id)
        code = [c for c in cells if c.cell_type == "code"]
        if not code:
            raise NotFound("this session has no code cell yet")
        return code[-1]

    @tool(
        "Look closer at one artifact (an id from run_python's outputs): an image as an image "
        "(downscaled), a table, plot data, JSON or HTML text. view: 'data' for a plot's "
        "arrays, 'html' for markup, 'svg' for an SVG's source."
    )
    async def read_artifact(artifact_id: str, view: str = "") -> Any:
        artifact = await owned_artifact(artifact_id)
        data = await s.files.artifact_bytes(artifact)
        if artifact.mime_type in ("image/png", "image/jpeg", "image/gif", "image/webp") and (
            view in ("", "image")
        ):
            raw, mime = await asyncio.to_thread(_within, data, artifact.mime_type)
            return Image(data=raw, format=mime.removeprefix("image/"))
        try:
            return view_artifact(artifact.mime_type, data, view or None, budget=budget)
        except ValueError as e:
            raise ToolError(str(e)) from e

    @tool("The files in the session's workspace, with sizes.")
    async def list_files(session_id: str) -> str:
        files = await s.files.list(await session_of(session_id))
        return "\n".join(f"{f.path}  {f.size} B" for f in files) or "The workspace is empty."

    @tool("A workspace file's text (long ones trimmed); binary files are described.")
    async def read_file(session_id: str, path: str) -> str:
        data, rel = await s.files.read(await session_of(session_id), path)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return f"{rel} is binary ({len(data)} bytes): read it with run_python."

    @tool(
        "Write a text file into the session's workspace (recorded in the notebook, as an "
        "upload is): the kernel sees it at once."
    )
    async def write_file(session_id: str, path: str, content: str) -> str:
        entry = await s.files.upload(await session_of(session_id), path, content.encode())
        return f"Wrote {entry.path} ({entry.size} bytes)."

    @tool(
        "Fetch a URL with the server's network into the session's workspace (the sandbox has "
        "none). Only where the operator allows it."
    )
    async def upload_from_url(session_id: str, url: str, path: str = "") -> str:
        session = await session_of(session_id)
        if not s.settings.mcp_url_uploads:
            raise ToolError(
                "fetching URLs is turned off on this server (KERNELAGENT_MCP_URL_UPLOADS); "
                "send the content with write_file instead"
            )
        if not url.startswith(("http://", "https://")):
            raise ToolError("only http:// and https:// URLs can be fetched")
        try:
            response = await AsyncHTTPClient().fetch(
                url, max_body_size=s.settings.upload_limit, request_timeout=120
            )
        except (HTTPClientError, OSError) as e:
            raise ToolError(f"fetching {url} failed: {e}") from e
        name = path or url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
        entry = await s.files.upload(session, name, response.body)
        return f"Fetched {url} into {entry.path} ({entry.size} bytes)."

    @tool("Interrupt the session's running cell (and its agent turn, if one runs).")
    async def interrupt(session_id: str) -> str:
        await s.turns.interrupt(user(), session_id)
        return "Interrupted."

    @tool(
        "Branch the session at a cell: a new session with the record up to and including "
        "that cell, its kernel state and files as they were there. Returns the new id."
    )
    async def branch(session_id: str, cell_id: str) -> str:
        child = await s.worldlines.branch(user(), session_id, cell_id)
        return f"Branched into session {child.id} ({child.title})."

    @tool(
        "The session's notebook (.ipynb JSON, trimmed); the whole one is the resource "
        "kernelagent://sessions/{session_id}/notebook."
    )
    async def export_notebook(session_id: str) -> str:
        data = (await s.notebooks.export(await session_of(session_id))).decode()
        if len(data) <= budget:
            return data
        whole = f"\n[trimmed: the whole notebook is kernelagent://sessions/{session_id}/notebook]"
        return trim(data, budget - len(whole)) + whole

    @tool(
        "Replay the session: re-run every cell in a fresh kernel and report which outputs "
        "differ from the record."
    )
    async def replay(session_id: str) -> str:
        result = await s.worldlines.replay(user(), session_id)
        return json.dumps(result.summary())

    @server.resource(
        "kernelagent://sessions/{session_id}/notebook",
        name="notebook",
        description="A session's record as a Jupyter notebook",
        mime_type="application/x-ipynb+json",
    )
    async def notebook(session_id: str) -> str:
        return (await s.notebooks.export(await _resource_session(session_id))).decode()

    @server.resource(
        "kernelagent://sessions/{session_id}/files/{path}",
        name="file",
        description="A file of a session's workspace (top level)",
        mime_type="application/octet-stream",
    )
    async def workspace_file(session_id: str, path: str) -> bytes:
        data, _ = await s.files.read(await _resource_session(session_id), path)
        return bytes(data)

    @server.resource(
        "kernelagent://artifacts/{artifact_id}",
        name="artifact",
        description="A cell output kept as an artifact (an image, a table, HTML)",
        mime_type="application/octet-stream",
    )
    async def artifact(artifact_id: str) -> bytes:
        try:
            found = await owned_artifact(artifact_id)
        except KernelAgentError as e:
            raise ValueError(str(e)) from e
        return bytes(await s.files.artifact_bytes(found))

    async def _resource_session(session_id: str) -> Session:
        try:
            return await session_of(session_id)
        except KernelAgentError as e:
            raise ValueError(str(e)) from e

    server.running = running  # type: ignore[attr-defined]
    return server


def _within(data: bytes, mime: str) -> tuple[bytes, str]:
    """The image downscaled until it fits ``IMAGE_BYTES`` (from ``IMAGE_SIZE`` pixels)."""
    size = IMAGE_SIZE
    raw, kind = downscale(data, mime, size)
    while len(raw) > IMAGE_BYTES and size > 128:
        size //= 2
        raw, kind = downscale(data, mime, size)
    return raw, kind


def serve(server: KernelagentMcp) -> Any:
    """The SDK's ASGI callable for ``server`` (call once; run its ``session_manager``)."""
    server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        # bearer tokens only, no cookie: a rebinding page has no credential to use
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return server.session_manager.handle_request


class McpHandler(AsgiHandler):
    """``/mcp``: the user's token (``Authorization: Bearer``), then the SDK."""

    auth: Any

    def initialize(self, app: Any, auth: Any) -> None:  # type: ignore[override]
        super().initialize(app)
        self.auth = auth

    async def prepare(self) -> None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        found = None
        if scheme.lower() in ("bearer", "token") and token.strip():
            found = await self.auth.authenticate(token.strip())
        if found is None:
            self.set_status(401)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.set_header("WWW-Authenticate", 'Bearer realm="kernelagent"')
            message = "a valid token is required (Authorization: Bearer …)"
            self.finish(json.dumps({"error": {"code": "unauthorized", "message": message}}))
            return
        _user.set(found)
