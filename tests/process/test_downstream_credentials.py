"""Per-agent credentials: each agent reaches a protected HTTP downstream as itself.

A real gateway process, a real protected MCP server (tests/servers/protected.py, fastmcp's
token verification) whose `whoami` tool reports the bearer token's subject. The agents' tokens
come from the environment and from a mounted secret file; none of them may show anywhere the
gateway writes or answers.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError

from conftest import (
    PY,
    SERVERS,
    GatewayFiles,
    HttpGateway,
    free_port,
    new_gateway_files,
    start_http_gateway,
    wait_for_port,
    wait_until,
)

SERVER_TOKEN = "server-token-" + secrets.token_hex(12)
ALPHA_TOKEN = "alpha-token-" + secrets.token_hex(12)
BETA_TOKEN = "beta-token-" + secrets.token_hex(12)
BETA_ROTATED = "beta-rotated-" + secrets.token_hex(12)
SECRETS = (SERVER_TOKEN, ALPHA_TOKEN, BETA_TOKEN, BETA_ROTATED)


def _claims(subject: str) -> dict[str, Any]:
    return {"client_id": f"{subject}-client", "sub": subject, "scopes": ["mcp"]}


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The protected server, knowing each token's subject: its URL."""
    tokens = tmp_path_factory.mktemp("protected") / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                SERVER_TOKEN: _claims("gateway"),
                ALPHA_TOKEN: _claims("alpha"),
                BETA_TOKEN: _claims("beta"),
                BETA_ROTATED: _claims("beta-rotated"),
            }
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [PY, str(SERVERS / "protected.py"), "--http", str(port), "--tokens", str(tokens)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, what="the protected fixture server")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(30)


def rules() -> dict[str, Any]:
    agents: dict[str, Any] = {
        "alpha": {
            "credentials": {
                server: {"headers": {"Authorization": "Bearer ${ALPHA_TOKEN}"}}
                for server in ("remote", "strict")
            }
        },
        "beta": {
            "credentials": {
                server: {"headers": {"Authorization": "Bearer ${file:beta.token}"}}
                for server in ("remote", "strict")
            }
        },
        "gamma": {},
    }
    for agent in agents.values():
        agent["allow"] = {"servers": ["*"]}
    return {"agents": agents}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, protected: str) -> Iterator[HttpGateway]:
    files = new_gateway_files(tmp_path_factory.mktemp("credentials"))
    files.write_servers(
        {
            # Caller-agnostic by its isolation: agents with credentials still get sessions of their own.
            "remote": {
                "url": protected,
                "headers": {"Authorization": "Bearer ${SERVER_TOKEN}"},
                "isolation": "shared",
            },
            "strict": {"url": protected, "credentials": "per-agent"},
        }
    )
    (files.directory / "beta.token").write_text(BETA_TOKEN + "\n")
    files.write_rules(rules())
    started = start_http_gateway(
        files, SERVER_TOKEN=SERVER_TOKEN, ALPHA_TOKEN=ALPHA_TOKEN, GATEWAY_LOG_LEVEL="DEBUG"
    )
    yield started
    started.stop()


def client(gateway: HttpGateway) -> Client:
    return Client(StreamableHttpTransport(gateway.mcp_url), timeout=60)


async def execute(gateway: HttpGateway, agent: str, server: str, tool: str) -> Any:
    async with client(gateway) as session:
        result = await session.call_tool_mcp(
            "execute_tool", {"agent_id": agent, "server": server, "tool": tool, "args": {}}
        )
    assert not result.is_error, result.content
    return result.structured_content


async def test_each_agent_reaches_the_server_as_itself(gateway: HttpGateway) -> None:
    assert (await execute(gateway, "alpha", "remote", "whoami"))["subject"] == "alpha"
    assert (await execute(gateway, "beta", "remote", "whoami"))["subject"] == "beta"
    # An agent without credentials of its own uses the server's headers (its shared session).
    assert (await execute(gateway, "gamma", "remote", "whoami"))["subject"] == "gateway"
    assert (await execute(gateway, "alpha", "strict", "whoami"))["subject"] == "alpha"


async def test_a_per_agent_server_refuses_an_agent_without_credentials(gateway: HttpGateway) -> None:
    async with client(gateway) as session:
        with pytest.raises(MCPError) as caught:
            await session.call_tool_mcp(
                "execute_tool", {"agent_id": "gamma", "server": "strict", "tool": "whoami", "args": {}}
            )
        listed = await session.call_tool_mcp("get_server_tools", {"agent_id": "beta", "server": "strict"})
    assert caught.value.code == -32001
    assert "per-agent credentials" in caught.value.message or "per-agent" in json.dumps(caught.value.data)
    assert "agents.gamma.credentials.strict" in json.dumps(caught.value.data)
    # An agent with credentials lists the per-agent server's tools through its own session.
    assert {tool["name"] for tool in listed.structured_content["tools"]} == {"whoami", "admin_action"}


async def test_a_rotated_secret_file_takes_effect_on_reload(gateway: HttpGateway) -> None:
    assert (await execute(gateway, "beta", "remote", "whoami"))["subject"] == "beta"
    (gateway.files.directory / "beta.token").write_text(BETA_ROTATED + "\n")
    reloads = gateway.log_text().count("configuration reloaded")
    gateway.files.write_rules(rules())  # any save of the rules file reloads, reading the secret again
    assert wait_until(lambda: gateway.log_text().count("configuration reloaded") > reloads), (
        gateway.log_text()
    )
    assert (await execute(gateway, "beta", "remote", "whoami"))["subject"] == "beta-rotated"
    assert (await execute(gateway, "alpha", "remote", "whoami"))["subject"] == "alpha"


async def test_no_credential_shows_in_logs_audit_metrics_or_answers(gateway: HttpGateway) -> None:
    """Run last in this module: it greps everything the gateway wrote and answered."""
    async with client(gateway) as session:
        listed = await session.call_tool_mcp("list_servers", {"agent_id": "alpha", "include_metadata": True})
        with pytest.raises(MCPError) as caught:
            await session.call_tool_mcp(
                "execute_tool", {"agent_id": "gamma", "server": "strict", "tool": "whoami", "args": {}}
            )
    with httpx.Client(base_url=gateway.base_url, timeout=30) as http:
        answered = (
            http.get("/metrics").text
            + json.dumps(http.get("/metrics?format=json").json())
            + http.get("/ready").text
        )
    answered += json.dumps(listed.structured_content) + str(caught.value) + json.dumps(caught.value.data)
    files: GatewayFiles = gateway.files
    written = gateway.log_text() + "".join(
        path.read_text(errors="replace") for path in files.audit.parent.glob("audit.jsonl*")
    )
    assert "whoami" in written  # the audit lines are there to grep
    for secret in SECRETS:
        assert secret not in written
        assert secret not in answered
