"""RATE_LIMIT: requests per identity (a key name, or a client address) over a moving window (`limits`)."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class RateLimiter:
    """RATE_LIMIT's items (all must hold) over a moving window, in the memory of one process: the service, or
    with WORKERS > 1 the core process, which counts for every HTTP worker (app.core)."""

    def __init__(self, items: list[RateLimitItem]) -> None:
        self.items = items
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def acquire(self, identity: str) -> float | None:
        """Counts one request and returns None, or returns the seconds until one is allowed (nothing counted)."""
        now = time.time()
        waits = [
            self._limiter.get_window_stats(item, identity).reset_time - now
            for item in self.items
            if not self._limiter.test(item, identity)
        ]
        if waits:
            return max(1.0, math.ceil(max(waits)))
        for item in self.items:
            self._limiter.hit(item, identity)
        return None
