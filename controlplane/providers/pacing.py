"""Request pacing for cloud APIs: one reservation queue per API endpoint in the process, shared by every
provider instance that calls it (several zones or listeners in one account share its rate limit)."""

from __future__ import annotations

import asyncio
import math
import time


class Pacer:
    """Spaces the calls to one endpoint `interval` apart: a reservation, so concurrent callers queue."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = -math.inf

    async def wait(self) -> None:
        now = time.monotonic()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


_PACERS: dict[tuple[str, str | None, float], Pacer] = {}


def pacer(api: str, endpoint: str | None, interval: float) -> Pacer:
    """The pacer of `api` at `endpoint` (None: the SDK's default) for calls `interval` apart."""
    return _PACERS.setdefault((api, endpoint, interval), Pacer(interval))
