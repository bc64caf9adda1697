"""Composition root: adapters → services → tornado Application, started and stopped in order.

Example::

    app = KernelAgentApp(Settings.from_env(os.environ))
    await app.start()            # kernel pool filling in the background, HTTP listening
    ...
    await app.stop()             # HTTP closed, pooled kernels shut down
"""

from __future__ import annotations

import getpass
import logging

from tornado import httpserver, web

from kernelagent.adapters.kernels import LocalKernels
from kernelagent.config import Settings
from kernelagent.services.kernels import KernelPool
from kernelagent.web.routes import routes

log = logging.getLogger(__name__)


class KernelAgentApp:
    """Owns every long-lived object of one server process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        if settings.unsafe_no_sandbox:
            log.warning(
                "!!! --unsafe-no-sandbox: kernels run as %s with full access to this machine, "
                "its network and its secrets. Never expose this server. !!!",
                getpass.getuser(),
            )
        self.kernels = LocalKernels(settings)
        self.pool = KernelPool(
            self.kernels,
            settings.workspaces_dir / ".pool",
            size=settings.pool_size,
            preimport=[m.strip() for m in settings.pool_preimport.split(",") if m.strip()],
        )
        sandbox = "none (unsafe)" if settings.unsafe_no_sandbox else "bubblewrap"
        self.web = web.Application(routes(self.pool, sandbox))
        self.http: httpserver.HTTPServer | None = None

    async def start(self, listen: bool = True) -> None:
        self.settings.workspaces_dir.mkdir(parents=True, exist_ok=True)
        await self.pool.start()
        if listen:
            self.http = self.web.listen(self.settings.port, self.settings.host)

    async def stop(self) -> None:
        if self.http:
            self.http.stop()
            await self.http.close_all_connections()
        await self.pool.stop()
        await self.kernels.shutdown_all()
