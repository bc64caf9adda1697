"""``GET /metrics``: this process's metrics for Prometheus (``kernelagent.metrics``), behind
``KERNELAGENT_METRICS_TOKEN`` when one is set (a scraper needs no user), else a user's token."""

from __future__ import annotations

import hmac

from kernelagent.metrics import CONTENT_TYPE, Metrics
from kernelagent.web.base import ApiHandler, Unauthorized, operation


class MetricsHandler(ApiHandler):
    metrics: Metrics
    metrics_token: str = ""

    async def prepare(self) -> None:
        if not self.metrics_token:
            await super().prepare()
            return
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() in {"bearer", "token"} else b""
        if not hmac.compare_digest(given, self.metrics_token.encode()):
            raise Unauthorized()

    @operation(
        "metrics",
        "This process's metrics, in Prometheus's text format",
        "meta",
        answer=bytes,
        answer_type="text/plain",
    )
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.write(self.metrics.render())
