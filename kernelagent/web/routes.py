"""Every route of the server, assembled in one list (each handler gets its services explicitly)."""

from __future__ import annotations

from typing import Any

from kernelagent.web.base import NotFoundHandler
from kernelagent.web.events import EventsHandler
from kernelagent.web.files import ArtifactHandler, FileHandler, FilesHandler
from kernelagent.web.gateway.channels import ChannelsHandler
from kernelagent.web.gateway.handlers import (
    ApiVersionHandler,
    KernelActionHandler,
    KernelHandler,
    KernelsHandler,
    KernelSpecHandler,
    KernelSpecResourceHandler,
    KernelSpecsHandler,
)
from kernelagent.web.health import HealthHandler, ReadyHandler
from kernelagent.web.mcp import McpHandler
from kernelagent.web.metrics import MetricsHandler
from kernelagent.web.notebooks import NotebookHandler
from kernelagent.web.openapi import OpenApiHandler
from kernelagent.web.pages import page_routes
from kernelagent.web.sessions import (
    CellsHandler,
    InterruptHandler,
    SessionHandler,
    SessionsHandler,
)
from kernelagent.web.turns import AnswerHandler, ApprovalHandler, MessagesHandler, TurnHandler
from kernelagent.web.worldlines import BranchHandler, ImportHandler, ReplayHandler

SESSION = r"/api/v1/sessions/([^/]+)"
KERNEL = r"/api/kernels/([^/]+)"


def routes(services: Any, sandbox: str) -> list[tuple[str, type, dict[str, Any]]]:
    """``services``: the app's ``Services`` (see ``app.py``); each handler takes what it uses."""
    s = services
    common = {
        "auth": s.auth,
        "body_limit": s.settings.body_limit,
        "holder": s.supervisor.holder,
        "rate": s.rate,
    }
    with_sessions = {**common, "sessions": s.sessions, "execution": s.execution, "turns": s.turns}
    turns = {**common, "turns": s.turns}
    gateway = {**common, "gateway": s.gateway}
    api: list[tuple[str, type]] = []
    table = [
        (r"/api/v1/health", HealthHandler, {"pool": s.pool, "sandbox": sandbox}),
        (r"/api/v1/ready", ReadyHandler, {"readiness": s.readiness}),
        (r"/api/v1/openapi\.json", OpenApiHandler, {"routes": api}),
        (r"/api/v1/sessions", SessionsHandler, with_sessions),
        (SESSION, SessionHandler, with_sessions),
        (
            SESSION + r"/cells",
            CellsHandler,
            {**with_sessions, "files": s.files, "notebooks": s.notebooks},
        ),
        (SESSION + r"/interrupt", InterruptHandler, turns),
        (SESSION + r"/messages", MessagesHandler, turns),
        (SESSION + r"/turns/([^/]+)", TurnHandler, turns),
        (SESSION + r"/turns/([^/]+)/answer", AnswerHandler, turns),
        (SESSION + r"/turns/([^/]+)/approval", ApprovalHandler, turns),
        (SESSION + r"/replay", ReplayHandler, {**common, "worldlines": s.worldlines}),
        (SESSION + r"/branch", BranchHandler, {**common, "worldlines": s.worldlines}),
        (
            r"/api/v1/notebooks",
            ImportHandler,
            {
                **common,
                "worldlines": s.worldlines,
                "upload_limit": s.settings.upload_limit,
                "body_limit": s.settings.upload_limit,
            },
        ),
        (
            SESSION + r"/events",
            EventsHandler,
            {**common, "sessions": s.sessions, "events": s.events, "metrics": s.metrics},
        ),
        (
            SESSION + r"/files",
            FilesHandler,
            {**common, "sessions": s.sessions, "files": s.files},
        ),
        (
            SESSION + r"/files/(.+)",
            FileHandler,
            {**common, "sessions": s.sessions, "files": s.files},
        ),
        (
            SESSION + r"/notebook",
            NotebookHandler,
            {**common, "sessions": s.sessions, "notebooks": s.notebooks},
        ),
        (r"/api/v1/artifacts/([^/]+)", ArtifactHandler, {**common, "files": s.files, "db": s.db}),
        # Kernel Gateway ("jupyter-websocket") surface
        (r"/api", ApiVersionHandler, common),
        (r"/api/kernels", KernelsHandler, gateway),
        (KERNEL, KernelHandler, gateway),
        (KERNEL + r"/(interrupt|restart)", KernelActionHandler, gateway),
        (
            KERNEL + r"/channels",
            ChannelsHandler,
            {"auth": s.auth, "gateway": s.gateway, "holder": s.supervisor.holder},
        ),
        (r"/api/kernelspecs", KernelSpecsHandler, gateway),
        (r"/api/kernelspecs/([^/]+)", KernelSpecHandler, gateway),
        (r"/kernelspecs/([^/]+)/([^/]+)", KernelSpecResourceHandler, gateway),
        (
            r"/metrics",
            MetricsHandler,
            {"auth": s.auth, "metrics": s.metrics, "metrics_token": s.settings.metrics_token},
        ),
        (r"/mcp/?", McpHandler, {"app": s.mcp, "auth": s.auth}),
        (r"/api/.*", NotFoundHandler, {}),
    ]
    api += [(pattern, handler) for pattern, handler, _ in table]  # what the document describes
    return [*table, *page_routes(s)]
