"""ApiHandler: token auth, JSON bodies parsed into typed requests, the one place errors map to HTTP.

Every ``/api/v1`` handler derives from it: ``prepare()`` authenticates (``Authorization: token T``
or ``Bearer T``; or the web UI's signed cookie) unless the handler sets ``auth_required = False``;
kernelagent errors become ``{"error": {"code", "message"}}`` with their status.

A request authenticated by its ``Authorization`` header cannot be forged by another site, so only
cookie-authenticated requests must carry tornado's XSRF token (``X-XSRFToken`` header or
``_xsrf`` field), which the UI's pages provide.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pydantic
from tornado import web

from kernelagent import logs
from kernelagent.domain import User
from kernelagent.errors import (
    InvalidInput,
    KernelAgentError,
    Limited,
    TooLarge,
    Unprocessable,
)
from kernelagent.services.auth import AuthService
from kernelagent.services.rates import RequestRate
from kernelagent.web.forward import forward, forwarded

Body = TypeVar("Body", bound=pydantic.BaseModel)
Method = TypeVar("Method", bound=Callable[..., Any])
COOKIE = "kernelagent-token"  # the signed cookie holding a signed-in browser's token
COOKIE_DAYS = 30


class Request(pydantic.BaseModel):
    """Base of request bodies: strict types, no unknown fields."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid")


@dataclasses.dataclass(frozen=True)
class Param:
    """A query or header parameter an operation reads (path parameters come from the route)."""

    name: str
    where: str  # "query" or "header"
    description: str
    schema: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "string"})


@dataclasses.dataclass(frozen=True)
class Operation:
    """What the OpenAPI document says of one handler method (``web/openapi.py`` reads it).

    ``answer``: the body model (``bytes`` for raw bytes, ``None`` for no body); ``body``: the
    JSON request model, or ``bodies`` for other media types; ``errors``: statuses it may answer
    besides 401 (added when it needs auth) and 400/413/422 (added when it parses a body)."""

    id: str
    summary: str
    tag: str
    status: int = 200
    answer: Any = None
    answer_type: str = "application/json"
    body: type[pydantic.BaseModel] | None = None
    bodies: dict[str, type[pydantic.BaseModel]] = dataclasses.field(default_factory=dict)
    errors: tuple[int, ...] = ()
    description: str = ""
    params: tuple[Param, ...] = ()
    path_params: dict[str, str] = dataclasses.field(default_factory=dict)
    security: tuple[str, ...] = ()  # schemes besides the defaults (token, cookie)


def operation(id: str, summary: str, tag: str, **details: Any) -> Callable[[Method], Method]:
    """Describe a handler method for the OpenAPI document (see ``Operation``)."""

    def describe(method: Method) -> Method:
        method.operation = Operation(id, summary, tag, **details)  # type: ignore[attr-defined]
        return method

    return describe


class ApiHandler(web.RequestHandler):
    """Base of every ``/api/v1`` handler."""

    auth_required = True
    auth: AuthService
    body_limit: int = 10 * 1024 * 1024
    # methods that need the session's kernel (the first path argument): sent on to the process
    # that holds it, when another does (``web/forward.py``)
    held: frozenset[str] = frozenset()
    holder: Callable[[str], Awaitable[str | None]] | None = None
    rate: RequestRate | None = None  # requests per user per minute

    def initialize(self, **deps: Any) -> None:
        for name, value in deps.items():
            setattr(self, name, value)

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        given = self.request.headers.get("X-Request-ID", "")
        request_id = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        logs.request_id.set(request_id)
        self.set_header("X-Request-ID", request_id)
        if self.path_args and self.request.path.startswith(("/api/v1/sessions/", "/api/kernels/")):
            logs.session_id.set(self.path_args[0])
        if self.auth_required:
            self.current_user = await self._authenticate()
            if self.current_user is None:
                raise Unauthorized()
            logs.user_id.set(self.current_user.id)
            if self.rate is not None:
                await self.rate.check(self.current_user.id)
        if self.request.method in self.held and self.holder and not forwarded(self.request):
            base = await self.holder(self.path_args[0])
            if base:
                await forward(self, base)

    async def _authenticate(self) -> User | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() in {"token", "bearer"}:
            return await self.auth.authenticate(token.strip())
        cookie = self.get_signed_cookie(COOKIE, max_age_days=COOKIE_DAYS)
        if cookie:
            return await self.auth.authenticate(cookie.decode())
        return None

    def check_xsrf_cookie(self) -> None:
        if self.request.headers.get("Authorization") or COOKIE not in self.request.cookies:
            return  # no ambient credential a forged request could ride on
        super().check_xsrf_cookie()

    @property
    def user(self) -> User:
        assert isinstance(self.current_user, User)
        return self.current_user

    def json_body(self, model: type[Body]) -> Body:
        """The request body as ``model``: 400 if it is not JSON, 422 if it has the wrong shape."""
        if len(self.request.body) > self.body_limit:
            raise TooLarge(f"request body exceeds {self.body_limit} bytes")
        raw = self.request.body or b"{}"
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidInput(f"request body is not valid JSON: {e}") from None
        except RecursionError:  # the decoder stops at its depth limit, long before the end
            raise InvalidInput("request body is nested too deeply") from None
        try:
            return model.model_validate(payload)
        except pydantic.ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                for err in e.errors()
            )
            raise Unprocessable(problems) from None

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload, default=_json_default))

    def write_model(self, body: pydantic.BaseModel, status: int = 200) -> None:
        """An answer body (``web/serialize.py``), as the OpenAPI document describes it."""
        self.set_status(status)
        self.finish(body.model_dump_json())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.clear_header("Content-Disposition")
        if status_code == 405:  # which methods the route has (RFC 9110)
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if isinstance(exc, Unauthorized):
            self.set_status(401)
            code, message = "unauthorized", "a valid token is required (Authorization: token …)"
        elif isinstance(exc, KernelAgentError) and exc.status < 500:
            self.set_status(exc.status)
            code, message = exc.code, str(exc)
        elif isinstance(exc, KernelAgentError) and exc.code != "internal_error":
            self.set_status(exc.status)  # 503s: sandbox, kernel death — their text is for users
            code, message = exc.code, str(exc)
        elif isinstance(exc, web.HTTPError):
            code, message = _code_for(status_code), exc.log_message or self._reason
        else:
            code, message = "internal_error", self._reason
        error: dict[str, Any] = {"code": code, "message": message}
        if isinstance(exc, Limited):
            error["limit"] = {"setting": exc.setting, "value": exc.value}
            if exc.retry_after is not None:
                self.set_header("Retry-After", str(max(1, round(exc.retry_after))))
        self.finish(json.dumps({"error": error}))

    def allowed_methods(self) -> list[str]:
        base = web.RequestHandler
        return [
            m for m in self.SUPPORTED_METHODS
            if getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None)
        ]  # fmt: skip

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, Unauthorized):
            return
        if isinstance(value, KernelAgentError) and value.status < 500:
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(ApiHandler):
    """Any unknown ``/api/v1`` path: a JSON 404, before auth (nothing is revealed)."""

    auth_required = False

    def prepare(self) -> None:  # type: ignore[override]
        raise web.HTTPError(404, "no such endpoint")


class Unauthorized(Exception):
    pass


def _code_for(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 400: "invalid_input"}.get(
        status, "http_error"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialise {type(value).__name__}")
