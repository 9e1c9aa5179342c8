"""The aggregate view: an agent's allowed downstream tools, prompts and resources as the
gateway's own, over HTTP (both protocol eras) in process, with live list_changed, relayed
elicitation/sampling/roots and cancellation; against real fixture servers over stdio. The view
over a stdio gateway process is in tests/process/test_aggregate_stdio.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import mcp_types as mt
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import MCPError

from agent_mcp_gateway.config import ConfigError, load_mcp_config

from conftest import (
    PY,
    SERVERS,
    WAIT_SECONDS,
    AsgiGateway,
    GatewayFiles,
    Heard,
    answering,
    asgi_gateway,
    eventually,
    fixture_server,
    memory_gateway,
    new_gateway_files,
    served_over_http,
)

T = TypeVar("T")
DISCOVERY_TOOLS = {"list_servers", "search_tools", "get_server_tools", "execute_tool"}
ERAS = ["legacy", "auto"]  # auto negotiates 2026-07-28 with the gateway
HANDSHAKE = "2025-11-25"  # a downstream's `protocol` for what only the handshake era has

RULES: dict[str, Any] = {
    "agents": {
        "ide": {
            "view": "aggregate",
            "allow": {"servers": ["*"]},
            "deny": {"tools": {"echo": ["fail"]}},
        },
        "narrow": {"view": "aggregate", "allow": {"servers": ["echo"], "tools": {"echo": ["echo", "add"]}}},
        "open": {"view": "aggregate", "allow": {"servers": ["echo"]}},
        "classic": {"allow": {"servers": ["*"]}},
    }
}


def write_config(
    files: GatewayFiles, studio_url: str | None = None, studio_protocol: str = "auto", **extra: dict[str, Any]
) -> None:
    """The echo and studio fixtures; the studio over HTTP when its URL is given."""
    studio = (
        {"description": "studio over HTTP", "url": studio_url, "prefix": "st"}
        if studio_url
        else fixture_server("studio", prefix="st")
    )
    studio["protocol"] = studio_protocol
    files.write_servers({"echo": fixture_server("echo"), "studio": studio, **extra})
    files.write_rules(RULES)


# Most tests only open sessions and call, so they share a gateway per module (and its agents'
# downstream processes, each a Python interpreter started once instead of once per test); audit
# checks look at the lines a test added. Tests that change configuration or the downstream
# servers' state start their own.
# The shared gateways speak the handshake era to the studio: its requests during a call and its
# resource subscriptions are that era's (fastmcp 4.1.2 serves no subscriptions/listen); the
# 2026-07-28 downstream paths are tests/inprocess/test_downstream_eras.py's and test_mrtr.py's.


@asynccontextmanager
async def shared_gateway(files: GatewayFiles) -> AsyncIterator[AsgiGateway]:
    """`asgi_gateway` once every downstream server has been tried, so no test of the module
    sees a server connect late (which changes the views by itself)."""
    async with asgi_gateway(files) as service:
        assert await eventually(lambda: service.gateway.ready, 30), "downstream servers did not start"
        yield service


@pytest.fixture(scope="module")
async def aggregate(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsgiGateway]:
    """The echo, studio and routed fixtures over stdio behind one gateway for the module."""
    files = new_gateway_files(tmp_path_factory.mktemp("aggregate"))
    write_config(files, studio_protocol=HANDSHAKE, routed=fixture_server("routed"))
    async with shared_gateway(files) as service:
        yield service


@pytest.fixture(scope="module")
async def aggregate_studio_http(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsgiGateway]:
    """As `aggregate`, with the studio fixture a process of its own speaking Streamable HTTP."""
    files = new_gateway_files(tmp_path_factory.mktemp("aggregate-http"))
    with served_over_http("studio") as url:
        write_config(files, url, studio_protocol=HANDSHAKE)
        async with shared_gateway(files) as service:
            yield service


@pytest.fixture(params=["stdio", "http"])
def studio_reached(request: pytest.FixtureRequest) -> AsgiGateway:
    """A shared gateway reaching the studio fixture over stdio or over Streamable HTTP."""
    name = "aggregate" if request.param == "stdio" else "aggregate_studio_http"
    gateway: AsgiGateway = request.getfixturevalue(name)
    return gateway


async def poll(read: Callable[[], Awaitable[T]], until: Callable[[T], bool] = bool) -> T:
    """`read()` again until `until` holds of its value, for up to `WAIT_SECONDS`: the last value."""
    deadline = time.monotonic() + WAIT_SECONDS
    value = await read()
    while not until(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.25)  # a poll may be charged to the rate limit (600/minute)
        value = await read()
    return value


def audited_since(files: GatewayFiles, mark: int) -> list[dict[str, Any]]:
    """The audit lines written after the first `mark` (what this test did on a shared gateway)."""
    return files.audit_lines()[mark:]


def as_agent(agent: str) -> dict[str, str]:
    return {"X-Agent-Id": agent}


async def names(client: Client) -> tuple[set[str], set[str], set[str], set[str]]:
    tools = {tool.name for tool in await client.list_tools()}
    prompts = {prompt.name for prompt in await client.list_prompts()}
    resources = {str(resource.uri) for resource in await client.list_resources()}
    templates = {template.uri_template for template in await client.list_resource_templates()}
    return tools, prompts, resources, templates


@pytest.mark.parametrize("mode", ERAS)
async def test_each_agent_sees_its_own_view_over_http(aggregate: AsgiGateway, mode: str) -> None:
    async with aggregate.client(mode, headers=as_agent("ide")) as ide:
        # listChanged in both eras: 2026-07-28 clients hear it on subscriptions/listen.
        capabilities = ide.server_capabilities
        assert capabilities is not None and capabilities.tools is not None
        assert capabilities.tools.list_changed is True
        tools, prompts, resources, templates = await names(ide)
        assert {"echo__echo", "echo__add", "st__hello", "st__ask_colour", "st__wait"} <= tools
        assert "echo__fail" not in tools and not tools & DISCOVERY_TOOLS
        assert prompts == {"st__review"}
        assert resources == {"note://readme", "note://cancelled", "note://waiting"}
        assert templates == {"note://{name}"}
    async with aggregate.client(mode, headers=as_agent("narrow")) as narrow:
        assert await names(narrow) == ({"echo__echo", "echo__add"}, set(), set(), set())
    async with aggregate.client(mode, headers=as_agent("classic")) as classic:
        tools, prompts, resources, _ = await names(classic)
        assert tools == DISCOVERY_TOOLS and not prompts and not resources


async def test_definitions_reach_the_client_unchanged(aggregate: AsgiGateway) -> None:
    async with Client(SERVERS / "studio.py") as direct:
        expected = {tool.name: tool for tool in await direct.list_tools()}
    async with aggregate.client(headers=as_agent("ide")) as ide:
        listed = {tool.name: tool for tool in await ide.list_tools()}
    for name, tool in expected.items():
        relayed = listed[f"st__{name}"]
        assert relayed.description == tool.description
        assert relayed.input_schema == tool.input_schema
        assert relayed.output_schema == tool.output_schema
        assert relayed.annotations == tool.annotations
    assert listed["st__hello"].annotations is not None and listed["st__hello"].annotations.read_only_hint


@pytest.mark.parametrize("mode", ERAS)
async def test_calls_prompts_and_reads_route_to_their_server(aggregate: AsgiGateway, mode: str) -> None:
    mark = len(aggregate.files.audit_lines())
    async with aggregate.client(mode, headers=as_agent("ide")) as ide:
        assert (await ide.call_tool("echo__echo", {"text": "hi"})).data == "hi"
        assert (await ide.call_tool("st__hello", {"name": "ada"})).data == "hello ada"
        prompt = await ide.get_prompt("st__review", {"subject": "the gateway"})
        assert prompt.messages[0].content == mt.TextContent(type="text", text="Please review the gateway.")
        readme = await ide.read_resource("note://readme")
        assert readme[0].text == "studio read-me"  # type: ignore[union-attr]
        note = await ide.read_resource("note://abc")
        assert note[0].text == "note abc"  # type: ignore[union-attr]

    def routed() -> set[tuple[str, str, str]]:
        lines = audited_since(aggregate.files, mark)
        return {
            (line["operation"], line["server"], line["tool"]) for line in lines if line["agent_id"] == "ide"
        }

    expected = {
        ("tools/call", "echo", "echo"),
        ("tools/call", "studio", "hello"),
        ("prompts/get", "studio", "review"),
        ("resources/read", "studio", "note://abc"),
    }
    await eventually(lambda: expected <= routed())
    assert expected <= routed(), routed()


@pytest.mark.parametrize("mode", ERAS)
async def test_denied_names_are_reported_as_unknown(aggregate: AsgiGateway, mode: str) -> None:
    mark = len(aggregate.files.audit_lines())
    async with aggregate.client(mode, headers=as_agent("narrow")) as narrow:
        errors = {}
        for name in ("st__hello", "echo__structured", "nothing__here", "list_servers"):
            with pytest.raises(MCPError) as caught:
                await narrow.call_tool_mcp(name, {})
            errors[name] = (caught.value.code, caught.value.message.replace(repr(name), "NAME"))
        assert set(errors.values()) == {(-32602, "Unknown tool: NAME")}
        with pytest.raises(MCPError) as prompt:
            await narrow.get_prompt("st__review", {"subject": "x"})
        assert prompt.value.message == "Unknown prompt: 'st__review'"
        with pytest.raises(MCPError) as resource:
            await narrow.read_resource("note://readme")
        assert resource.value.code == -32602  # SEP-2164: as for a URI nobody lists
    async with aggregate.client(mode, headers=as_agent("ide")) as ide:
        with pytest.raises(MCPError, match="Unknown tool: 'echo__fail'"):
            await ide.call_tool_mcp("echo__fail", {"message": "x"})

    def denied() -> set[tuple[str, str, str, str]]:
        lines = audited_since(aggregate.files, mark)
        return {
            (line["agent_id"], line["server"], line["tool"], line["rule"])
            for line in lines
            if line["decision"] == "DENY"
        }

    expected = {
        ("narrow", "studio", "hello", "default-deny"),
        ("narrow", "echo", "structured", "agents.narrow.allow.tools.echo"),
        ("ide", "echo", "fail", "agents.ide.deny.tools.echo[0]"),
    }
    await eventually(lambda: expected <= denied())
    assert expected <= denied(), denied()


@pytest.mark.parametrize("mode", ERAS)
async def test_unknown_names_get_one_error_in_both_views(gateway_files: GatewayFiles, mode: str) -> None:
    """An unknown tool or resource is a -32602 error in both views and both eras (the 2026-07-28
    specification's codes: never an isError result, never the retired -32002)."""
    write_config(gateway_files)
    async with asgi_gateway(gateway_files) as service:
        answers = set()
        for agent in ("narrow", "classic"):
            async with service.client(mode, headers=as_agent(agent)) as client:
                with pytest.raises(MCPError) as tool:
                    await client.call_tool_mcp("nothing__here", {})
                with pytest.raises(MCPError) as resource:
                    await client.read_resource_mcp("note://nowhere")
                answers.add((tool.value.code, tool.value.message, resource.value.code))
        assert answers == {(-32602, "Unknown tool: 'nothing__here'", -32602)}


async def test_list_changed_reaches_only_the_sessions_whose_view_changed(gateway_files: GatewayFiles) -> None:
    write_config(gateway_files, changing=fixture_server("list_changing"))
    ide_seen, narrow_seen = Heard(), Heard()
    async with (
        asgi_gateway(gateway_files) as service,
        service.client(headers=as_agent("ide"), message_handler=ide_seen) as ide,
        service.client(headers=as_agent("narrow"), message_handler=narrow_seen) as narrow,
    ):
        # Every server up first: a server that connects late changes the views by itself.
        await eventually(lambda: all(server.state == "up" for server in service.gateway.pool), timeout=30)
        await ide.list_tools()
        await narrow.list_tools()
        ide_seen.events.clear()
        await ide.call_tool("changing__add_tool", {"name": "fresh"})
        await eventually(lambda: "notifications/tools/list_changed" in ide_seen.events, timeout=5)
        assert "changing__fresh" in {tool.name for tool in await ide.list_tools()}
        assert (await ide.call_tool("changing__fresh", {})).data == "fresh"
        await asyncio.sleep(0.5)
        assert narrow_seen.events == []

        # A rules reload that changes narrow's view tells narrow, and not ide.
        before = len(ide_seen.events)
        rules = json.loads(json.dumps(RULES))
        rules["agents"]["narrow"]["allow"]["tools"]["echo"].append("structured")
        gateway_files.write_rules(rules)
        assert await service.gateway.reload("test")
        await eventually(lambda: "notifications/tools/list_changed" in narrow_seen.events, timeout=5)
        assert "echo__structured" in {tool.name for tool in await narrow.list_tools()}
        await asyncio.sleep(0.5)
        assert len(ide_seen.events) == before


async def test_get_server_tools_answers_from_the_refreshed_cache(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"changing": fixture_server("list_changing")})
    gateway_files.write_rules({"agents": {"classic": {"allow": {"servers": ["*"]}}}})
    async with memory_gateway(gateway_files) as gateway, gateway.client() as client:
        await client.call_tool(
            "execute_tool",
            {"agent_id": "classic", "server": "changing", "tool": "add_tool", "args": {"name": "x1"}},
        )

        async def listed() -> set[str]:
            result = await client.call_tool("get_server_tools", {"agent_id": "classic", "server": "changing"})
            return {tool["name"] for tool in result.structured_content["tools"]}  # type: ignore[index]

        assert "x1" in await poll(listed, until=lambda now: "x1" in now)


