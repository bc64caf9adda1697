"""Every route of the server, assembled in one list (each handler gets its services explicitly)."""

from __future__ import annotations

from typing import Any

from kernelagent.services.kernels import KernelPool
from kernelagent.web.health import HealthHandler


def routes(pool: KernelPool, sandbox: str) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (r"/api/v1/health", HealthHandler, {"pool": pool, "sandbox": sandbox}),
    ]
