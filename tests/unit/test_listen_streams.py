"""`subscriptions/listen` streams: what a stream acknowledges, and how many one agent may hold."""

from __future__ import annotations

import mcp_types as mt
import pytest

from agent_mcp_gateway.errors import RateLimited
from agent_mcp_gateway.sessions.listen import ListenStreams


def test_a_stream_acknowledges_the_kinds_asked_for_and_the_uris_subscribed() -> None:
    streams = ListenStreams(per_agent=5)
    stream = streams.open("ide", mt.SubscriptionFilter(tools_list_changed=True, resources_list_changed=False))
    assert stream.kinds == ("tools",)
    stream.uris.append("note://readme")
    honored = stream.honored()
    assert honored.tools_list_changed is True and honored.prompts_list_changed is None
    assert honored.resources_list_changed is None and honored.resource_subscriptions == ["note://readme"]
    assert stream.key in streams


def test_one_agent_holds_at_most_its_streams() -> None:
    streams = ListenStreams(per_agent=2)
    held = [streams.open("ide", mt.SubscriptionFilter()) for _ in range(2)]
    with pytest.raises(RateLimited) as refused:
        streams.open("ide", mt.SubscriptionFilter())
    assert refused.value.code == -32005
    streams.open("other", mt.SubscriptionFilter())  # another agent is not held back
    streams.discard(held[0])
    streams.open("ide", mt.SubscriptionFilter())  # a stream that ended frees its place
    assert len(streams) == 3
