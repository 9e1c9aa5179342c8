"""`subscriptions/listen` at the gateway's front door: 2026-07-28 clients (fastmcp's and the
official SDK's) hear `list_changed` for their agent's view and `resources/updated` for the
resources their agent may read, and nothing else; over HTTP in process, before real fixture
servers over stdio."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from fastmcp.utilities.asgi_transport import StreamingASGITransport
from mcp import Client as SdkClient
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import listen
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged

from conftest import AsgiGateway, GatewayFiles, Heard, asgi_gateway, eventually, fixture_server

RULES: dict[str, Any] = {
    "agents": {
        "ide": {"view": "aggregate", "allow": {"servers": ["*"]}},
        "narrow": {"view": "aggregate", "allow": {"servers": ["echo"]}},
        "classic": {"allow": {"servers": ["*"]}},
    }
}
MODERN = "2026-07-28"
EVENT_SECONDS = 60  # a generous bound for one event on a loaded machine


def write_config(files: GatewayFiles) -> None:
    files.write_servers(
        {
            "echo": fixture_server("echo"),
            # Resource subscriptions need the handshake era downstream: fastmcp 4.1.2 serves no
            # `subscriptions/listen`, so spoken to in 2026-07-28 it would offer none.
            "studio": fixture_server("studio", prefix="st", protocol="2025-11-25"),
            "changing": fixture_server("list_changing"),
        }
    )
    files.write_rules(RULES)


@asynccontextmanager
async def sdk_client(service: AsgiGateway, agent: str, mode: str = "auto") -> AsyncIterator[SdkClient]:
    """The official SDK's client (`auto` negotiates 2026-07-28), streamed in process."""
    http = httpx2.AsyncClient(transport=StreamingASGITransport(service.app), headers={"X-Agent-Id": agent})
    transport = streamable_http_client(service.mcp_url, http_client=http)
    async with http, SdkClient(transport, mode=mode) as client:
        yield client


async def test_listen_hears_only_its_agents_view(gateway_files: GatewayFiles) -> None:
    write_config(gateway_files)
    async with (
        asgi_gateway(gateway_files) as service,
        service.client("auto", headers={"X-Agent-Id": "ide"}) as ide,
        service.client("auto", headers={"X-Agent-Id": "narrow"}) as narrow,
        service.client("auto", headers={"X-Agent-Id": "classic"}) as classic,
    ):
        for client in (ide, narrow, classic):
            capabilities = client.server_capabilities
            assert capabilities is not None and capabilities.tools is not None
            assert capabilities.tools.list_changed is True
        await eventually(lambda: all(server.state == "up" for server in service.gateway.pool), timeout=30)
        async with (
            listen(ide.session, tools_list_changed=True) as ide_stream,
            listen(narrow.session, tools_list_changed=True) as narrow_stream,
            listen(classic.session, tools_list_changed=True) as classic_stream,
        ):
            assert ide_stream.honored.tools_list_changed is True
            ide_heard, narrow_heard, classic_heard = (
                Heard().follow(ide_stream),
                Heard().follow(narrow_stream),
                Heard().follow(classic_stream),
            )
            await ide.call_tool("changing__add_tool", {"name": "fresh"})
            await eventually(lambda: ide_heard.events, timeout=EVENT_SECONDS)
            assert ide_heard.events == [ToolsListChanged()]
            assert "changing__fresh" in {tool.name for tool in await ide.list_tools()}
            await asyncio.sleep(0.5)  # past the debounce: nobody else hears it
            assert narrow_heard.events == [] and classic_heard.events == []
            for heard in (ide_heard, narrow_heard, classic_heard):
                heard.close()

    def listened() -> set[str]:
        lines = gateway_files.audit_lines()
        return {line["agent_id"] for line in lines if line["operation"] == "subscriptions/listen"}

    assert await eventually(lambda: listened() == {"ide", "narrow", "classic"}), listened()