async def test_server_requests_go_to_the_calling_client_only(studio_reached: AsgiGateway) -> None:
    service = studio_reached
    caller_calls: list[str] = []
    bystander_calls: list[str] = []
    caller_answers = answering("blue", caller_calls, "short (blue)")
    bystander_answers = answering("red", bystander_calls, "short (red)")
    async with (
        service.client("legacy", headers=as_agent("ide"), **caller_answers) as caller,
        service.client("legacy", headers=as_agent("ide"), **bystander_answers) as bystander,
    ):
        await bystander.list_tools()
        # One call at a time: a stdio server's request names no call, so on ide's own session the
        # gateway relays it to ide's only waiting call (else to ide's client outside a call).
        assert (await caller.call_tool("st__ask_colour", {})).data == "colour blue"
        assert (await caller.call_tool("st__summarise", {"text": "long"})).data == "summary short (blue)"
        assert (await caller.call_tool("st__client_roots", {})).data == ["file:///blue"]
        # The discovery view relays the same way.
        classic_calls: list[str] = []
        async with service.client(
            "legacy", headers=as_agent("classic"), **answering("green", classic_calls, "short (green)")
        ) as c:
            result = await c.call_tool("execute_tool", {"server": "studio", "tool": "ask_colour"})
            assert result.structured_content == {"result": "colour green"} or "colour green" in str(
                result.content
            )
    assert sorted(caller_calls) == ["elicitation", "roots", "sampling"]
    assert bystander_calls == [] and classic_calls == ["elicitation"]


