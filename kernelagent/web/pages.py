"""The web notebook-style chat: server-rendered pages (jinja2 templates) and static assets."""

from __future__ import annotations

from typing import Any


def page_routes(services: Any) -> list[tuple[str, type, dict[str, Any]]]:
    """Routes of the web UI (before the API's catch-all 404)."""
    return []