async def test_listen_hears_updates_of_resources_its_agent_may_read(gateway_files: GatewayFiles) -> None:
    write_config(gateway_files)
    async with (
        asgi_gateway(gateway_files) as service,
        sdk_client(service, "ide") as ide,
        sdk_client(service, "narrow") as narrow,
    ):
        assert ide.session.protocol_version == "2026-07-28"
        await eventually(lambda: all(server.state == "up" for server in service.gateway.pool), timeout=30)
        asked = ["note://readme", "other://nowhere"]
        async with (
            ide.listen(resource_subscriptions=asked) as ide_stream,
            narrow.listen(resource_subscriptions=asked) as narrow_stream,
        ):
            # Only what the agent may read is acknowledged; an unknown URI and another
            # agent's resource are left out alike.
            assert ide_stream.honored.resource_subscriptions == ["note://readme"]
            assert not narrow_stream.honored.resource_subscriptions
            ide_heard, narrow_heard = Heard().follow(ide_stream), Heard().follow(narrow_stream)
            await ide.call_tool("st__touch", {"uri": "note://readme"})
            await eventually(lambda: ide_heard.events, timeout=EVENT_SECONDS)
            assert ide_heard.events == [ResourceUpdated("note://readme")]
            await asyncio.sleep(0.5)
            assert narrow_heard.events == []
            ide_heard.close()
            narrow_heard.close()
        # The stream's end released the downstream subscription.
        await eventually(lambda: service.gateway.subscriptions.held("ide", "studio") == 0)
        assert service.gateway.subscriptions.held("ide", "studio") == 0


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sdk_client_in_both_eras(gateway_files: GatewayFiles, mode: str) -> None:
    """The official SDK's client lists (in name order) and calls in the aggregate view in
    either era."""
    write_config(gateway_files)
    async with asgi_gateway(gateway_files) as service, sdk_client(service, "ide", mode) as client:
        assert (client.session.protocol_version == "2026-07-28") is (mode == "auto")
        listed = await client.list_tools()
        names = [tool.name for tool in listed.tools]
        assert {"echo__echo", "st__hello"} <= set(names) and names == sorted(names)
        if mode == "auto":  # the agent's own list, which it may keep a while
            assert (listed.ttl_ms, listed.cache_scope) == (30_000, "private")
        result = await client.call_tool("echo__echo", {"text": "hi"})
        assert not result.is_error and result.structured_content == {"result": "hi"}


async def test_server_discover_answers_from_the_agents_view(gateway_files: GatewayFiles) -> None:
    """A 2026-07-28 `server/discover` describes the asking agent's view: the discovery view
    offers tools only; the aggregate view its own instructions, and the extensions its servers
    declare merged in (those of a server the agent may not use stay out)."""
    extension = {"io.example/widgets": {"colour": "blue"}}
    raw = fixture_server("raw", env={"RAW_EXTENSIONS": json.dumps(extension)})
    gateway_files.write_servers({"echo": fixture_server("echo"), "raw": raw})
    gateway_files.write_rules(RULES)
    async with asgi_gateway(gateway_files) as service:
        await eventually(lambda: all(server.state == "up" for server in service.gateway.pool), timeout=30)
        discovered: dict[str, dict[str, Any]] = {}
        for agent in ("ide", "narrow", "classic"):
            async with service.client("auto", headers={"X-Agent-Id": agent}) as client:
                discovered[agent] = await client.session.send_discover(MODERN)  # as on the wire
    ide, narrow, classic = discovered["ide"], discovered["narrow"], discovered["classic"]
    assert ide["capabilities"]["extensions"]["io.example/widgets"] == {"colour": "blue"}
    assert "io.example/widgets" not in narrow["capabilities"].get("extensions", {})
    assert "{server}__{name}" in ide["instructions"] and "list_servers" in classic["instructions"]
    assert {"prompts", "resources"} <= set(ide["capabilities"])
    assert "tools" in classic["capabilities"] and not {"prompts", "resources"} & set(classic["capabilities"])
    # The answer is the agent's own: private, and it may be kept a while.
    assert (ide["ttlMs"], ide["cacheScope"]) == (30_000, "private")


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
}


async def test_headers_that_disagree_with_the_body_get_32020(gateway_files: GatewayFiles) -> None:
    """A 2026-07-28 request's `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` headers must match its
    body: a mismatch (or a missing required header) is refused with HEADER_MISMATCH (-32020)."""
    gateway_files.write_servers({"routed": fixture_server("routed")})
    gateway_files.write_rules({"agents": {"ide": {"view": "aggregate", "allow": {"servers": ["*"]}}}})
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "routed__lookup", "arguments": {"region": "eu"}, "_meta": MODERN_META},
    }
    good = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "routed__lookup",
        "Mcp-Param-Region": "eu",
        "X-Agent-Id": "ide",
    }
    async with asgi_gateway(gateway_files) as service, service.http() as http:
        assert await eventually(lambda: service.gateway.ready, 30)
        answered = await http.post("/mcp", json=body, headers={**good, "Accept": "application/json"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["result"]["content"][0]["text"] == "region eu"
        wrong: dict[str, dict[str, str]] = {
            "method": {"Mcp-Method": "tools/list"},
            "name": {"Mcp-Name": "routed__other"},
            "param": {"Mcp-Param-Region": "us"},
        }
        for case, headers in wrong.items():
            refused = await http.post(
                "/mcp", json=body, headers={**good, **headers, "Accept": "application/json"}
            )
            assert refused.status_code == 400, (case, refused.text)
            assert refused.json()["error"]["code"] == -32020, (case, refused.text)
        missing = {name: value for name, value in good.items() if name != "Mcp-Name"}
        refused = await http.post("/mcp", json=body, headers={**missing, "Accept": "application/json"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == -32020, refused.text
