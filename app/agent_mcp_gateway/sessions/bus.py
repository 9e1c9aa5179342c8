"""Changes across gateway replicas: what one replica learns from a downstream reaches the others.

A downstream tells only the session a change went through (a tool added by a call through one
replica is announced on that replica's downstream session). With replicas sharing a Redis (the
one their rate limits are counted in, `GATEWAY_RATE_LIMIT_STORAGE`), each replica publishes the
catalog changes and resource updates it sees on one channel; the others re-read that server's
catalog (and tell their own listeners only if their agents' views changed) or tell their own
subscribers of the update. A replica ignores its own messages; a re-read that finds nothing new
publishes nothing, so a change crosses once. A single process (storage `memory`) needs none.

Best effort, like the notifications it carries: a Redis that cannot be reached costs the other
replicas their notifications, never a call (the listener reconnects every few seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from agent_mcp_gateway.protocol import KINDS, Kind

log = logging.getLogger("agent_mcp_gateway.bus")

CHANNEL = "agent-mcp-gateway:changes"
RECONNECT_SECONDS = 2.0
TIMEOUT_SECONDS = 5.0
HEALTH_SECONDS = 10

Refresh = Callable[[str, Kind], None]  # server, kind: re-read this replica's copy of its catalog
Updated = Callable[[str, str, str], Awaitable[None]]  # server, URI, owner: tell local subscribers


class ChangeBus:
    def __init__(self, url: str | None, refresh: Refresh, updated: Updated) -> None:
        self.url = url
        self._refresh = refresh
        self._updated = updated
        self._origin = uuid.uuid4().hex
        self._redis: Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()  # subscribed to the channel (for tests and /ready)

    async def start(self) -> None:
        if self.url is None:
            return
        timeout = TIMEOUT_SECONDS
        self._redis = Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        # The subscriber waits for messages without a read timeout (one would end every quiet
        # subscription); a closed connection ends the read, TCP keepalive finds a silent one.
        listening = Redis.from_url(
            self.url,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            health_check_interval=HEALTH_SECONDS,
        )
        self._listener = asyncio.get_running_loop().create_task(self._listen(listening))

    def catalog_changed(self, server: str, kind: Kind) -> None:
        self._publish({"type": "catalog", "server": server, "kind": kind})

    def resource_updated(self, server: str, uri: str, owner: str) -> None:
        self._publish({"type": "updated", "server": server, "uri": uri, "owner": owner})

    def _publish(self, message: dict[str, str]) -> None:
        if self._redis is None:
            return
        task = asyncio.get_running_loop().create_task(self._send(self._redis, message))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, redis: Redis, message: dict[str, str]) -> None:
        try:
            await redis.publish(CHANNEL, json.dumps({**message, "origin": self._origin}))
        except Exception as exc:  # best effort: the change is served locally all the same
            log.debug("change not published", extra={"error": repr(exc)})

    async def _listen(self, redis: Redis) -> None:
        try:
            await self._subscribe(redis)
        finally:
            await redis.aclose()

    async def _subscribe(self, redis: Redis) -> None:
        failing = False
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.connected.set()
                    if failing:
                        log.info("change bus reconnected")
                        failing = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._receive(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                if not failing:
                    log.warning(
                        "change bus unreachable: other replicas' changes are not heard until it answers",
                        extra={"error": repr(exc)},
                    )
                    failing = True
                await asyncio.sleep(RECONNECT_SECONDS)

    async def _receive(self, data: bytes | str) -> None:
        try:
            message: dict[str, Any] = json.loads(data)
        except ValueError:
            return
        if message.get("origin") == self._origin:
            return
        server = message.get("server")
        if not isinstance(server, str):
            return
        kind = message.get("kind")
        if message.get("type") == "catalog" and kind in KINDS:
            self._refresh(server, kind)
        elif message.get("type") == "updated":
            uri, owner = message.get("uri"), message.get("owner")
            if isinstance(uri, str) and isinstance(owner, str):
                await self._updated(server, uri, owner)

    async def close(self) -> None:
        tasks = [task for task in (self._listener, *self._sends) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
