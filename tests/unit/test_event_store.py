"""The event store of resumable streams: what it replays, and the bounds it keeps."""

from __future__ import annotations

import mcp_types as mt
from mcp.server.streamable_http import EventMessage

from agent_mcp_gateway.sessions.events import BoundedEventStore


def message(number: int) -> mt.JSONRPCResponse:
    return mt.JSONRPCResponse(jsonrpc="2.0", id=number, result={})


async def replayed(store: BoundedEventStore, last_event_id: str) -> tuple[str | None, list[int]]:
    sent: list[EventMessage] = []

    async def send(event: EventMessage) -> None:
        sent.append(event)

    stream = await store.replay_events_after(last_event_id, send)
    return stream, [event.message.id for event in sent]  # type: ignore[union-attr]


async def test_replays_what_came_after_the_last_event_on_its_stream_only() -> None:
    store = BoundedEventStore(100)
    priming = await store.store_event("a", None)
    first = await store.store_event("a", message(1))
    await store.store_event("b", message(99))
    await store.store_event("a", message(2))
    assert await replayed(store, priming) == ("a", [1, 2])
    assert await replayed(store, first) == ("a", [2])
    assert await replayed(store, "unknown") == (None, [])


async def test_keeps_at_most_its_bounds_evicting_the_oldest() -> None:
    store = BoundedEventStore(10, per_stream=4)
    ids = [await store.store_event("busy", message(n)) for n in range(6)]
    assert len(store) == 4  # the stream's four latest
    assert await replayed(store, ids[0]) == (None, [])
    assert await replayed(store, ids[2]) == ("busy", [3, 4, 5])
    others = [await store.store_event(f"s{n}", message(100 + n)) for n in range(20)]
    assert len(store) == 10
    assert await replayed(store, ids[5]) == (None, [])  # evicted by newer events of other streams
    assert await replayed(store, others[-1]) == ("s19", [])
