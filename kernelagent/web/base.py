"""ApiHandler: JSON in and out, and the one place kernelagent errors become HTTP answers."""

from __future__ import annotations

import json
from typing import Any

from tornado import web

from kernelagent.errors import KernelAgentError


class ApiHandler(web.RequestHandler):
    """Base of every ``/api/v1`` handler: errors are ``{"error": {"code", "message"}}``."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, KernelAgentError):
            self.set_status(exc.status)
            code, message = exc.code, str(exc)
        elif isinstance(exc, web.HTTPError):
            code, message = "http_error", exc.log_message or self._reason
        else:
            code, message = "internal_error", self._reason
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, KernelAgentError) and value.status < 500:
            return
        super().log_exception(typ, value, tb)
