"""Kernel Gateway ("jupyter-websocket") REST surface: ``/api``, ``/api/kernels``, kernelspecs.

Shapes and status codes follow Kernel Gateway's ``swagger.yaml`` and jupyter_server, because
``jupyter lab --gateway-url`` (jupyter_server's GatewayClient) is the client: errors are
``{"message", "reason"}``, ``POST /api/kernels`` answers 201 with a ``Location`` header, kernel ids
are UUIDs, ``last_activity`` is ``%Y-%m-%dT%H:%M:%S.%fZ``. Tokens come as ``Authorization: token …``
or, as Jupyter clients send them on WebSockets, ``?token=``.
"""

from __future__ import annotations

import json
import mimetypes
from typing import Any

import pydantic
from tornado import web

from kernelagent import __version__
from kernelagent.domain import User
from kernelagent.errors import KernelAgentError, NotFound
from kernelagent.services.bridge import GatewayService
from kernelagent.web.base import ApiHandler, Request, Unauthorized


class GatewayHandler(ApiHandler):
    """Auth by header or ``?token=``; Jupyter-shaped errors."""

    gateway: GatewayService

    async def _authenticate(self) -> User | None:
        user = await super()._authenticate()
        if user is None and (token := self.get_query_argument("token", "")):
            user = await self.auth.authenticate(token)
        return user

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if isinstance(exc, KernelAgentError):
            self.set_status(exc.status)
            message = str(exc)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        elif status_code == 401 or isinstance(exc, Unauthorized):
            self.set_status(401)
            message = "a valid token is required"
        else:
            message = self._reason
        self.finish(json.dumps({"message": message, "reason": self._reason}))


class ApiVersionHandler(GatewayHandler):
    auth_required = False

    def get(self) -> None:
        self.write_json({"version": "2.0.0", "kernelagent": __version__})


class StartKernel(Request):
    model_config = pydantic.ConfigDict(strict=True, extra="allow")
    name: str | None = None


class KernelsHandler(GatewayHandler):
    async def get(self) -> None:
        self.write_json([k.json() for k in await self.gateway.list(self.user)])

    async def post(self) -> None:
        body = self.json_body(StartKernel)
        model = await self.gateway.create(self.user, body.name)
        self.set_header("Location", f"/api/kernels/{model.id}")
        self.write_json(model.json(), status=201)


class KernelHandler(GatewayHandler):
    held = frozenset({"DELETE"})

    async def get(self, kernel_id: str) -> None:
        self.write_json((await self.gateway.get(self.user, kernel_id)).json())

    async def delete(self, kernel_id: str) -> None:
        await self.gateway.shutdown(self.user, kernel_id)
        self.set_status(204)
        self.finish()


class KernelActionHandler(GatewayHandler):
    held = frozenset({"POST"})

    async def post(self, kernel_id: str, action: str) -> None:
        if action == "interrupt":
            await self.gateway.interrupt(self.user, kernel_id)
            self.set_status(204)
            self.finish()
        else:
            self.write_json((await self.gateway.restart(self.user, kernel_id)).json())


class KernelSpecsHandler(GatewayHandler):
    async def get(self) -> None:
        specs = await self.gateway.kernelspecs(self.user)
        self.write_json(
            {"default": self.gateway.kernel_name, "kernelspecs": {s.name: s.json() for s in specs}}
        )


class KernelSpecHandler(GatewayHandler):
    async def get(self, name: str) -> None:
        for spec in await self.gateway.kernelspecs(self.user):
            if spec.name == name:
                self.write_json(spec.json())
                return
        raise NotFound(f"no kernelspec named {name!r}")


class KernelSpecResourceHandler(GatewayHandler):
    """``/kernelspecs/{name}/{file}`` (no ``/api``: where GatewayClient looks for logos)."""

    async def get(self, name: str, resource: str) -> None:
        data = await self.gateway.kernelspec_resource(name, resource)
        kind = mimetypes.guess_type(resource)[0] or "application/octet-stream"
        self.set_header("Content-Type", kind)
        self.finish(data)
