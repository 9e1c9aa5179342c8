"""Rate-limit findings of the security review (SECURITY.md, "One agent against the others"):
opening a session is charged and capped per agent, and every request an agent makes is charged
(`ping`, lists, `logging/setLevel` included: against the allowance for cheap requests, ten times
the agent's limit). In process: the real ASGI app and its lifespan.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest
from mcp import MCPError

from agent_mcp_gateway.access.credentials import token_hash

from conftest import ACCEPT_BOTH, GatewayFiles, asgi_gateway, eventually, fixture_server, initialize_message

DEV, OPS = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
INIT = initialize_message("limits")


def configure(files: GatewayFiles, **dev: Any) -> None:
    files.write_servers({"echo": fixture_server("echo")})
    files.write_rules(
        {
            "agents": {
                "dev": {"allow": {"servers": ["echo"]}, "tokens": [token_hash(DEV)], **dev},
                "ops": {"allow": {"servers": ["echo"]}, "tokens": [token_hash(OPS)]},
            }
        }
    )


def bearer(token: str) -> dict[str, str]:
    return {**ACCEPT_BOTH, "Authorization": f"Bearer {token}"}


async def initialize(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/mcp", json=INIT, headers=bearer(token))


async def session(http: httpx.AsyncClient, token: str) -> dict[str, str]:
    opened = await initialize(http, token)
    assert opened.status_code == 200, opened.text
    headers = {**bearer(token), "mcp-session-id": opened.headers["mcp-session-id"]}
    headers["mcp-protocol-version"] = "2025-11-25"
    await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


def rate_limited(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    error = body["error"]
    assert error["code"] == -32005 and error["data"]["code"] == "RATE_LIMITED", body
    return error["data"]  # type: ignore[no-any-return]


async def test_an_agent_holds_at_most_its_max_sessions(gateway_files: GatewayFiles) -> None:
    configure(gateway_files, max_sessions=3)
    async with asgi_gateway(gateway_files) as served, served.http() as http:
        opened = [await session(http, DEV) for _ in range(3)]
        refused = await initialize(http, DEV)
        assert refused.status_code == 429 and "mcp-session-id" not in refused.headers
        assert rate_limited(refused)["limit"] == "3 open sessions" and refused.headers["retry-after"] == "60"
        assert (await initialize(http, OPS)).status_code == 200  # another agent is not affected
        assert (await http.delete("/mcp", headers=opened[0])).status_code in (200, 204)
        assert (await initialize(http, DEV)).status_code == 200
        # Audit lines reach the file from a writer thread: wait for the refusal's.
        refusals = await eventually(
            lambda: [line for line in gateway_files.audit_lines() if line["operation"] == "initialize"]
        )
        assert [(line["agent_id"], line["error_code"]) for line in refusals] == [("dev", "RATE_LIMITED")]


async def test_the_default_session_cap_is_a_setting(gateway_files: GatewayFiles) -> None:
    configure(gateway_files)
    async with (
        asgi_gateway(gateway_files, GATEWAY_MAX_SESSIONS_PER_AGENT="2") as served,
        served.http() as http,
    ):
        for _ in range(2):
            await session(http, DEV)
        assert (await initialize(http, DEV)).status_code == 429


async def test_opening_a_session_is_charged(gateway_files: GatewayFiles) -> None:
    configure(gateway_files, rate_limit="2/minute")
    async with asgi_gateway(gateway_files) as served, served.http() as http:
        assert (await initialize(http, DEV)).status_code == 200
        assert (await initialize(http, DEV)).status_code == 200
        refused = await initialize(http, DEV)
        assert refused.status_code == 429 and rate_limited(refused)["limit"] == "2/minute"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ping", None),
        ("tools/list", None),
        ("prompts/list", None),
        ("resources/list", None),
        ("logging/setLevel", {"level": "debug"}),
    ],
)
async def test_every_request_is_charged(gateway_files: GatewayFiles, method: str, params: Any) -> None:
    configure(gateway_files, rate_limit="1/minute")  # cheap requests: 10 a minute
    async with asgi_gateway(gateway_files) as served, served.http() as http:
        headers = await session(http, DEV)  # the initialize: the one full charge
        answers = []
        for request_id in range(11):
            message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
            if params is not None:
                message["params"] = params
            answers.append(answer_of(await http.post("/mcp", json=message, headers=headers)))
        assert all("result" in answer for answer in answers[:10]), answers
        refused = rate_limited_answer(answers[10])
        assert refused["agent_id"] == "dev" and refused["limit"] == "10 per 1 minute"


MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "limits", "version": "1"},
}


@pytest.mark.parametrize("method", ["server/discover", "tools/list", "resources/list"])
async def test_every_stateless_request_is_charged(gateway_files: GatewayFiles, method: str) -> None:
    """2026-07-28 has no session to open: each request, `server/discover` included, is charged
    against the allowance for cheap requests, so discovery cannot be sent without limit."""
    configure(gateway_files, rate_limit="1/minute")  # cheap requests: 10 a minute
    headers = {**bearer(DEV), "mcp-protocol-version": MODERN, "mcp-method": method}
    async with asgi_gateway(gateway_files) as served, served.http() as http:
        answers = []
        for request_id in range(11):
            message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {"_meta": MODERN_META}}
            answers.append(answer_of(await http.post("/mcp", json=message, headers=headers)))
        assert all("result" in answer for answer in answers[:10]), answers
        refused = rate_limited_answer(answers[10])
        assert refused["agent_id"] == "dev" and refused["limit"] == "10 per 1 minute"
        # Another agent's allowance is its own.
        other = {**headers, "Authorization": f"Bearer {OPS}"}
        message = {"jsonrpc": "2.0", "id": 99, "method": method, "params": {"_meta": MODERN_META}}
        assert "result" in answer_of(await http.post("/mcp", json=message, headers=other))


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer, from a JSON body or the event stream it came on."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return json.loads(line[5:])  # type: ignore[no-any-return]
        raise AssertionError(f"no answer in {response.text!r}")
    return response.json()  # type: ignore[no-any-return]


def rate_limited_answer(answer: dict[str, Any]) -> dict[str, Any]:
    error = answer["error"]
    assert error["code"] == -32005 and error["data"]["code"] == "RATE_LIMITED", answer
    return error["data"]  # type: ignore[no-any-return]


async def test_an_agent_holds_at_most_its_subscriptions_on_a_server(gateway_files: GatewayFiles) -> None:
    """One agent's subscriptions are capped per server (they are renewed after every reconnect:
    thousands of them once held a shared server from reconnecting)."""
    # resources/subscribe: the handshake era's (fastmcp 4.1.2 serves no subscriptions/listen).
    gateway_files.write_servers({"studio": fixture_server("studio", prefix="st", protocol="2025-11-25")})
    gateway_files.write_rules({"agents": {"ide": {"view": "aggregate", "allow": {"servers": ["*"]}}}})
    async with (
        asgi_gateway(gateway_files, GATEWAY_MAX_SUBSCRIPTIONS="3") as served,
        served.client("legacy", headers={"X-Agent-Id": "ide"}) as ide,
    ):
        for name in ("a", "b", "c"):
            await ide.session.subscribe_resource(f"note://{name}")
        await ide.session.subscribe_resource("note://a")  # already held: no more than before
        with pytest.raises(MCPError) as refused:
            await ide.session.subscribe_resource("note://d")
        assert (
            refused.value.code == -32005
            and refused.value.data["limit"] == "3 subscriptions on server 'studio'"
        )
        await ide.session.unsubscribe_resource("note://a")
        await ide.session.subscribe_resource("note://d")
