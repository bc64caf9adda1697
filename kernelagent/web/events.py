"""``GET /api/v1/sessions/{id}/events``: the session's events as server-sent events.

Resumable: a client reconnecting with ``Last-Event-ID`` (browsers' ``EventSource`` send it by
themselves) gets every event after that id and none twice. A comment line every ``KEEPALIVE``
seconds keeps proxies from closing an idle stream and lets the server notice a client that left.
"""

from __future__ import annotations

import json

from tornado.iostream import StreamClosedError

from kernelagent.services.ports import EventLog
from kernelagent.services.sessions import SessionService
from kernelagent.web.base import ApiHandler

KEEPALIVE = 15.0


class EventsHandler(ApiHandler):
    sessions: SessionService
    events: EventLog

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream

    def on_connection_close(self) -> None:
        self.gone = True

    async def get(self, session_id: str) -> None:
        session = await self.sessions.get(self.user, session_id)
        after = self.request.headers.get("Last-Event-ID") or self.get_query_argument("after", None)
        await self.events.read(session.id, after)  # a malformed id fails here, with a 400
        self.gone = False
        self.write("retry: 2000\n\n")
        try:
            await self.flush()
            while not self.gone:
                events = await self.events.read(session.id, after, wait=KEEPALIVE)
                if not events:
                    self.write(": keepalive\n\n")
                for event in events:
                    data = json.dumps(event.data, ensure_ascii=False, default=str)
                    self.write(f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n")
                    after = event.id
                await self.flush()
        except StreamClosedError:
            return
        self.finish()
