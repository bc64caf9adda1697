"""``GET /api/v1/sessions/{id}/events``: the session's events as server-sent events.

Resumable: a client reconnecting with ``Last-Event-ID`` (browsers' ``EventSource`` send it by
themselves) gets every event after that id and none twice. A comment line every ``KEEPALIVE``
seconds keeps proxies from closing an idle stream and lets the server notice a client that left.
"""

from __future__ import annotations

from tornado.iostream import StreamClosedError

from kernelagent.events import SessionEvent
from kernelagent.metrics import Metrics
from kernelagent.services.ports import EventLog
from kernelagent.services.sessions import SessionService
from kernelagent.web.base import ApiHandler, Param, operation

KEEPALIVE = 15.0


class EventsHandler(ApiHandler):
    sessions: SessionService
    events: EventLog
    metrics: Metrics | None = None

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream

    counted = False  # among the metrics' SSE clients

    def on_connection_close(self) -> None:
        self.gone = True
        self._uncount()

    def _uncount(self) -> None:
        if self.counted and self.metrics is not None:
            self.metrics.sse_clients.dec()
        self.counted = False

    @operation(
        "events",
        "The session's events, live (server-sent events)",
        "events",
        answer=SessionEvent,
        answer_type="text/event-stream",
        errors=(400, 404),
        description="Each event is `id:` (increasing per session), `event:` (its type) and "
        "`data:` (one line of JSON), as `x-events` gives per type; `: keepalive` comments come "
        "every 15 s. A client reconnecting with `Last-Event-ID` gets every event after it, none "
        "twice.",
        params=(
            Param(
                "Last-Event-ID",
                "header",
                "Resume after this event id (EventSource sends it on reconnect)",
            ),
            Param("after", "query", "As `Last-Event-ID`, for clients that cannot set it"),
        ),
    )
    async def get(self, session_id: str) -> None:
        session = await self.sessions.get(self.user, session_id)
        after = self.request.headers.get("Last-Event-ID") or self.get_query_argument("after", None)
        await self.events.read(session.id, after)  # a malformed id fails here, with a 400
        self.gone = False
        self.write("retry: 2000\n\n")
        if self.metrics is not None:
            self.metrics.sse_clients.inc()
            self.counted = True
        try:
            await self.flush()
            while not self.gone:
                events = await self.events.read(session.id, after, wait=KEEPALIVE)
                if not events:
                    self.write(": keepalive\n\n")
                for logged in events:
                    data = logged.event.model_dump_json(exclude={"type"})
                    self.write(f"id: {logged.id}\nevent: {logged.type}\ndata: {data}\n\n")
                    after = logged.id
                await self.flush()
        except StreamClosedError:
            return
        finally:
            self._uncount()
        self.finish()
