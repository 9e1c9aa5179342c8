"""Resource subscriptions in the aggregate view: which session subscribed to which resource of
which server, so that a downstream's `notifications/resources/updated` reaches those sessions
and no other.

The gateway holds one downstream subscription per (server, downstream session, URI) however many
sessions want it, and drops it when the last of them unsubscribes or ends. An update is
delivered only to sessions subscribed through the downstream session that sent it (an agent's
own session speaks of that agent's state only: `downstream.pool`), and whose agent may still
use the server (a reload may have taken it away).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent_mcp_gateway.errors import RateLimited

log = logging.getLogger("agent_mcp_gateway.subscriptions")
CAP_RETRY_SECONDS = 60  # what a refused subscription is told: subscriptions end by unsubscribing

Allowed = Callable[[str, str], bool]  # agent, server
Alive = Callable[[str], bool]  # session key
Release = Callable[[str, str, str], Awaitable[None]]  # server, URI, owner: its last subscriber left
Notify = Callable[[str], Awaitable[None]]  # tells one subscriber that a URI was updated


@dataclass(slots=True)
class _Subscriber:
    notify: Notify  # a handshake session's `send_resource_updated`, or a listen stream's
    agent_id: str
    owner: str  # the downstream session subscribed through ("" the shared one)


class Subscriptions:
    def __init__(self, allowed: Allowed, alive: Alive, release: Release, cap: int = 100) -> None:
        self._allowed = allowed
        self._alive = alive
        self._release = release
        self.cap = cap  # resources one agent may be subscribed to on one server
        self._by_resource: dict[tuple[str, str], dict[str, _Subscriber]] = {}

    def held(self, agent_id: str, server: str) -> int:
        """How many of `server`'s resources `agent_id` is subscribed to."""
        return sum(
            1
            for (subscribed, _), subscribers in self._by_resource.items()
            if subscribed == server and any(s.agent_id == agent_id for s in subscribers.values())
        )

    def add(self, key: str, notify: Notify, agent_id: str, server: str, uri: str, owner: str = "") -> bool:
        """Record a subscription; True when it is the first to this resource through the
        downstream session of `owner`. RATE_LIMITED past the agent's cap on the server, so one
        agent's subscriptions cannot hold a server's session hostage."""
        known = self._by_resource.get((server, uri), {})
        if (
            not any(s.agent_id == agent_id for s in known.values())
            and self.held(agent_id, server) >= self.cap
        ):
            raise RateLimited(agent_id, f"{self.cap} subscriptions on server '{server}'", CAP_RETRY_SECONDS)
        subscribers = self._by_resource.setdefault((server, uri), {})
        first = all(subscriber.owner != owner for subscriber in subscribers.values())
        subscribers[key] = _Subscriber(notify, agent_id, owner)
        return first

    def server_of(self, key: str, uri: str) -> str | None:
        """The server a session's subscription to `uri` went to, if it has one."""
        for (server, subscribed), subscribers in self._by_resource.items():
            if subscribed == uri and key in subscribers:
                return server
        return None

    async def remove(self, key: str, server: str, uri: str) -> None:
        subscribers = self._by_resource.get((server, uri))
        gone = subscribers.pop(key, None) if subscribers is not None else None
        if subscribers is None or gone is None:
            return
        if not subscribers:
            del self._by_resource[(server, uri)]
        if all(subscriber.owner != gone.owner for subscriber in subscribers.values()):
            await self._release(server, uri, gone.owner)

    async def updated(self, server: str, uri: str, owner: str = "") -> None:
        """Tell the sessions subscribed to this server's `uri` through the downstream session
        of `owner` that it changed."""
        for key, subscriber in list(self._by_resource.get((server, uri), {}).items()):
            if subscriber.owner != owner:
                continue
            if not self._alive(key):
                await self.remove(key, server, uri)
                continue
            if not self._allowed(subscriber.agent_id, server):
                continue
            try:
                await subscriber.notify(uri)
            except Exception as exc:  # a session that went away takes its subscription with it
                log.debug("resource update not delivered", extra={"error": repr(exc)})
                await self.remove(key, server, uri)

    async def prune(self) -> None:
        """Drop the subscriptions of HTTP sessions that have ended (the session sweeper)."""
        for (server, uri), subscribers in list(self._by_resource.items()):
            for key in [key for key in subscribers if not self._alive(key)]:
                await self.remove(key, server, uri)
