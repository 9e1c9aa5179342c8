"""The HTTP service: a real Granian process on a free loopback port, real downstream servers."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import httpx
import pytest
from conftest import (
    STANDARD_RULES,
    GatewayFiles,
    HttpGateway,
    fixture_server,
    free_port,
    process_alive,
    start_http_gateway,
    time_server,
    wait_until,
)
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError
from prometheus_client.parser import text_string_to_metric_families

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "1.0.0"},
    },
}
BOTH = {"Accept": "application/json, text/event-stream"}


@pytest.fixture
def configured(gateway_files: GatewayFiles) -> GatewayFiles:
    gateway_files.write_servers(
        {
            "echo": fixture_server("echo"),
            "slow": fixture_server("slow"),
            "time": time_server(),
            "progress": fixture_server("progress"),
        }
    )
    rules = json.loads(json.dumps(STANDARD_RULES))
    rules["agents"]["limited"] = {"allow": {"servers": ["echo"]}, "rate_limit": "5/minute"}
    gateway_files.write_rules(rules)
    return gateway_files


@pytest.fixture
def gateway(configured: GatewayFiles, http_gateway_factory: Any) -> HttpGateway:
    return http_gateway_factory(GATEWAY_SESSION_TTL="3")


def initialize(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> str:
    response = client.post(url, json=INIT, headers={**BOTH, **(headers or {})})
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    client.post(
        url,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={**BOTH, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"},
    )
    return session_id


def session_headers(session_id: str) -> dict[str, str]:
    return {**BOTH, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"}


def rpc_result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a JSON or SSE response."""
    if response.headers["content-type"].startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return json.loads(line[5:])
        raise AssertionError(f"no response in SSE stream: {response.text!r}")
    return response.json()


def test_milestone_document_example(gateway: HttpGateway) -> None:
    """The milestone document's httpx test, exactly as written there (sync httpx here)."""
    base_url = gateway.base_url
    with httpx.Client() as client:
        response = client.get(f"{base_url}/health")
        assert response.status_code == 200
        assert response.json()["status"] == "healthy"

        response = client.post(
            base_url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2024-11-05",
                    "capabilities": {},
                    "clientInfo": {"name": "test-client", "version": "1.0.0"},
                },
            },
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 200
        result = response.json()["result"]
        assert result["serverInfo"]["name"] == "agent-mcp-gateway"

        session_id = response.headers.get("Mcp-Session-Id")
        assert session_id is not None

        response = client.post(
            base_url,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "list_servers", "arguments": {"agent_id": "researcher"}},
            },
            headers={"Mcp-Session-Id": session_id, "Accept": "application/json"},
        )
        assert response.status_code == 200
        servers = response.json()["result"]["structuredContent"]["servers"]
        assert {server["name"] for server in servers} == {"echo", "time"}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_mcp_client_full_flow(gateway: HttpGateway, mode: str) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(StreamableHttpTransport(gateway.mcp_url), mode=mode, timeout=30) as client:
        servers = (await client.call_tool_mcp("list_servers", {"agent_id": "builder"})).structured_content
        assert {s["name"] for s in servers["servers"]} == {"echo", "slow", "time", "progress"}
        tools = (
            await client.call_tool_mcp("get_server_tools", {"agent_id": "builder", "server": "time"})
        ).structured_content
        assert {t["name"] for t in tools["tools"]} == {"get_current_time", "convert_time"}
        now = await client.call_tool_mcp(
            "execute_tool",
            {
                "agent_id": "builder",
                "server": "time",
                "tool": "get_current_time",
                "args": {"timezone": "UTC"},
            },
            progress_handler=on_progress,
        )
        assert not now.is_error and "UTC" in now.content[0].text
        added = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "add", "args": {"a": 1, "b": 2}}
        )
        assert added.structured_content == {"result": 3}
        with pytest.raises(MCPError) as denied:
            await client.call_tool_mcp(
                "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "drop_table"}
            )
        assert (
            denied.value.code == -32000 and denied.value.data["rule"] == "agents.builder.deny.tools.echo[0]"
        )


