"""``GET /api/v1/health``: liveness for load balancers, and what the sandbox pool is doing;
``GET /api/v1/ready``: readiness (the shared backends answer, the process is not draining)."""

from __future__ import annotations

from kernelagent import __version__
from kernelagent.services.kernels import KernelPool
from kernelagent.services.readiness import Readiness
from kernelagent.web.base import ApiHandler, operation
from kernelagent.web.serialize import Health, Ready


class HealthHandler(ApiHandler):
    """No auth: answers ``{"status": "ok", "version", "sandbox", "pool"}``."""

    auth_required = False

    def initialize(self, pool: KernelPool, sandbox: str) -> None:
        self.pool = pool
        self.sandbox = sandbox

    @operation("health", "Liveness, version, sandbox and warm pool", "meta", answer=Health)
    def get(self) -> None:
        pool = Health.Pool(
            size=self.pool.size,
            target=self.pool.target,
            ready=self.pool.ready_count,
            error=self.pool.last_error,
        )
        self.write_model(Health(version=__version__, sandbox=self.sandbox, pool=pool))


class ReadyHandler(ApiHandler):
    """No auth: 200 when the database, the runtime state and the storage answer; 503 (naming
    what failed) when one does not, or while the process drains for a shutdown."""

    auth_required = False

    def initialize(self, readiness: Readiness) -> None:
        self.readiness = readiness

    @operation(
        "ready",
        "Readiness: the database, runtime state and storage answer; not draining",
        "meta",
        answer=Ready,
        errors=(503,),
    )
    async def get(self) -> None:
        checks = await self.readiness.check()
        if self.readiness.draining:
            self.write_model(Ready(status="draining", checks=checks), status=503)
        elif all(answer == "ok" for answer in checks.values()):
            self.write_model(Ready(status="ready", checks=checks))
        else:
            self.write_model(Ready(status="not_ready", checks=checks), status=503)
