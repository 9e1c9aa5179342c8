"""The HTTP service's behaviour, in process: the real ASGI app (edge middleware, SDK session manager,
SSE) driven by httpx and by fastmcp's client, in front of real downstream server processes.

Most tests share one gateway (`service`), so they only add sessions, calls and counters: metric
checks compare before and after, and audit checks pick their own session's lines. Granian itself,
signals and start-up failures are in test_http_process.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from mcp import MCPError

from agent_mcp_gateway.observe.audit import session_ref

from conftest import (
    ACCEPT_BOTH,
    STANDARD_RULES,
    STARTUP_SECONDS,
    AsgiGateway,
    GatewayFiles,
    asgi_gateway,
    eventually,
    fixture_server,
    initialize_message,
    metric,
    new_gateway_files,
    scraped,
    time_server,
)

INIT = initialize_message("raw-test")
BOTH = ACCEPT_BOTH
SERVICE_SERVERS = ("echo", "slow", "time", "progress")


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsgiGateway]:
    """One gateway for the tests that only add sessions and calls, started once for the module."""
    files = new_gateway_files(tmp_path_factory.mktemp("service"))
    files.write_servers(
        {
            "echo": fixture_server("echo"),
            "slow": fixture_server("slow"),
            "time": time_server(),
            "progress": fixture_server("progress"),
        }
    )
    rules = json.loads(json.dumps(STANDARD_RULES))
    rules["agents"]["limited"] = {"allow": {"servers": ["echo"]}, "rate_limit": "5/minute"}
    files.write_rules(rules)
    # The default limit (600/minute per agent) is for production; the rate-limit test uses its
    # own agent's limit, and the other tests call as builder hundreds of times a minute.
    async with asgi_gateway(files, GATEWAY_RATE_LIMIT="100000/minute") as running:
        await until_ready(running)
        yield running


async def until_ready(service: AsgiGateway, timeout: float = STARTUP_SECONDS) -> dict[str, Any]:
    """/ready's body once it answers 200 (every downstream server has been tried)."""
    async with service.http() as http:
        response = await http.get("/ready")
        deadline = asyncio.get_running_loop().time() + timeout
        while response.status_code != 200:
            assert asyncio.get_running_loop().time() < deadline, response.text
            await asyncio.sleep(0.05)
            response = await http.get("/ready")
        return response.json()


async def initialize(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> str:
    response = await client.post("/mcp", json=INIT, headers={**BOTH, **(headers or {})})
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    initialized = await client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers=session_headers(session_id),
    )
    assert initialized.status_code == 202, initialized.text
    return session_id