async def test_a_client_without_the_capability_gets_a_clean_refusal(studio_reached: AsgiGateway) -> None:
    async with studio_reached.client("legacy", headers=as_agent("ide")) as ide:
        result = await ide.call_tool_mcp("st__ask_colour", {})
        assert result.is_error
        assert (await ide.call_tool("echo__echo", {"text": "still fine"})).data == "still fine"


async def test_cancelling_a_call_cancels_it_downstream(studio_reached: AsgiGateway) -> None:
    async with studio_reached.client("legacy", headers=as_agent("ide")) as ide:

        async def studio_list(uri: str) -> list[float]:
            contents = await ide.read_resource(uri)
            return json.loads(contents[0].text)  # type: ignore[union-attr]

        before = await studio_list("note://cancelled")  # ide's own studio session, shared by the module
        call = asyncio.create_task(ide.call_tool("st__wait", {"seconds": 30}))
        running = await poll(lambda: studio_list("note://waiting"))
        assert running == [30], "the call did not reach the studio fixture"
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        cancelled = await poll(lambda: studio_list("note://cancelled"), until=lambda now: now != before)
        assert cancelled == [*before, 30]
        assert await studio_list("note://waiting") == []


def test_prefix_collisions_are_configuration_errors(tmp_path: Any) -> None:
    path = tmp_path / ".mcp.json"
    path.write_text(json.dumps({"mcpServers": {"a": {"command": PY, "prefix": "x"}, "x": {"command": PY}}}))
    with pytest.raises(ConfigError, match="servers 'a' and 'x' both name their tools with the prefix 'x'"):
        load_mcp_config(path)
    path.write_text(json.dumps({"mcpServers": {"a": {"command": PY, "prefix": "b__c"}}}))
    with pytest.raises(ConfigError, match="must not contain '__'"):
        load_mcp_config(path)


