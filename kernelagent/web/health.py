"""``GET /api/v1/health``: liveness for load balancers, and what the sandbox pool is doing."""

from __future__ import annotations

from kernelagent import __version__
from kernelagent.services.kernels import KernelPool
from kernelagent.web.base import ApiHandler, operation
from kernelagent.web.serialize import Health


class HealthHandler(ApiHandler):
    """No auth: answers ``{"status": "ok", "version", "sandbox", "pool"}``."""

    auth_required = False

    def initialize(self, pool: KernelPool, sandbox: str) -> None:
        self.pool = pool
        self.sandbox = sandbox

    @operation("health", "Liveness, version, sandbox and warm pool", "meta", answer=Health)
    def get(self) -> None:
        pool = Health.Pool(
            size=self.pool.size, ready=self.pool.ready_count, error=self.pool.last_error
        )
        self.write_model(Health(version=__version__, sandbox=self.sandbox, pool=pool))
