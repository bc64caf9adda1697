"""RequestRate: how many API requests one user may make per minute, counted across every server
process (``RuntimeState.hit``); beyond it, 429 with when to try again."""

from __future__ import annotations

from kernelagent.errors import LimitReached
from kernelagent.services.ports import RuntimeState

WINDOW = 60.0
SETTING = "KERNELAGENT_RATE_LIMIT"


class RequestRate:
    def __init__(self, state: RuntimeState, per_minute: int):
        self.state = state
        self.per_minute = per_minute

    async def check(self, user_id: str) -> None:
        """Count one request of ``user_id``; LimitReached past the limit (0: no limit)."""
        if self.per_minute <= 0:
            return
        count, left = await self.state.hit(f"rate:{user_id}", WINDOW)
        if count > self.per_minute:
            raise LimitReached(
                f"more than {self.per_minute} requests in a minute ({SETTING}="
                f"{self.per_minute}); try again in {left:.0f} s",
                SETTING,
                self.per_minute,
                retry_after=left,
            )
