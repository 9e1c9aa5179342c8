"""The gateway tools as plain methods: no MCP layer, no middleware, a real downstream process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agent_mcp_gateway.config import load
from agent_mcp_gateway.errors import DeniedByPolicy, ServerUnavailable
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.operation import Operation
from agent_mcp_gateway.server.discovery import GatewayTools
from agent_mcp_gateway.settings import load_settings

from conftest import fixture_server, held_open


@asynccontextmanager
async def started(gateway: Gateway) -> AsyncIterator[Gateway]:
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


@pytest.fixture(scope="module")
async def tools(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayTools]:
    """One gateway for the module: every test only reads or calls (the echo fixture, and a remote
    server that is never reached)."""
    tmp_path = tmp_path_factory.mktemp("tools")
    servers, rules = tmp_path / "servers.json", tmp_path / "rules.json"
    servers.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "echo": fixture_server("echo"),
                    "remote": {
                        "url": "https://user:hunter2@mcp.example:8443/s/SK-live-123/mcp;jsessionid=j5?api_key=s3cret#frag",
                        "headers": {"X-Api-Key": "s3cret", "Authorization": "Bearer s3cret"},
                    },
                }
            }
        )
    )
    rules.write_text(
        json.dumps(
            {
                "agents": {
                    "builder": {"allow": {"servers": ["*"]}, "deny": {"tools": {"echo": ["drop_*"]}}},
                    "reader": {"allow": {"servers": ["echo"], "tools": {"echo": ["get_*", "echo"]}}},
                }
            }
        )
    )
    gateway = Gateway(
        load(servers, rules), load_settings({"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl")})
    )
    async with held_open(started(gateway)):
        yield GatewayTools(gateway)


def op(agent: str, name: str = "execute_tool") -> Operation:
    return Operation(name, "request-1", agent_id=agent)


async def test_execute_tool_returns_the_downstream_result_and_names_the_rule(tools: GatewayTools) -> None:
    operation = op("builder")
    result = await tools.execute_tool(operation, "echo", "echo", {"text": "plain call"})
    assert result.content[0].text == "plain call"
    assert operation.rule == "agents.builder.allow.servers[0]"
    assert (operation.server, operation.tool) == ("echo", "echo")


async def test_execute_tool_denied_before_the_downstream_is_asked(tools: GatewayTools) -> None:
    operation = op("builder")
    with pytest.raises(DeniedByPolicy) as denied:
        await tools.execute_tool(operation, "echo", "drop_table", {"table": "users"})
    assert denied.value.fields["rule"] == "agents.builder.deny.tools.echo[0]"


async def test_get_server_tools_filters_by_policy_then_by_request(tools: GatewayTools) -> None:
    listed = await tools.get_server_tools(op("reader", "get_server_tools"), "echo")
    names = {tool["name"] for tool in listed["tools"]}
    assert names == {"echo", "get_user_all", "get_user_one"}
    assert listed["total_available"] == 3
    narrowed = await tools.get_server_tools(
        op("reader", "get_server_tools"), "echo", pattern="get_*", names="get_user_one"
    )
    assert [tool["name"] for tool in narrowed["tools"]] == ["get_user_one"]
    budget = await tools.get_server_tools(op("builder", "get_server_tools"), "echo", max_schema_tokens=1)
    assert budget["returned"] == 0 and budget["tokens_used"] == 0


async def test_list_servers_metadata_shows_no_secret(tools: GatewayTools) -> None:
    listed = tools.list_servers(op("builder", "list_servers"), include_metadata=True)
    by_name = {server["name"]: server for server in listed["servers"]}
    assert by_name["remote"]["url"] == "https://mcp.example:8443"
    assert by_name["remote"]["headers"] == ["Authorization", "X-Api-Key"]
    shown = json.dumps(listed)
    assert not any(secret in shown for secret in ("s3cret", "hunter2", "SK-live-123", "jsessionid"))
    assert by_name["echo"]["command"].endswith("python") or "python" in by_name["echo"]["command"]
    assert "args" not in by_name["echo"]
    assert [server["name"] for server in tools.list_servers(op("reader", "list_servers"))["servers"]] == [
        "echo"
    ]


async def test_unconfigured_server_is_unavailable(tools: GatewayTools) -> None:
    with pytest.raises(ServerUnavailable):
        await tools.execute_tool(op("builder"), "ghost", "echo", {})