def session_headers(session_id: str) -> dict[str, str]:
    return {**BOTH, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"}


def tool_call(name: str, request_id: int = 7, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def rpc_result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a JSON or SSE response."""
    if response.headers["content-type"].startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return json.loads(line[5:])
        raise AssertionError(f"no response in SSE stream: {response.text!r}")
    return response.json()


async def test_milestone_document_example(service: AsgiGateway) -> None:
    """The milestone document's httpx test: JSON only, MCP at the root path, no initialized
    notification before the first call."""
    async with service.http() as client:
        response = await client.get("/health")
        assert response.status_code == 200
        assert response.json()["status"] == "healthy"

        response = await client.post(
            "/",
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
        assert response.headers["content-type"] == "application/json"
        result = response.json()["result"]
        assert result["serverInfo"]["name"] == "agent-mcp-gateway"

        session_id = response.headers.get("Mcp-Session-Id")
        assert session_id is not None

        response = await client.post(
            "/",
            json=tool_call("list_servers", request_id=2, agent_id="researcher"),
            headers={"Mcp-Session-Id": session_id, "Accept": "application/json"},
        )
        assert response.status_code == 200
        servers = response.json()["result"]["structuredContent"]["servers"]
        assert {server["name"] for server in servers} == {"echo", "time"}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_mcp_client_full_flow(service: AsgiGateway, mode: str) -> None:
    async with service.client(mode) as client:
        servers = (await client.call_tool_mcp("list_servers", {"agent_id": "builder"})).structured_content
        assert {s["name"] for s in servers["servers"]} == set(SERVICE_SERVERS)
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


async def test_session_errors_and_delete(service: AsgiGateway) -> None:
    list_call = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
    async with service.http() as client:
        unknown = await client.post("/mcp", json=list_call, headers=session_headers("0" * 32))
        assert unknown.status_code == 404
        missing = await client.post(
            "/mcp", json=list_call, headers={**BOTH, "mcp-protocol-version": "2025-06-18"}
        )
        assert missing.status_code == 400

        session_id = await initialize(client)
        assert len(session_id) >= 32
        assert service.gateway.sessions.get(session_id) is not None
        listed = await client.post("/mcp", json=list_call, headers=session_headers(session_id))
        assert listed.status_code == 200 and rpc_result(listed)["result"]["tools"]
        assert (await client.delete("/mcp", headers=session_headers(session_id))).status_code == 200
        assert service.gateway.sessions.get(session_id) is None
        after = await client.post("/mcp", json=list_call, headers=session_headers(session_id))
        assert after.status_code == 404


async def test_idle_session_expires(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({})
    gateway_files.write_rules(STANDARD_RULES)
    list_call = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
    async with asgi_gateway(gateway_files, GATEWAY_SESSION_TTL="3") as service, service.http() as client:
        idle = await initialize(client)
        kept = await initialize(client)
        # 6 s of use, every 0.5 s: never idle for the TTL (a loaded machine may stretch a gap to
        # a second or two), while the other is idle for twice the TTL (swept every second).
        for _ in range(12):
            await asyncio.sleep(0.5)
            used = await client.post("/mcp", json=list_call, headers=session_headers(kept))
            assert used.status_code == 200
        expired = await client.post("/mcp", json=list_call, headers=session_headers(idle))
        assert expired.status_code == 404
        assert service.gateway.sessions.get(idle) is None
        assert service.gateway.sessions.get(kept) is not None


async def test_session_is_bound_to_one_agent(service: AsgiGateway) -> None:
    async with service.http() as client:
        session_id = await initialize(client)

        async def list_servers(agent: str) -> dict[str, Any]:
            response = await client.post(
                "/mcp", json=tool_call("list_servers", agent_id=agent), headers=session_headers(session_id)
            )
            return rpc_result(response)

        assert "result" in await list_servers("researcher")
        other = await list_servers("builder")
        assert other["error"]["code"] == -32003
        assert "belongs to agent 'researcher'" in other["error"]["message"]
        assert service.gateway.sessions.get(session_id).agent_id == "researcher"


async def test_origin_body_limit_and_malformed_json(service: AsgiGateway) -> None:
    async with service.http() as client:
        foreign = await client.post("/mcp", json=INIT, headers={**BOTH, "Origin": "https://evil.example"})
        assert foreign.status_code == 403
        assert foreign.json()["error"]["data"]["code"] == "ORIGIN_NOT_ALLOWED"
        local = await client.post("/mcp", json=INIT, headers={**BOTH, "Origin": "http://localhost:3000"})
        assert local.status_code == 200

        huge = await client.post(
            "/mcp",
            content=b"{" + b" " * (5 * 2**20) + b"}",
            headers={**BOTH, "content-type": "application/json"},
        )
        assert huge.status_code == 413
        assert huge.json()["error"]["data"] == {"code": "BODY_TOO_LARGE", "max_bytes": 4 * 2**20}

        broken = await client.post(
            "/mcp",
            content=b'{"jsonrpc": "2.0", "id": 1, "method": ',
            headers={**BOTH, "content-type": "application/json"},
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == -32700
        assert (await client.get("/health")).status_code == 200  # still serving


async def test_cors_preflight(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({})
    gateway_files.write_rules(STANDARD_RULES)
    cors = {"GATEWAY_CORS_ORIGINS": "https://app.example"}
    async with asgi_gateway(gateway_files, **cors) as service, service.http() as client:
        preflight = await client.options(
            "/mcp",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, mcp-session-id",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        response = await client.post("/mcp", json=INIT, headers={**BOTH, "Origin": "https://app.example"})
        assert response.status_code == 200
        assert "mcp-session-id" in response.headers["access-control-expose-headers"].lower()
        refused = await client.options(
            "/mcp", headers={"Origin": "https://other.example", "Access-Control-Request-Method": "POST"}
        )
        assert refused.status_code == 403
        # with an explicit list, a loopback origin is no longer allowed by default
        local = await client.post("/mcp", json=INIT, headers={**BOTH, "Origin": "http://localhost:3000"})
        assert local.status_code == 403


async def test_rate_limit_per_agent(service: AsgiGateway) -> None:
    """Counted per gateway operation inside a session; the limit is the agent's own."""
    limited_before = metric("gateway_rate_limited_total", agent="limited")
    async with service.http() as client:
        session_id = await initialize(client)
        body = tool_call("list_servers", request_id=9, agent_id="limited")
        allowed = [
            rpc_result(await client.post("/mcp", json=body, headers=session_headers(session_id)))
            for _ in range(5)
        ]
        assert all("result" in message for message in allowed), allowed
        refused = rpc_result(await client.post("/mcp", json=body, headers=session_headers(session_id)))
        assert refused["error"]["code"] == -32005
        assert refused["error"]["data"]["code"] == "RATE_LIMITED"
        assert 0 < refused["error"]["data"]["retry_after"] <= 60
        assert refused["error"]["data"]["limit"] == "5/minute"
        other = await initialize(client)
        body["params"]["arguments"]["agent_id"] = "builder"
        assert "result" in rpc_result(await client.post("/mcp", json=body, headers=session_headers(other)))
        metrics = (await client.get("/metrics")).text

    key = ("gateway_rate_limited_total", (("agent", "limited"),))
    assert scraped(metrics)[key] == limited_before + 1

    def refusals() -> list[dict[str, Any]]:
        lines = service.files.audit_lines()
        return [
            line for line in lines if line["session_id"] == session_ref(session_id) and line["error_code"]
        ]

    assert await eventually(refusals)
    assert [(line["agent_id"], line["decision"], line["rule"]) for line in refusals()] == [
        ("limited", "DENY", "rate_limit")
    ]
    assert refusals()[0]["error_code"] == "RATE_LIMITED"


async def test_ready_goes_from_503_to_200(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"slowstart": fixture_server("slow", env={"SLOW_START_SECONDS": "1"})})
    gateway_files.write_rules(STANDARD_RULES)
    async with asgi_gateway(gateway_files) as service, service.http() as client:
        seen: list[int] = []
        # 1 s of start-up when idle; a loaded machine has needed tens of seconds for a process.
        deadline = asyncio.get_running_loop().time() + STARTUP_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            status = (await client.get("/ready")).status_code
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert seen == [503, 200]
        body = (await client.get("/ready")).json()
        assert body["servers"]["slowstart"]["state"] == "up"


async def test_ready_with_a_failing_server(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers(
        {"working": fixture_server("echo"), "broken": {"command": "/nonexistent/mcp-server"}}
    )
    gateway_files.write_rules(STANDARD_RULES)
    async with asgi_gateway(gateway_files) as service:
        body = await until_ready(service)
    assert body["status"] == "ready"
    assert body["servers"]["broken"]["state"] == "down"
    assert body["servers"]["working"]["state"] == "up"
    assert "/nonexistent" not in json.dumps(body)


async def test_metrics_show_the_calls_just_made(service: AsgiGateway) -> None:
    labels = {"operation": "execute_tool", "agent": "builder", "server": "echo", "outcome": "ALLOW"}
    calls_before = metric("gateway_operations_total", **labels)
    timed_before = metric("gateway_operation_duration_seconds_count", **labels)
    async with service.client() as client:
        for _ in range(3):
            await client.call_tool_mcp(
                "execute_tool",
                {"agent_id": "builder", "server": "echo", "tool": "echo", "args": {"text": "x"}},
            )
        session_id = client.transport.get_session_id()
    async with service.http() as http:
        text = (await http.get("/metrics")).text
        summary = (await http.get("/metrics?format=json")).json()

    samples = scraped(text)
    assert samples[("gateway_operations_total", tuple(sorted(labels.items())))] == calls_before + 3
    count = ("gateway_operation_duration_seconds_count", tuple(sorted(labels.items())))
    assert samples[count] == timed_before + 3
    buckets = {
        dict(key[1])["le"]
        for key in samples
        if key[0] == "gateway_operation_duration_seconds_bucket" and dict(key[1])["server"] == "echo"
    }
    assert buckets >= {"0.001", "10.0", "+Inf"}
    for server in SERVICE_SERVERS:
        assert samples[("gateway_downstream_up", (("server", server),))] == 1.0, server
    names = {name for name, _ in samples}
    assert {"gateway_build_info", "gateway_active_sessions"} <= names

    operations = summary["gateway_operations"]
    assert operations["type"] == "counter"
    assert [s["value"] for s in operations["samples"] if s["labels"] == labels] == [calls_before + 3]

    def lines() -> list[dict[str, Any]]:
        return [line for line in service.files.audit_lines() if line["session_id"] == session_ref(session_id)]

    assert await eventually(lambda: len(lines()) == 3)
    assert all(line["tool"] == "echo" and line["decision"] == "ALLOW" for line in lines())
    assert len({line["request_id"] for line in lines()}) == 3  # one id per request


async def test_request_id_is_returned_and_audited(service: AsgiGateway) -> None:
    async with service.http() as client:
        session_id = await initialize(client)
        response = await client.post(
            "/mcp",
            json=tool_call(
                "execute_tool", agent_id="builder", server="echo", tool="echo", args={"text": "r"}
            ),
            headers={**session_headers(session_id), "X-Request-Id": "trace-42.a_b"},
        )
        assert "result" in rpc_result(response)
        assert response.headers["x-request-id"] == "trace-42.a_b"
        generated = await client.get("/health")
        assert len(generated.headers["x-request-id"]) == 32

    def lines() -> list[dict[str, Any]]:
        return [line for line in service.files.audit_lines() if line["session_id"] == session_ref(session_id)]

    assert await eventually(lines)
    assert [line["request_id"] for line in lines()] == ["trace-42.a_b"]


async def test_unknown_agents_do_not_grow_label_sets(service: AsgiGateway) -> None:
    """A refused claim is counted, under `none` (no agent was resolved), not under its own name."""
    unknown = {"operation": "list_servers", "agent": "none", "server": "none", "outcome": "DENY"}
    before = metric("gateway_operations_total", **unknown)
    async with service.client("auto") as client:
        for index in range(5):
            with pytest.raises(MCPError) as refused:
                await client.call_tool_mcp("list_servers", {"agent_id": f"made-up-{index}"})
            assert refused.value.code == -32003
    async with service.http() as http:
        text = (await http.get("/metrics")).text
    assert "made-up" not in text
    assert scraped(text)[("gateway_operations_total", tuple(sorted(unknown.items())))] == before + 5


async def test_hundred_concurrent_sessions(service: AsgiGateway) -> None:
    """100 sessions at once, each initialized, used for three calls and deleted: every answer
    reaches its own session, and every session is gone afterwards."""
    labels = {"operation": "execute_tool", "agent": "builder", "server": "echo", "outcome": "ALLOW"}
    before = metric("gateway_operations_total", **labels)

    async def one_session(index: int) -> tuple[str, list[str]]:
        async with service.http() as client:
            session_id = await initialize(client)
            answers = []
            for call in range(3):
                body = tool_call(
                    "execute_tool",
                    agent_id="builder",
                    server="echo",
                    tool="echo",
                    args={"text": f"{index}-{call}"},
                )
                response = await client.post("/mcp", json=body, headers=session_headers(session_id))
                answers.append(rpc_result(response)["result"]["content"][0]["text"])
            deleted = await client.delete("/mcp", headers=session_headers(session_id))
            assert deleted.status_code == 200
            return session_id, answers

    outcomes = await asyncio.gather(*(one_session(i) for i in range(100)))
    assert [answers for _, answers in outcomes] == [[f"{i}-{call}" for call in range(3)] for i in range(100)]
    session_ids = {session_id for session_id, _ in outcomes}
    assert len(session_ids) == 100
    assert not [sid for sid in session_ids if service.gateway.sessions.get(sid) is not None]
    assert metric("gateway_operations_total", **labels) == before + 300


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
async def test_invalid_json_rpc_messages_get_32600(service: AsgiGateway, body: bytes, problem: str) -> None:
    async with service.http() as client:
        response = await client.post(
            "/mcp", content=body, headers={**BOTH, "content-type": "application/json"}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == -32600 and problem in error["message"]
    assert "\n" not in error["message"]


async def test_unknown_method_and_hostile_headers(service: AsgiGateway) -> None:
    async with service.http() as client:
        session_id = await initialize(client)
        unknown = await client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 4, "method": "no/such/method"},
            headers=session_headers(session_id),
        )
        assert rpc_result(unknown)["error"]["code"] == -32601
        traversal = await client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
            headers={**session_headers("../../etc/passwd"), "X-Request-Id": "x" * 500},
        )
        assert traversal.status_code == 404
        assert len(traversal.headers["x-request-id"]) == 32  # an unusable id is replaced
        assert traversal.headers["x-request-id"] != "x" * 500
        assert (await client.get("/health")).status_code == 200


async def test_session_records_in_debug_status(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"solo": fixture_server("echo")})
    gateway_files.write_rules({"agents": {"researcher": {"allow": {"servers": ["solo"]}}}})
    async with asgi_gateway(gateway_files, GATEWAY_DEBUG="1") as service:
        await until_ready(service)
        async with service.client() as client:
            await client.call_tool_mcp("list_servers", {"agent_id": "researcher"})
            status = (await client.call_tool_mcp("get_gateway_status", {})).structured_content
    records = status["sessions"]
    assert len(records) == 1 and records[0]["agent_id"] == "researcher"
    assert records[0]["created_at"] <= records[0]["last_used"]
    assert status["servers"]["solo"]["state"] == "up"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_and_logs_over_http(service: AsgiGateway, mode: str) -> None:
    progress: list[float] = []
    logs: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_log(message: Any) -> None:
        logs.append(message.data)

    async with service.client(mode, log_handler=on_log) as client:
        result = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "builder", "server": "progress", "tool": "count", "args": {"n": 3, "delay": 0.02}},
            progress_handler=on_progress,
        )
    assert not result.is_error and "counted 3" in result.content[0].text
    assert progress == [1, 2, 3]
    assert [entry["msg"] for entry in logs] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
