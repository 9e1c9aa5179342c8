"""Per-agent rate limits: operations per window, from the rules' `rate_limit` or the default.

Counted at the MCP layer, after identity is resolved, so one mechanism covers HTTP and stdio
and a request is only ever charged to the agent it acted as (never to an agent it merely
named). The counting is the `limits` library's moving window (the library slowapi is built on);
slowapi itself counts HTTP requests before the MCP layer knows the agent, so it is not used.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from .errors import RateLimited


@lru_cache(maxsize=256)
def _parse(limit: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limit))


class RateLimits:
    """The asyncio flavour of `limits`: its synchronous memory storage starts a timer thread
    to expire counters on most calls (measured: 237 us median, 11.8 ms p95 per charge), the
    asyncio one expires them in a task on the event loop."""

    def __init__(self, default: str, storage_uri: str = "async+memory://") -> None:
        self.default = default
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    async def charge(self, agent_id: str, limit: str | None) -> None:
        """Count one operation for `agent_id`; raise RATE_LIMITED when over its limit."""
        text = limit or self.default
        for item in _parse(text):
            if not await self._limiter.hit(item, "agent", agent_id):
                stats = await self._limiter.get_window_stats(item, "agent", agent_id)
                raise RateLimited(agent_id, text, max(1, math.ceil(stats.reset_time - time.time())))
