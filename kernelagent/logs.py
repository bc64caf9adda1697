"""How the server logs: text for people (the default), or one JSON object per line for log
collectors (``KERNELAGENT_LOG_FORMAT=json``).

Every record carries the ids of what it is about, when known: ``request_id`` (a client's
``X-Request-ID``, or one made per request and sent back), ``user_id``, ``session_id`` and
``turn_id``. They are context variables, set where a request or a turn begins, so any log line
written on its behalf (the services', the access log's) carries them without being passed along.
"""

from __future__ import annotations

import contextvars
import logging

from pythonjsonlogger.json import JsonFormatter

TEXT = "[%(levelname)s %(name)s] %(message)s"
FORMATS = ("text", "json")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
user_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("user_id", default=None)
session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
turn_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("turn_id", default=None)
IDS = {"request_id": request_id, "user_id": user_id, "session_id": session_id, "turn_id": turn_id}


class _Ids(logging.Filter):
    """Puts the ids of the current context on each record (None where unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in IDS.items():
            setattr(record, name, var.get())
        return True


def configure(format: str = "text", level: int = logging.INFO) -> None:
    """Log to stderr in ``format`` ("text" or "json")."""
    if format not in FORMATS:
        raise ValueError(f"unknown log format {format!r}: use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.addFilter(_Ids())
    if format == "json":
        fields = ["asctime", "levelname", "name", "message", *IDS]
        handler.setFormatter(
            JsonFormatter(
                fields,
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
