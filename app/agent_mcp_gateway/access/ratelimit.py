"""Per-agent rate limits: operations per window, from the rules' `rate_limit` or the default.

Counted at the MCP layer, after identity is resolved, so one mechanism covers HTTP and stdio
and a request is only ever charged to the agent it acted as (never to an agent it merely
named). The counting is a moving window: the `limits` library's (the library slowapi is built on)
in Redis, and the same window kept in this process's memory by `MovingWindow` below; slowapi
itself counts HTTP requests before the MCP layer knows the agent, so it is not used.

Where the counters live is `GATEWAY_RATE_LIMIT_STORAGE`: this process's memory, or Redis
(limits' async Redis storage over redis-py), which every gateway process pointed at it shares, so
an agent's limit holds across a fleet. When Redis cannot be reached the gateway keeps serving
and counts in its own memory (each process then enforces the limit alone) until a background
probe finds Redis answering again; the state is in `/ready`, a gauge and one log line each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from functools import lru_cache
from typing import Any, Literal

from limits import RateLimitItem, parse, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool

from agent_mcp_gateway.errors import RateLimited
from agent_mcp_gateway.observe.metrics import RATE_LIMIT_STORAGE_ERRORS, RATE_LIMIT_STORAGE_FALLBACK

log = logging.getLogger("agent_mcp_gateway")

# Keys are `agent-mcp-gateway:LIMITER/agent/<agent id>/<limit>`: agent ids cannot contain `/` or
# `:`, so no agent's counter is another's, and the prefix keeps them apart from other users of a
# shared Redis.
KEY_PREFIX = "agent-mcp-gateway"
# A Redis on the same network answers in about a millisecond; one that takes longer than this
# is treated as unreachable rather than holding every call.
REDIS_TIMEOUT = 0.5
# How often a background probe asks Redis whether it answers (and whether it still does).
PROBE_SECONDS = 2.0
PROBE_ITEM = parse("1/second")

State = Literal["local", "shared", "fallback"]
# Cheap requests (ping, lists, logging/setLevel) count against an allowance of their own, this
# many times the agent's limit: every request counts, and a client's housekeeping (fastmcp's
# client lists the tools before its first call) does not spend its calls.
CHEAP_FACTOR = 10


@lru_cache(maxsize=256)
def _parse(limit: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limit))


@lru_cache(maxsize=256)
def cheap_limit(limit: str) -> str:
    """The allowance for cheap requests: each of `limit`'s amounts times CHEAP_FACTOR (its own
    windows: a limit's counters are keyed by its amount)."""
    return "; ".join(
        f"{item.amount * CHEAP_FACTOR} per {item.multiples} {item.GRANULARITY.name}" for item in _parse(limit)
    )


class RateLimits:
    """Charges operations to agents, in Redis when configured and reachable, else in memory."""

    def __init__(self, default: str, storage: str = "memory", probe_seconds: float = PROBE_SECONDS) -> None:
        self.default = default
        self.probe_seconds = probe_seconds
        self._local = MovingWindow()
        self._shared: MovingWindowRateLimiter | None = None
        self._pool: ConnectionPool | None = None
        self.state: State = "local"
        self.since = time.time()
        self.error: str | None = None
        self._prober: asyncio.Task[None] | None = None
        if storage != "memory":
            # Our own pool, so the client's timeouts are ours and it can be closed; no retries:
            # a failed call falls back at once instead of waiting out a backoff.
            self._pool = ConnectionPool.from_url(
                storage, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
            )
            client: dict[str, Any] = {"connection_pool": self._pool}  # passed on to redis-py
            redis = RedisStorage(
                f"async+{storage}",
                wrap_exceptions=True,
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                **client,
            )
            self._shared = MovingWindowRateLimiter(redis)
            self.state = "shared"
        RATE_LIMIT_STORAGE_FALLBACK.set(0)

    @property
    def storage(self) -> str:
        return "memory" if self._shared is None else "redis"

    def status(self) -> dict[str, Any]:
        """What `/ready` reports: where the counters are and, for Redis, whether it answers."""
        status: dict[str, Any] = {"storage": self.storage, "state": self.state}
        if self._shared is not None:
            status["since"] = round(self.since, 3)
        if self.state == "fallback":
            status["error"] = self.error
        return status

    async def start(self) -> None:
        """Ask Redis once before serving (so `/ready` is right from the start), then keep asking."""
        if self._shared is None:
            return
        await self._probe()
        if self.state == "shared":
            log.info("rate limits are counted in redis, shared with other gateway processes")
        self._prober = asyncio.create_task(self._probe_forever(), name="rate-limit-storage-probe")

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._pool is not None:
            await self._pool.aclose()

    async def charge(self, agent_id: str, limit: str | None, cheap: bool = False) -> None:
        """Count one request for `agent_id`; raise RATE_LIMITED when over its limit (a cheap
        request: over its allowance for cheap requests)."""
        text = limit or self.default
        if cheap:
            text = cheap_limit(text)
        if self._shared is not None and self.state == "shared":
            try:
                await _charge(self._shared, agent_id, text)
                return
            except StorageError as exc:
                self._fall_back(exc)
        self._local.charge(agent_id, text)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_seconds)
            await self._probe()

    async def _probe(self) -> None:
        """One read through the same Lua script the charges use; a failure means fall back."""
        assert self._shared is not None
        try:
            await self._shared.get_window_stats(PROBE_ITEM, "gateway", "probe")
        except StorageError as exc:
            self._fall_back(exc)
            return
        if self.state == "fallback":
            self._switch("shared", None)
            log.info("rate limits are shared in redis again")

    def _fall_back(self, exc: StorageError) -> None:
        RATE_LIMIT_STORAGE_ERRORS.inc()
        if self.state == "fallback":
            return
        self._switch("fallback", f"{type(exc.storage_error).__name__}: {exc.storage_error}")
        log.warning(
            "redis is unreachable: rate limits are counted by this process alone until it answers",
            extra={"error": self.error},
        )

    def _switch(self, state: State, error: str | None) -> None:
        self.state, self.error, self.since = state, error, time.time()
        RATE_LIMIT_STORAGE_FALLBACK.set(1 if state == "fallback" else 0)


async def _charge(limiter: MovingWindowRateLimiter, agent_id: str, text: str) -> None:
    for item in _parse(text):
        if not await limiter.hit(item, "agent", agent_id):
            stats = await limiter.get_window_stats(item, "agent", agent_id)
            raise RateLimited(agent_id, text, max(1, math.ceil(stats.reset_time - time.time())))


class MovingWindow:
    """`limits`' moving window, counted in this process's memory.

    Written here because `limits`' memory storages expire their windows on the side of every
    charge: the asyncio one starts a task that hands each key's window to a worker thread and
    copies it, the synchronous one starts a timer thread (measured: 65-130 us of CPU per charge
    at the gateway's call rates, growing with the window, against 5 us here). The semantics are
    the same: a charge is refused when the window already holds the limit's amount of charges
    made within its period, and a refused charge is not counted.
    """

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], deque[float]] = {}

    def charge(self, agent_id: str, text: str) -> None:
        """Count one operation against each of the limits in `text`; raise RATE_LIMITED when one
        of them is full (charges already counted against the limits before it stay counted)."""
        now = time.monotonic()
        for item in _parse(text):
            period = item.get_expiry()
            key = (agent_id, item.key_for())
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = deque()
            while window and window[0] < now - period:
                window.popleft()
            if len(window) >= item.amount:
                raise RateLimited(agent_id, text, max(1, math.ceil(window[0] + period - now)))
            window.append(now)