def test_session_errors_delete_and_expiry(gateway: HttpGateway) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        list_call = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
        unknown = client.post("/mcp", json=list_call, headers=session_headers("0" * 32))
        assert unknown.status_code == 404
        missing = client.post("/mcp", json=list_call, headers={**BOTH, "mcp-protocol-version": "2025-06-18"})
        assert missing.status_code == 400

        session_id = initialize(client, "/mcp")
        assert len(session_id) >= 32
        listed = client.post("/mcp", json=list_call, headers=session_headers(session_id))
        assert listed.status_code == 200 and rpc_result(listed)["result"]["tools"]
        assert client.delete("/mcp", headers=session_headers(session_id)).status_code in (200, 204)
        assert client.post("/mcp", json=list_call, headers=session_headers(session_id)).status_code == 404

        idle = initialize(client, "/mcp")
        time.sleep(4.5)  # GATEWAY_SESSION_TTL=3 for this gateway
        assert client.post("/mcp", json=list_call, headers=session_headers(idle)).status_code == 404


def test_session_is_bound_to_one_agent(gateway: HttpGateway) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        session_id = initialize(client, "/mcp")

        def list_servers(agent: str) -> dict[str, Any]:
            body = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "list_servers", "arguments": {"agent_id": agent}},
            }
            return rpc_result(client.post("/mcp", json=body, headers=session_headers(session_id)))

        assert "result" in list_servers("researcher")
        other = list_servers("builder")
        assert other["error"]["code"] == -32003
        assert "belongs to agent 'researcher'" in other["error"]["message"]


def test_origin_cors_body_limit_and_malformed_json(gateway: HttpGateway) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        foreign = client.post("/mcp", json=INIT, headers={**BOTH, "Origin": "https://evil.example"})
        assert foreign.status_code == 403
        local = client.post("/mcp", json=INIT, headers={**BOTH, "Origin": "http://localhost:3000"})
        assert local.status_code == 200

        huge = client.post(
            "/mcp",
            content=b"{" + b" " * (5 * 2**20) + b"}",
            headers={**BOTH, "content-type": "application/json"},
        )
        assert huge.status_code == 413
        assert "Traceback" not in huge.text

        broken = client.post(
            "/mcp",
            content=b'{"jsonrpc": "2.0", "id": 1, "method": ',
            headers={**BOTH, "content-type": "application/json"},
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == -32700
        assert client.get("/health").status_code == 200  # still serving


def test_cors_preflight(configured: GatewayFiles, http_gateway_factory: Any) -> None:
    gateway = http_gateway_factory(GATEWAY_CORS_ORIGINS="https://app.example")
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        preflight = client.options(
            "/mcp",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, mcp-session-id",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        response = client.post("/mcp", json=INIT, headers={**BOTH, "Origin": "https://app.example"})
        assert response.status_code == 200
        assert "mcp-session-id" in response.headers["access-control-expose-headers"].lower()
        refused = client.options(
            "/mcp", headers={"Origin": "https://other.example", "Access-Control-Request-Method": "POST"}
        )
        assert refused.status_code == 403


def test_rate_limit_per_agent(gateway: HttpGateway) -> None:
    """Counted per gateway operation inside a session; the limit is the agent's own."""
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        session_id = initialize(client, "/mcp")
        body = {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tools/call",
            "params": {"name": "list_servers", "arguments": {"agent_id": "limited"}},
        }
        allowed = [rpc_result(client.post("/mcp", json=body, headers=session_headers(session_id))) for _ in range(5)]
        assert all("result" in message for message in allowed), allowed
        refused = rpc_result(client.post("/mcp", json=body, headers=session_headers(session_id)))
        assert refused["error"]["code"] == -32005
        assert refused["error"]["data"]["code"] == "RATE_LIMITED"
        assert 0 < refused["error"]["data"]["retry_after"] <= 60
        assert refused["error"]["data"]["limit"] == "5/minute"
        other = initialize(client, "/mcp")
        body["params"]["arguments"]["agent_id"] = "builder"
        assert "result" in rpc_result(client.post("/mcp", json=body, headers=session_headers(other)))

        metrics = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("gateway_rate_limited_total", (("agent", "limited"),))] == 1
    refusals = [line for line in gateway.files.audit_lines() if line["error_code"] == "RATE_LIMITED"]
    assert [(line["agent_id"], line["decision"], line["rule"]) for line in refusals] == [
        ("limited", "DENY", "rate_limit")
    ]


def test_ready_goes_from_503_to_200(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"slowstart": fixture_server("slow", env={"SLOW_START_SECONDS": "2"})})
    gateway_files.write_rules(STANDARD_RULES)
    gateway = start_http_gateway(gateway_files, wait_ready=False)
    try:
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = httpx.get(f"{gateway.base_url}/ready", timeout=2).status_code
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                break
            time.sleep(0.05)
        assert seen == [503, 200]
        body = httpx.get(f"{gateway.base_url}/ready").json()
        assert body["servers"]["slowstart"]["state"] == "up"
    finally:
        assert gateway.stop() == 0


