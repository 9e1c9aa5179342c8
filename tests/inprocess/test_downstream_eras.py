"""The protocol era the gateway speaks to each downstream: the newest the server supports
(`server/discover`, else the handshake), or the one its `protocol` forces; a 2026-07-28-only
server reached over stdio and HTTP, its list changes through `subscriptions/listen`.

Fixtures: `dual_era` (both eras, a tool offered on 2026-07-28 only), `modern` (2026-07-28 only,
refuses the handshake), and the reference `everything` server (TypeScript SDK 1.x: handshake
only)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from typing import Any

import mcp_types as mt
import pytest
from fastmcp import Client
from mcp import MCPError
from mcp.client.session import DISCOVER_TIMEOUT_SECONDS

from conftest import (
    GatewayFiles,
    Heard,
    HttpFixtureServer,
    asgi_gateway,
    eventually,
    everything_server,
    fixture_server,
    served_over_http,
)
from inprocess.test_aggregate import as_agent

MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
RULES: dict[str, Any] = {
    "agents": {
        "ide": {"view": "aggregate", "allow": {"servers": ["*"]}},
        "other": {"view": "aggregate", "allow": {"servers": ["*"]}},
        "classic": {"allow": {"servers": ["*"]}},
    }
}


def configure(files: GatewayFiles, **servers: dict[str, Any]) -> None:
    files.write_servers(servers)
    files.write_rules(RULES)


async def connected(service: Any) -> None:
    """Every server's shared session has tried to connect once."""
    await eventually(lambda: all(server.tried.is_set() for server in service.gateway.pool), timeout=60)