async def test_a_tool_error_result_passes_through(aggregate: AsgiGateway) -> None:
    async with aggregate.client(headers=as_agent("open")) as client:
        with pytest.raises(ToolError, match="boom"):
            await client.call_tool("echo__fail", {"message": "boom"})


async def test_resource_updates_reach_subscribed_sessions_only(aggregate: AsgiGateway) -> None:
    subscribed, bystander = Heard(), Heard()
    async with (
        aggregate.client("legacy", headers=as_agent("ide"), message_handler=subscribed) as ide,
        aggregate.client("legacy", headers=as_agent("ide"), message_handler=bystander) as other,
        aggregate.client("legacy", headers=as_agent("narrow")) as narrow,
    ):
        capabilities = ide.server_capabilities
        assert capabilities is not None and capabilities.resources is not None
        assert capabilities.resources.subscribe
        await ide.session.subscribe_resource("note://readme")
        with pytest.raises(MCPError) as refused:
            await narrow.session.subscribe_resource("note://readme")
        assert refused.value.code == -32602  # not narrow's server: as unknown as a missing URI
        await other.list_tools()
        await ide.call_tool("st__touch", {"uri": "note://readme"})
        await eventually(lambda: "notifications/resources/updated" in subscribed.events, timeout=5)
        await ide.session.unsubscribe_resource("note://readme")
        await ide.call_tool("st__touch", {"uri": "note://readme"})
        await asyncio.sleep(0.5)
        assert subscribed.events.count("notifications/resources/updated") == 1
        assert "notifications/resources/updated" not in bystander.events


MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
}


async def test_mcp_param_headers_are_checked_against_the_callers_view(aggregate: AsgiGateway) -> None:
    """A 2026-07-28 call's `Mcp-Param-*` headers are checked against the tool's schema as the
    caller's view shows it (the gateway answers the SDK's lookup), and a tool outside the view
    stays unknown: a mismatched header does not reveal it."""

    async def call(agent: str, header: str) -> tuple[int, dict[str, Any]]:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "routed__lookup", "arguments": {"region": "eu"}, "_meta": MODERN_META},
        }
        headers = {
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "routed__lookup",
            "Mcp-Param-Region": header,
            **as_agent(agent),
        }
        response = await http.post("/mcp", json=body, headers=headers)
        text = response.text
        payload = text.split("data: ", 1)[1] if text.startswith(("event:", "id:", "data:")) else text
        return response.status_code, json.loads(payload)

    async with aggregate.http() as http:
        status, answer = await call("ide", "eu")
        assert status == 200 and answer["result"]["content"][0]["text"] == "region eu", answer
        status, answer = await call("ide", "us")
        assert status == 400 and "Mcp-Param-Region" in answer["error"]["message"], answer
        status, answer = await call("narrow", "us")  # narrow's view has echo's tools only
        assert answer["error"]["message"] == "Unknown tool: 'routed__lookup'", (status, answer)