def test_ready_with_a_failing_server(gateway_files: GatewayFiles, http_gateway_factory: Any) -> None:
    gateway_files.write_servers(
        {"echo": fixture_server("echo"), "broken": {"command": "/nonexistent/mcp-server"}}
    )
    gateway_files.write_rules(STANDARD_RULES)
    gateway = http_gateway_factory()
    body = httpx.get(f"{gateway.base_url}/ready").json()
    assert body["status"] == "ready" and body["servers"]["broken"]["state"] == "down"
    assert "/nonexistent" not in json.dumps(body)


async def test_metrics_show_the_calls_just_made(gateway: HttpGateway) -> None:
    async with Client(StreamableHttpTransport(gateway.mcp_url), mode="legacy") as client:
        for _ in range(3):
            await client.call_tool_mcp(
                "execute_tool",
                {"agent_id": "builder", "server": "echo", "tool": "echo", "args": {"text": "x"}},
            )
    text = httpx.get(f"{gateway.base_url}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    calls = [
        s
        for s in families["gateway_operations"].samples
        if s.name == "gateway_operations_total"
        and s.labels["operation"] == "execute_tool"
        and s.labels["agent"] == "builder"
        and s.labels["server"] == "echo"
        and s.labels["outcome"] == "ALLOW"
    ]
    assert calls and calls[0].value == 3
    buckets = [
        s for s in families["gateway_operation_duration_seconds"].samples if s.name.endswith("_bucket")
    ]
    assert {s.labels["le"] for s in buckets} >= {"0.001", "10.0", "+Inf"}
    up = {s.labels["server"]: s.value for s in families["gateway_downstream_up"].samples}
    assert up == {"echo": 1.0, "slow": 1.0, "time": 1.0, "progress": 1.0}
    sample_names = {s.name for family in families.values() for s in family.samples}
    assert {"gateway_build_info", "gateway_active_sessions"} <= sample_names
    summary = httpx.get(f"{gateway.base_url}/metrics?format=json").json()
    operations = summary["gateway_operations"]
    assert operations["type"] == "counter"
    assert any(
        s["name"] == "gateway_operations_total" and s["value"] == 3 and s["labels"]["server"] == "echo"
        for s in operations["samples"]
    )
    lines = [line for line in gateway.files.audit_lines() if line["tool"] == "echo"]
    assert len(lines) == 3 and all(line["session_id"] and line["request_id"] for line in lines)
    assert lines[0]["request_id"] in gateway.log_text()


async def test_unknown_agents_do_not_grow_label_sets(gateway: HttpGateway) -> None:
    async with Client(StreamableHttpTransport(gateway.mcp_url)) as client:
        for index in range(5):
            with pytest.raises(MCPError):
                await client.call_tool_mcp("list_servers", {"agent_id": f"made-up-{index}"})
    text = httpx.get(f"{gateway.base_url}/metrics").text
    assert "made-up" not in text


async def test_hundred_concurrent_sessions(gateway: HttpGateway) -> None:
    async def one_session(index: int) -> list[bool]:
        async with Client(StreamableHttpTransport(gateway.mcp_url), mode="legacy", timeout=60) as client:
            results = []
            for call in range(3):
                result = await client.call_tool_mcp(
                    "execute_tool",
                    {
                        "agent_id": "builder",
                        "server": "echo",
                        "tool": "echo",
                        "args": {"text": f"{index}-{call}"},
                    },
                )
                results.append(not result.is_error and f"{index}-{call}" in result.content[0].text)
            return results

    outcomes = await asyncio.gather(*(one_session(i) for i in range(100)))
    assert all(all(result) for result in outcomes)
    assert len(outcomes) == 100


