"""The call lane (`server/lane.py`): which calls take it, and that they are answered, audited and
cancelled as on the full path. A call on the lane answers `application/json` where the full path
(SDK) answers a handshake-era call with an event stream; a call with a progress token always
takes the full path, so the two are compared on the same gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import (
    ACCEPT_BOTH,
    STANDARD_RULES,
    WAIT_SECONDS,
    AsgiGateway,
    asgi_gateway,
    eventually,
    fixture_server,
    initialize_message,
    new_gateway_files,
)

MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "lane", "version": "1"},
}


@pytest.fixture(scope="module")
async def lane(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsgiGateway]:
    files = new_gateway_files(tmp_path_factory.mktemp("lane"))
    files.write_servers(
        {
            "echo": fixture_server("echo"),
            "chatter": fixture_server("chatter"),
            "slow": fixture_server("slow"),
            "asking": fixture_server("asking"),
        }
    )
    rules = json.loads(json.dumps(STANDARD_RULES))
    rules["agents"]["whole"] = {"view": "aggregate", "allow": {"servers": ["echo"]}}
    rules["agents"]["tight"] = {"allow": {"servers": ["echo"]}, "rate_limit": "2/minute"}
    files.write_rules(rules)
    async with asgi_gateway(files, GATEWAY_RATE_LIMIT="100000/minute") as running:
        async with running.http() as http:
            deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
            while (await http.get("/ready")).status_code != 200:
                assert asyncio.get_running_loop().time() < deadline, "the gateway never became ready"
                await asyncio.sleep(0.05)
        yield running


async def session(http: httpx.AsyncClient, capabilities: dict[str, Any] | None = None) -> dict[str, str]:
    init = initialize_message("lane")
    if capabilities is not None:
        init["params"]["capabilities"] = capabilities
    opened = await http.post("/mcp", json=init, headers=ACCEPT_BOTH)
    assert opened.status_code == 200, opened.text
    headers = {**ACCEPT_BOTH, "mcp-session-id": opened.headers["mcp-session-id"]}
    done = await http.post(
        "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
    )
    assert done.status_code == 202, done.text
    return headers


def call(
    name: str, arguments: dict[str, Any], request_id: int = 7, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def modern_headers(name: str) -> dict[str, str]:
    return {**ACCEPT_BOTH, "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": name}


def answer_of(response: httpx.Response) -> dict[str, Any]:
    if response.headers["content-type"].startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id"' in line:
                return json.loads(line[5:])  # type: ignore[no-any-return]
        raise AssertionError(f"no answer in {response.text!r}")
    return response.json()  # type: ignore[no-any-return]


def audit_lines(service: AsgiGateway) -> list[dict[str, Any]]:
    text = service.files.audit.read_text() if service.files.audit.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


EXECUTE = {"agent_id": "builder", "server": "echo", "tool": "echo", "args": {"text": "hi"}}


async def test_handshake_era_call_is_answered_as_json_like_the_full_path(lane: AsgiGateway) -> None:
    async with lane.http() as http:
        headers = await session(http)
        fast = await http.post("/mcp", json=call("execute_tool", EXECUTE), headers=headers)
        full = await http.post(
            "/mcp", json=call("execute_tool", EXECUTE, meta={"progressToken": "p"}), headers=headers
        )
    assert fast.status_code == 200 and fast.headers["content-type"] == "application/json"
    assert fast.headers["mcp-session-id"] == headers["mcp-session-id"]
    assert full.headers["content-type"].startswith("text/event-stream")  # the SDK's answer
    assert answer_of(fast) == answer_of(full)
    assert answer_of(fast)["result"]["content"][0]["text"] == "hi"


async def test_modern_call_is_answered_like_the_full_path(lane: AsgiGateway) -> None:
    async with lane.http() as http:
        headers = modern_headers("execute_tool")
        fast = await http.post("/mcp", json=call("execute_tool", EXECUTE, meta=MODERN_META), headers=headers)
        full = await http.post(
            "/mcp",
            json=call("execute_tool", EXECUTE, meta={**MODERN_META, "progressToken": "p"}),
            headers=headers,
        )
    assert fast.status_code == 200 and fast.headers["content-type"] == "application/json"
    assert "mcp-session-id" not in fast.headers
    assert answer_of(fast) == answer_of(full)


async def test_aggregate_view_and_errors_match_the_full_path(lane: AsgiGateway) -> None:
    whole = {"X-Agent-Id": "whole"}
    async with lane.http() as http:
        headers = {**await session(http), **whole}
        for name, arguments in [
            ("echo__echo", {"text": "a"}),
            ("echo__fail", {"message": "no"}),
            ("nope", {}),
        ]:
            fast = await http.post("/mcp", json=call(name, arguments), headers=headers)
            full = await http.post(
                "/mcp", json=call(name, arguments, meta={"progressToken": 1}), headers=headers
            )
            assert fast.headers["content-type"] == "application/json", name
            assert answer_of(fast) == answer_of(full), name
        denied = {**EXECUTE, "agent_id": "researcher", "tool": "drop_table", "args": {"table": "t"}}
        modern = {**modern_headers("execute_tool")}
        fast = await http.post("/mcp", json=call("execute_tool", denied, meta=MODERN_META), headers=modern)
        full = await http.post(
            "/mcp",
            json=call("execute_tool", denied, meta={**MODERN_META, "progressToken": 1}),
            headers=modern,
        )
    assert fast.headers["content-type"] == "application/json"
    assert fast.status_code == full.status_code
    assert answer_of(fast) == answer_of(full)
    assert answer_of(fast)["error"]["data"]["code"] == "DENIED_BY_POLICY"


async def test_lane_calls_are_audited(lane: AsgiGateway) -> None:
    async with lane.http() as http:
        headers = await session(http)
        response = await http.post(
            "/mcp", json=call("execute_tool", EXECUTE), headers={**headers, "x-request-id": "lane-audit-1"}
        )
        assert response.headers["content-type"] == "application/json"
    line = await eventually(
        lambda: next((line for line in audit_lines(lane) if line.get("request_id") == "lane-audit-1"), None)
    )
    assert line["operation"] == "execute_tool" and line["decision"] == "ALLOW"
    assert line["server"] == "echo" and line["tool"] == "echo" and line["agent_id"] == "builder"


async def test_a_client_that_can_be_asked_takes_the_full_path(lane: AsgiGateway) -> None:
    async with lane.http() as http:
        headers = await session(http, {"elicitation": {}})
        response = await http.post("/mcp", json=call("execute_tool", EXECUTE), headers=headers)
        assert response.headers["content-type"].startswith("text/event-stream")
        asking = {**MODERN_META, "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
        modern = await http.post(
            "/mcp", json=call("execute_tool", EXECUTE, meta=asking), headers=modern_headers("execute_tool")
        )
        assert answer_of(modern)["result"]["content"][0]["text"] == "hi"


async def test_logs_during_a_call_turn_the_answer_into_a_stream(lane: AsgiGateway) -> None:
    chatter = {"agent_id": "builder", "server": "chatter", "tool": "chatter", "args": {"tag": "t", "n": 2}}
    async with lane.http() as http:
        headers = await session(http)
        response = await http.post("/mcp", json=call("execute_tool", chatter), headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    assert [m.get("method") for m in messages[:-1]] == ["notifications/message"] * 2, messages
    assert messages[-1]["result"]["content"][0]["text"] == "t done"


async def test_a_cancelled_call_ends_without_an_answer(lane: AsgiGateway) -> None:
    sleep = {"agent_id": "builder", "server": "slow", "tool": "sleep", "args": {"seconds": 60}}
    async with lane.http() as http:
        headers = await session(http)
        calling = asyncio.create_task(
            http.post("/mcp", json=call("execute_tool", sleep, 99), headers=headers)
        )
        # Once the downstream has the call, cancel it as a client does.
        await eventually(lambda: any(d.in_flight for d in lane.gateway.pool.instances("slow")) or None)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}
        assert (await http.post("/mcp", json=cancel, headers=headers)).status_code == 202
        response = await asyncio.wait_for(calling, WAIT_SECONDS)
    assert response.status_code == 200
    assert '"result"' not in response.text and '"error"' not in response.text


async def test_a_2026_server_asking_is_answered_as_on_the_full_path(lane: AsgiGateway) -> None:
    """The asking fixture, spoken to in 2026-07-28, answers `colour` with its question. A
    handshake-era caller that declared nothing is told within the call that it cannot answer; a
    2026-07-28 caller gets the question in the result, with the gateway's sealed state."""
    colour = {"agent_id": "builder", "server": "asking", "tool": "colour"}
    async with lane.http() as http:
        headers = await session(http)
        fast = await http.post("/mcp", json=call("execute_tool", colour), headers=headers)
        full = await http.post(
            "/mcp", json=call("execute_tool", colour, meta={"progressToken": 1}), headers=headers
        )
        assert fast.headers["content-type"] == "application/json"
        assert answer_of(fast) == answer_of(full)
        modern = modern_headers("execute_tool")
        fast = await http.post("/mcp", json=call("execute_tool", colour, meta=MODERN_META), headers=modern)
        full = await http.post(
            "/mcp",
            json=call("execute_tool", colour, meta={**MODERN_META, "progressToken": 1}),
            headers=modern,
        )
    assert fast.headers["content-type"] == "application/json"
    asked, expected = answer_of(fast)["result"], answer_of(full)["result"]
    assert asked["resultType"] == expected["resultType"] == "input_required", asked
    assert asked["inputRequests"] == expected["inputRequests"]
    assert isinstance(asked["requestState"], str) and asked["requestState"] != "asked"


async def test_lane_calls_are_charged_to_the_agents_rate_limit(lane: AsgiGateway) -> None:
    tight = {**EXECUTE, "agent_id": "tight"}
    async with lane.http() as http:
        headers = await session(http)
        answers = [
            await http.post("/mcp", json=call("execute_tool", tight, n), headers=headers) for n in range(3)
        ]
    assert all(answer.headers["content-type"] == "application/json" for answer in answers)
    assert all("result" in answer_of(answer) for answer in answers[:2])
    refused = answer_of(answers[2])["error"]
    assert refused["code"] == -32005 and refused["data"]["code"] == "RATE_LIMITED", refused


async def test_calls_of_sessions_with_resumable_streams_take_the_full_path(lane: AsgiGateway) -> None:
    """2025-11-25 streams are primed for resumption with `Last-Event-ID` (test_resume.py); a
    JSON answer has nothing to resume, so those calls keep the SDK's stream unless
    GATEWAY_CALL_LANE=all."""
    async with lane.http() as http:
        headers = {**await session(http), "mcp-protocol-version": "2025-11-25"}
        response = await http.post("/mcp", json=call("execute_tool", EXECUTE), headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert answer_of(response)["result"]["content"][0]["text"] == "hi"
