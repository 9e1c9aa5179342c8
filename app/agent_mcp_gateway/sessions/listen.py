"""`subscriptions/listen` streams of 2026-07-28 clients: that era's channel for `list_changed`
and `resources/updated` (it has no sessions and no GET stream).

A stream belongs to the agent that opened it. It hears a kind's `list_changed` only when what
that agent sees of the kind changed (`ListChanged`, the same check as handshake-era sessions),
and `resources/updated` only for the resources it subscribed to that the agent may read
(`Subscriptions`). Events are level triggers, so a stream keeps at most one pending copy of each:
its backlog is bounded by what it asked for, however fast changes come.

The stream's frames follow the specification through the SDK's own vocabulary
(`mcp.shared.subscriptions`): the acknowledgement first, every frame stamped with the listen
request's id, and the `SubscriptionsListenResult` when the gateway ends the stream (shutdown).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import mcp_types as mt
from mcp.server.session import ServerSession
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
    event_to_notification,
)

from agent_mcp_gateway.errors import RateLimited
from agent_mcp_gateway.protocol import KINDS, Kind

LISTEN_PREFIX = "listen:"
STREAMS_RETRY_SECONDS = 60  # what a refused listen is told: streams end when their clients leave
KIND_EVENTS: dict[Kind, ServerEvent] = {
    "tools": ToolsListChanged(),
    "prompts": PromptsListChanged(),
    "resources": ResourcesListChanged(),
}
_ids = itertools.count(1)


class ListenStream:
    """One open `subscriptions/listen` stream: who it is for, and its pending events."""

    def __init__(self, agent_id: str, kinds: tuple[Kind, ...]) -> None:
        self.key = f"{LISTEN_PREFIX}{next(_ids)}"
        self.agent_id = agent_id
        self.kinds = kinds
        self.uris: list[str] = []
        self._pending: dict[ServerEvent, None] = {}
        self._wake = asyncio.Event()
        self._closed = False

    def push(self, event: ServerEvent) -> None:
        """Queue `event` unless a copy is pending already (it says the same thing)."""
        if not self._closed:
            self._pending[event] = None
            self._wake.set()

    async def kind_changed(self, kind: Kind) -> None:
        self.push(KIND_EVENTS[kind])

    async def resource_updated(self, uri: str) -> None:
        self.push(ResourceUpdated(uri))

    def close(self) -> None:
        """End the stream gracefully: its pending events are sent, then its result."""
        self._closed = True
        self._wake.set()

    def honored(self) -> mt.SubscriptionFilter:
        """The acknowledged filter: the kinds asked for, and the URIs the gateway subscribed."""
        return mt.SubscriptionFilter(
            tools_list_changed=True if "tools" in self.kinds else None,
            prompts_list_changed=True if "prompts" in self.kinds else None,
            resources_list_changed=True if "resources" in self.kinds else None,
            resource_subscriptions=list(self.uris) or None,
        )

    async def serve(self, session: ServerSession, request_id: mt.RequestId) -> mt.SubscriptionsListenResult:
        """Acknowledge, then send each event as it comes, until closed (or cancelled when the
        client goes away)."""
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: request_id}
        await session.send_notification(
            mt.SubscriptionsAcknowledgedNotification(
                params=mt.SubscriptionsAcknowledgedNotificationParams(
                    notifications=self.honored(), _meta=meta
                )
            ),
            related_request_id=request_id,
        )
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                event = next(iter(self._pending))
                del self._pending[event]
                await session.send_notification(
                    event_to_notification(event, meta), related_request_id=request_id
                )
            if self._closed:
                return mt.SubscriptionsListenResult(_meta=meta)


class ListenStreams:
    """The open streams, at most `per_agent` for one agent (as its handshake-era sessions are
    capped: one agent cannot take every stream a process can hold)."""

    def __init__(self, per_agent: int) -> None:
        self.per_agent = per_agent
        self._streams: dict[str, ListenStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, key: object) -> bool:
        return key in self._streams

    def open(self, agent_id: str, notifications: mt.SubscriptionFilter) -> ListenStream:
        held = sum(1 for stream in self._streams.values() if stream.agent_id == agent_id)
        if held >= self.per_agent:
            raise RateLimited(agent_id, f"{self.per_agent} listen streams", STREAMS_RETRY_SECONDS)
        flags = (
            notifications.tools_list_changed,
            notifications.prompts_list_changed,
            notifications.resources_list_changed,
        )
        stream = ListenStream(agent_id, tuple(kind for kind, on in zip(KINDS, flags, strict=True) if on))
        self._streams[stream.key] = stream
        return stream

    def discard(self, stream: ListenStream) -> None:
        self._streams.pop(stream.key, None)

    def close(self) -> None:
        """End every stream gracefully (the gateway is shutting down)."""
        for stream in list(self._streams.values()):
            stream.close()