async def text(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """A tool call's text result."""
    content = (await client.call_tool(tool, arguments)).content
    assert isinstance(content[0], mt.TextContent), content
    return content[0].text


async def tool_names(client: Client) -> set[str]:
    return {tool.name for tool in await client.list_tools()}


async def test_auto_speaks_the_newest_era_each_server_supports(gateway_files: GatewayFiles) -> None:
    configure(
        gateway_files,
        dual=fixture_server("dual_era"),
        modern=fixture_server("modern"),
        everything=everything_server(),
    )
    async with asgi_gateway(gateway_files) as service:
        await connected(service)
        pool = service.gateway.pool
        assert {server.name: (server.state, server.protocol) for server in pool} == {
            "dual": ("up", MODERN),
            "modern": ("up", MODERN),
            "everything": ("up", HANDSHAKE),
        }
        async with service.client(headers=as_agent("ide")) as ide:
            # The tool the dual-era server offers on 2026-07-28 only is there, and calls go in 2026-07-28.
            assert {"dual__modern_only", "dual__era"} <= await tool_names(ide)
            assert await text(ide, "dual__era", {}) == MODERN
            assert await text(ide, "dual__modern_only", {}) == "only on 2026-07-28"
            assert await text(ide, "everything__echo", {"message": "hi"}) == "Echo: hi"
        async with service.client(headers=as_agent("classic")) as classic:
            listed = (await classic.call_tool("list_servers", {"include_metadata": True})).structured_content
        assert listed is not None
        assert {entry["name"]: entry["protocol"] for entry in listed["servers"]} == {
            "dual": MODERN,
            "modern": MODERN,
            "everything": HANDSHAKE,
        }
        async with service.http() as http:
            ready = (await http.get("/ready")).json()
        assert {name: server["protocol"] for name, server in ready["servers"].items()} == {
            "dual": MODERN,
            "modern": MODERN,
            "everything": HANDSHAKE,
        }


async def test_the_protocol_setting_forces_an_era(gateway_files: GatewayFiles) -> None:
    configure(
        gateway_files,
        old=fixture_server("dual_era", protocol=HANDSHAKE),
        new=fixture_server("dual_era", protocol=MODERN),
        refusing=fixture_server("modern", protocol=HANDSHAKE),
        unable={**everything_server(), "protocol": MODERN},
    )
    async with asgi_gateway(gateway_files) as service:
        await connected(service)
        pool = service.gateway.pool
        assert (pool.get("old").protocol, pool.get("new").protocol) == (HANDSHAKE, MODERN)  # type: ignore[union-attr]
        unable, refusing = pool.get("unable"), pool.get("refusing")
        assert unable is not None and unable.state == "down"
        assert unable.last_error == f"connect failed: the server does not speak {MODERN}"
        assert refusing is not None and refusing.state == "down" and refusing.protocol is None
        async with service.client(headers=as_agent("ide")) as ide:
            tools = await tool_names(ide)
            assert "old__modern_only" not in tools and {"old__era", "new__era", "new__modern_only"} <= tools
            assert await text(ide, "old__era", {}) == HANDSHAKE
            assert await text(ide, "new__era", {}) == MODERN


@pytest.mark.parametrize("protocol", [MODERN, "auto"])
async def test_a_2026_server_slower_to_start_than_the_sdks_probe_connects(
    gateway_files: GatewayFiles, protocol: str
) -> None:
    """The SDK gives `server/discover` 10 s; a stdio server that takes longer to start (a
    Python one did on a loaded machine) still connects in 2026-07-28, as a slow handshake-era
    server gets the connect timeout: forced, instead of being refused and restarted as slowly
    again; on "auto", through the SDK's fallback (the late server refuses `initialize` once it
    answered the probe, and is probed again) rather than in the handshake era."""
    slow = fixture_server("echo", protocol=protocol)
    slow["args"] += ["--start-delay", str(DISCOVER_TIMEOUT_SECONDS + 1)]
    configure(gateway_files, slow=slow)
    async with asgi_gateway(gateway_files) as service:
        await connected(service)
        server = service.gateway.pool.get("slow")
        assert server is not None
        assert (server.state, server.protocol, server.last_error) == ("up", MODERN, None)
        async with service.client(headers=as_agent("ide")) as ide:
            assert await text(ide, "slow__echo", {"text": "hi"}) == "hi"


async def test_a_2026_server_that_stops_answering_is_noticed(gateway_files: GatewayFiles) -> None:
    """On 2026-07-28 the ping is a `server/discover`, which the SDK gives up on after 10 s with a
    REQUEST_TIMEOUT error: that is no answer, so a stopped server is lost however long the ping
    timeout (it was taken for an answer, and such a server stayed up for good)."""
    configure(gateway_files, frozen=fixture_server("crashing"))
    async with (
        asgi_gateway(
            gateway_files,
            GATEWAY_ISOLATION="shared",
            GATEWAY_PING_INTERVAL="1",
            GATEWAY_PING_TIMEOUT=str(DISCOVER_TIMEOUT_SECONDS + 2),
        ) as service,
        service.client(headers=as_agent("ide")) as ide,
    ):
        await connected(service)
        server = service.gateway.pool.get("frozen")
        assert server is not None and (server.state, server.protocol) == ("up", MODERN)
        pid = int(await text(ide, "frozen__pid", {}))
        os.kill(pid, signal.SIGSTOP)
        try:
            lost = await eventually(lambda: (server.state, server.last_error) == ("down", "ping timed out"))
            assert lost, (server.state, server.last_error)
        finally:
            os.kill(pid, signal.SIGCONT)


async def received(client: Client, tool: str) -> Counter[str]:
    """The requests the dual-era server behind `tool` received so far, by method."""
    return Counter(json.loads(await text(client, tool, {})))


@pytest.mark.parametrize("era", [MODERN, HANDSHAKE])
async def test_a_call_costs_one_request_downstream_in_either_era(
    gateway_files: GatewayFiles, era: str
) -> None:
    """Counted, not timed: each call through the gateway is exactly one `tools/call` at the
    server in both eras (no discover, listen or list per call), so a per-call round trip added to
    one era's path fails here however loaded the machine is. Pings are set far apart."""
    configure(gateway_files, dual=fixture_server("dual_era", protocol=era))
    async with (
        asgi_gateway(gateway_files, GATEWAY_PING_INTERVAL="3600") as service,
        service.client(headers=as_agent("ide")) as ide,
    ):
        await connected(service)
        assert await text(ide, "dual__era", {}) == era  # the agent's own session is up
        before = await received(ide, "dual__received")
        for _ in range(10):
            assert await text(ide, "dual__era", {}) == era
        after = await received(ide, "dual__received")
        assert after - before == Counter({"tools/call": 11})  # ten calls and the count's own


@pytest.fixture(params=["stdio", "http"])
def modern_server(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The 2026-07-28-only fixture: its own process over stdio, or Streamable HTTP."""
    if request.param == "stdio":
        yield fixture_server("modern")
        return
    with served_over_http("modern") as url:
        yield {"description": "modern over HTTP", "url": url}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_2026_only_server_serves_tools_prompts_and_resources(
    gateway_files: GatewayFiles, modern_server: dict[str, Any], mode: str
) -> None:
    configure(gateway_files, modern=modern_server)
    async with asgi_gateway(gateway_files) as service, service.client(mode, headers=as_agent("ide")) as ide:
        await connected(service)
        assert {"modern__echo", "modern__add_tool"} <= await tool_names(ide)
        assert await text(ide, "modern__echo", {"text": "hi"}) == "hi"
        assert await text(ide, "modern__era", {}) == MODERN
        prompt = await ide.get_prompt("modern__greet", {"name": "ada"})
        assert prompt.messages[0].content == mt.TextContent(type="text", text="Hello, ada, from 2026-07-28.")
        note = await ide.read_resource("modern://note")
        assert note[0].text == "spoken in 2026-07-28"  # type: ignore[union-attr]


async def test_list_changes_of_a_2026_only_server_reach_the_gateways_clients(
    gateway_files: GatewayFiles, modern_server: dict[str, Any]
) -> None:
    configure(gateway_files, modern=modern_server)
    seen = Heard()
    async with (
        asgi_gateway(gateway_files) as service,
        service.client("legacy", headers=as_agent("ide"), message_handler=seen) as handshake,
        service.client("auto", headers=as_agent("ide")) as modern,
    ):
        await connected(service)
        assert "modern__fresh" not in await tool_names(modern)
        await handshake.list_tools()
        await modern.call_tool("modern__add_tool", {"name": "fresh"})
        # Announced on the listen stream the gateway keeps open to the server, not on the call.
        assert await eventually(lambda: "notifications/tools/list_changed" in seen.events, timeout=60)
        assert "modern__fresh" in await tool_names(handshake)
        assert "modern__fresh" in await tool_names(modern)
        assert await text(modern, "modern__fresh", {}) == "fresh"


async def test_resource_updates_of_a_2026_only_server_reach_the_subscriber(
    gateway_files: GatewayFiles, modern_server: dict[str, Any]
) -> None:
    configure(gateway_files, modern=modern_server)
    subscribed = Heard()
    async with (
        asgi_gateway(gateway_files) as service,
        service.client("legacy", headers=as_agent("ide"), message_handler=subscribed) as ide,
    ):
        await connected(service)
        await ide.session.subscribe_resource("modern://note")
        await ide.call_tool("modern__touch", {"uri": "modern://note"})
        assert await eventually(lambda: "notifications/resources/updated" in subscribed.events, timeout=60)
        await ide.session.unsubscribe_resource("modern://note")
        await ide.call_tool("modern__touch", {"uri": "modern://note"})
        await asyncio.sleep(0.5)
        assert subscribed.events.count("notifications/resources/updated") == 1


async def test_a_subscription_goes_where_the_servers_era_honors_it(gateway_files: GatewayFiles) -> None:
    """Two dual-era servers that serve `resources/subscribe` on the handshake era, spoken to in
    2026-07-28: the conformance fixture, whose `subscriptions/listen` stream honors resource
    subscriptions too, and the studio fixture, which serves no listen stream (fastmcp 4.1.2)
    and so offers no subscription on 2026-07-28 (its capability says so): a handshake-era
    client's subscription to the first is honored, to the second refused with the reason."""
    conformance = fixture_server("conformance_server")
    configure(gateway_files, conformance=conformance, studio=fixture_server("studio"))
    async with (
        asgi_gateway(gateway_files) as service,
        service.client("legacy", headers=as_agent("ide")) as ide,
    ):
        await connected(service)
        pool = service.gateway.pool
        assert {server.name: server.protocol for server in pool} == {"conformance": MODERN, "studio": MODERN}
        subscriptions = service.gateway.subscriptions
        await ide.session.subscribe_resource("test://watched-resource")
        assert subscriptions.held("ide", "conformance") == 1
        await ide.session.unsubscribe_resource("test://watched-resource")
        assert subscriptions.held("ide", "conformance") == 0
        with pytest.raises(MCPError, match="offers none in that era") as refused:
            await ide.session.subscribe_resource("note://readme")
        assert refused.value.code == mt.INVALID_PARAMS
        assert subscriptions.held("ide", "studio") == 0


async def test_what_an_agents_2026_session_hears_is_that_agents_only(gateway_files: GatewayFiles) -> None:
    """Per-agent isolation: each agent's session of a 2026-only stdio server (its own process)
    has its own listen stream, whose events reach that agent's clients only."""
    configure(gateway_files, modern=fixture_server("modern", isolation="agent"))
    ide_seen, other_seen = Heard(), Heard()
    async with (
        asgi_gateway(gateway_files) as service,
        service.client("legacy", headers=as_agent("ide"), message_handler=ide_seen) as ide,
        service.client("legacy", headers=as_agent("other"), message_handler=other_seen) as other,
    ):
        await connected(service)
        await ide.session.subscribe_resource("modern://note")
        await other.session.subscribe_resource("modern://note")
        await ide.list_tools()
        await other.list_tools()
        owners = {instance.owner: instance.protocol for instance in service.gateway.pool.instances("modern")}
        assert owners == {"": MODERN, "agent:ide": MODERN, "agent:other": MODERN}
        await ide.call_tool("modern__touch", {"uri": "modern://note"})
        await ide.call_tool("modern__add_tool", {"name": "mine"})
        assert await eventually(lambda: "notifications/resources/updated" in ide_seen.events, timeout=60)
        assert await eventually(lambda: "notifications/tools/list_changed" in ide_seen.events, timeout=60)
        assert "modern__mine" in await tool_names(ide)
        await other.call_tool("modern__echo", {"text": "still here"})
        await asyncio.sleep(0.5)
        assert "notifications/resources/updated" not in other_seen.events
        assert "modern__mine" not in await tool_names(other)


async def test_a_restarted_2026_only_http_server_is_listened_to_again(gateway_files: GatewayFiles) -> None:
    """The listen stream drops with the server; the session is found lost (no answer to
    `server/discover`), reconnects once the server is back, and listens again."""
    server = HttpFixtureServer("modern")
    server.start()
    try:
        configure(gateway_files, modern={"description": "modern over HTTP", "url": server.url})
        seen = Heard()
        async with (
            asgi_gateway(gateway_files) as service,
            service.client("legacy", headers=as_agent("ide"), message_handler=seen) as ide,
        ):
            await connected(service)
            shared = service.gateway.pool.get("modern")
            assert shared is not None
            server.stop()
            assert await eventually(lambda: shared.state == "down", timeout=60)
            server.start()
            assert await eventually(lambda: shared.state == "up", timeout=120)
            await ide.list_tools()
            await ide.call_tool("modern__add_tool", {"name": "after"})
            assert await eventually(lambda: "notifications/tools/list_changed" in seen.events, timeout=60)
            assert "modern__after" in await tool_names(ide)
    finally:
        server.stop()
