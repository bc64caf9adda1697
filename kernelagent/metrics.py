"""Metrics of one server process, in Prometheus's text format (``GET /metrics``).

Each process has a registry of its own and is scraped on its own, as Prometheus expects of
replicas. What the services do is read from the session events they publish (cells, turns,
usage: ``observe_event``), HTTP from tornado's request log (``observe_request``), kernels from
the pool and the backend when scraped; nothing here is on a cell's path but a counter's add.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kernelagent.events import (
    CellCompleted,
    SessionEvent,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    UsageReported,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STEPS = (1, 2, 3, 5, 8, 13, 21, 34)


class _Kernels(Collector):
    """Kernels by state, counted when scraped: ``in_use`` (a session's), ``pooled``,
    ``starting``."""

    def __init__(self, counts: Callable[[], dict[str, int]]):
        self.counts = counts

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "kernelagent_kernels", "Kernels of this process, by state", labels=["state"]
        )
        for state, count in self.counts().items():
            family.add_metric([state], count)
        yield family


class Metrics:
    def __init__(self, kernel_counts: Callable[[], dict[str, int]] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kernelagent_http_requests", "HTTP requests by handler, method and status",
            ["handler", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "kernelagent_http_request_seconds", "HTTP request latency by handler",
            ["handler"], buckets=SECONDS, registry=r,
        )  # fmt: skip
        self.cells = Counter("kernelagent_cells", "Cells run, by status", ["status"], registry=r)
        self.cell_seconds = Histogram(
            "kernelagent_cell_seconds", "Cell run time (send to reply, recorded)",
            buckets=SECONDS, registry=r,
        )  # fmt: skip
        self.turns = Counter(
            "kernelagent_turns", "Agent turns ended, by outcome", ["outcome"], registry=r
        )
        self.turn_steps = Histogram(
            "kernelagent_turn_steps", "LLM calls per ended turn", buckets=STEPS, registry=r
        )
        self.tokens = Counter(
            "kernelagent_llm_tokens", "LLM tokens by model and kind (prompt, completion)",
            ["model", "kind"], registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "kernelagent_llm_cost_dollars", "LLM cost by model (KERNELAGENT_PRICES)", ["model"],
            registry=r,
        )  # fmt: skip
        self.lock_wait = Histogram(
            "kernelagent_lock_wait_seconds", "Time a cell waited for its session's lock",
            buckets=SECONDS, registry=r,
        )  # fmt: skip
        self.sse_clients = Gauge(
            "kernelagent_sse_clients", "Clients streaming session events", registry=r
        )
        self.pool_target = Gauge(
            "kernelagent_pool_target", "Warm kernels the pool aims for now (grows with arrivals)",
            registry=r,
        )  # fmt: skip
        if kernel_counts is not None:
            r.register(_Kernels(kernel_counts))
        self._turns: dict[str, _TurnSoFar] = {}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_request(self, handler: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(handler, method, str(status)).inc()
        self.request_seconds.labels(handler).observe(seconds)

    def observe_event(self, event: SessionEvent) -> None:
        """Count what a published session event says (usage is cumulative per turn)."""
        if isinstance(event, CellCompleted):
            self.cells.labels(event.status).inc()
            if event.duration_ms is not None:
                self.cell_seconds.observe(event.duration_ms / 1000)
        elif isinstance(event, TurnStarted):
            self._turns[event.turn_id] = _TurnSoFar(event.model)
        elif isinstance(event, UsageReported):
            turn = self._turns.setdefault(event.turn_id, _TurnSoFar("unknown"))
            turn.steps += 1
            self.tokens.labels(turn.model, "prompt").inc(event.prompt_tokens - turn.prompt)
            self.tokens.labels(turn.model, "completion").inc(
                event.completion_tokens - turn.completion
            )
            if event.cost is not None:
                self.cost.labels(turn.model).inc(max(event.cost - turn.cost, 0.0))
                turn.cost = event.cost
            turn.prompt, turn.completion = event.prompt_tokens, event.completion_tokens
        elif isinstance(event, TurnCompleted | TurnFailed):
            outcome = "completed" if isinstance(event, TurnCompleted) else event.status
            self.turns.labels(outcome).inc()
            turn = self._turns.pop(event.turn_id, None)
            if turn is not None:
                self.turn_steps.observe(turn.steps)


class _TurnSoFar:
    """A running turn's model and the usage already counted (usage events are cumulative)."""

    def __init__(self, model: str):
        self.model = model
        self.steps = 0
        self.prompt = 0
        self.completion = 0
        self.cost = 0.0