def test_sigterm_finishes_in_flight_calls(configured: GatewayFiles) -> None:
    gateway = start_http_gateway(configured)

    async def scenario() -> tuple[list[Any], int]:
        async with Client(StreamableHttpTransport(gateway.mcp_url), mode="legacy", timeout=30) as client:
            pid = (
                await client.call_tool_mcp(
                    "execute_tool", {"agent_id": "builder", "server": "slow", "tool": "pid"}
                )
            ).structured_content["result"]
            calls = [
                asyncio.create_task(
                    client.call_tool_mcp(
                        "execute_tool",
                        {"agent_id": "builder", "server": "slow", "tool": "sleep", "args": {"seconds": 1.5}},
                    )
                )
                for _ in range(3)
            ]
            await asyncio.sleep(0.5)
            gateway.process.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
            return results, pid

    results, downstream_pid = asyncio.run(scenario())
    assert all(not isinstance(r, BaseException) and not r.is_error for r in results), results
    assert gateway.process.wait(30) == 0
    assert wait_until(lambda: not process_alive(downstream_pid), 10)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{gateway.base_url}/health", timeout=1)


def test_bad_config_stops_startup_with_a_clear_message(gateway_files: GatewayFiles) -> None:
    import subprocess
    import sys

    gateway_files.mcp.write_text('{"mcpServers": {"x": {"command": "a", "url": "http://b"}}}')
    gateway_files.write_rules(STANDARD_RULES)
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "agent_mcp_gateway"],
        env={
            **gateway_files.env(GATEWAY_TRANSPORT="http", GATEWAY_HTTP_PORT=str(port)),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "mcpServers.x" in done.stderr and "both 'command' and 'url'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"foo": 1}', "'jsonrpc' must be"),
        (b"[1, 2]", "one JSON-RPC 2.0 message object"),
        (b'"text"', "one JSON-RPC 2.0 message object"),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "initialize"}', "'jsonrpc' must be"),
        (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "initialize"}', "'id' must be"),
        (b'{"jsonrpc": "2.0", "id": 3}', "needs a 'method'"),
        (b'{"jsonrpc": "2.0", "id": 3, "method": 7}', "'method' must be a string"),
    ],
)
def test_invalid_json_rpc_messages_get_32600(gateway: HttpGateway, body: bytes, problem: str) -> None:
    response = httpx.post(
        gateway.mcp_url, content=body, headers={**BOTH, "content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == -32600 and problem in error["message"]
    assert "\n" not in error["message"]


def test_unknown_method_and_hostile_headers(gateway: HttpGateway) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        session_id = initialize(client, "/mcp")
        unknown = client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 4, "method": "no/such/method"},
            headers=session_headers(session_id),
        )
        assert rpc_result(unknown)["error"]["code"] == -32601
        traversal = client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
            headers={**session_headers("../../etc/passwd"), "X-Request-Id": "x" * 500},
        )
        assert traversal.status_code == 404
        assert len(traversal.headers["x-request-id"]) == 32  # an unusable id is replaced
        huge_header = client.get("/health", headers={"X-Padding": "a" * 7000})
        assert huge_header.status_code in (200, 431)
        assert client.get("/health").status_code == 200


async def test_session_records_in_debug_status(configured: GatewayFiles, http_gateway_factory: Any) -> None:
    gateway = http_gateway_factory(GATEWAY_DEBUG="1")
    async with Client(StreamableHttpTransport(gateway.mcp_url), mode="legacy") as client:
        await client.call_tool_mcp("list_servers", {"agent_id": "researcher"})
        status = (await client.call_tool_mcp("get_gateway_status", {})).structured_content
    records = status["sessions"]
    assert len(records) == 1 and records[0]["agent_id"] == "researcher"
    assert records[0]["created_at"] <= records[0]["last_used"]
    assert status["servers"]["echo"]["state"] == "up"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_and_logs_over_http(gateway: HttpGateway, mode: str) -> None:
    progress: list[float] = []
    logs: list[object] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_log(message: Any) -> None:
        logs.append(message.data)

    transport = StreamableHttpTransport(gateway.mcp_url)
    async with Client(transport, mode=mode, timeout=30, log_handler=on_log) as client:
        result = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "builder", "server": "progress", "tool": "count", "args": {"n": 3, "delay": 0.02}},
            progress_handler=on_progress,
        )
    assert not result.is_error
    assert progress == sorted(progress) and len(progress) == 3
    assert len(logs) == 3
