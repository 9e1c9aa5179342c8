"""The tasks extension (`io.modelcontextprotocol/tasks`) is not relayed, and the gateway says so
(`server/tasks.py`): a downstream's declaration of it is not advertised, a caller's is not passed
downstream (so a task-augmented call runs to its result), and the task methods are refused with
the reason, in both eras, rather than reaching the downstream that would answer them.

The `modern` fixture declares the extension and answers `tasks/get`; its `declared` tool tells
which extensions the call's caller declared.
"""

from __future__ import annotations

from typing import Any

import httpx
import mcp_types as mt
import pytest
from mcp import MCPError

from conftest import GatewayFiles, asgi_gateway, eventually, fixture_server

MODERN = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
OTHER = "io.example/widgets"
REFUSED = "the gateway does not relay tasks"


def meta(extensions: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07-28 request's `_meta`, its caller declaring `extensions`."""
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"extensions": extensions},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
    }


async def post(http: httpx.AsyncClient, method: str, params: dict[str, Any], name: str) -> dict[str, Any]:
    """One 2026-07-28 request over HTTP (no session), with the headers the era requires."""
    headers = {
        "Accept": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
        "Mcp-Name": name,
        "X-Agent-Id": "ide",
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    answered = await http.post("/mcp", json=body, headers=headers)
    answer: dict[str, Any] = answered.json()
    return answer


async def test_tasks_are_refused_with_the_reason_and_never_reach_the_downstream(
    gateway_files: GatewayFiles,
) -> None:
    gateway_files.write_servers({"modern": fixture_server("modern")})
    gateway_files.write_rules({"agents": {"ide": {"view": "aggregate", "allow": {"servers": ["*"]}}}})
    async with asgi_gateway(gateway_files) as service:
        await eventually(lambda: all(server.state == "up" for server in service.gateway.pool), timeout=60)
        assert TASKS in service.gateway.pool.get("modern").extensions()  # the downstream offers it
        async with service.client("auto", headers={"X-Agent-Id": "ide"}) as client:
            discovered = await client.session.send_discover(MODERN)
        assert TASKS not in (discovered["capabilities"].get("extensions") or {})
        assert "tasks" not in discovered["capabilities"]

        async with service.http() as http:
            # A call whose caller opts into tasks runs to its result: the downstream is told of
            # the caller's other extensions, not of tasks, so it answers with no task.
            declared = {TASKS: {}, OTHER: {}}
            call = {"name": "modern__declared", "arguments": {}, "_meta": meta(declared)}
            answer = await post(http, "tools/call", call, "modern__declared")
            assert answer["result"]["content"][0]["text"] == OTHER, answer
            assert answer["result"].get("resultType", "complete") == "complete"
            # The extension's methods are refused, with why (the downstream would have answered).
            for method in ("tasks/get", "tasks/update", "tasks/cancel"):
                refused = await post(http, method, {"taskId": "t-1", "_meta": meta(declared)}, "t-1")
                assert refused["error"]["code"] == mt.METHOD_NOT_FOUND, refused
                assert REFUSED in refused["error"]["message"] and TASKS in refused["error"]["message"]

        # The handshake era: a call asking for a task gets its result; the core task methods,
        # on a session, are refused.
        async with service.client("legacy", headers={"X-Agent-Id": "ide"}) as client:
            assert client.initialize_result is not None
            assert client.initialize_result.capabilities.model_dump(exclude_none=True).get("tasks") is None
            params = mt.CallToolRequestParams(
                name="modern__echo", arguments={"text": "now"}, task=mt.TaskMetadata(ttl=60_000)
            )
            result = await client.session.send_request(mt.CallToolRequest(params=params), mt.CallToolResult)
            assert [block.text for block in result.content if isinstance(block, mt.TextContent)] == ["now"]
            request = mt.GetTaskRequest(params=mt.GetTaskRequestParams(task_id="t-1"))
            with pytest.raises(MCPError, match=REFUSED) as caught:
                await client.session.send_request(request, mt.GetTaskResult)
            assert caught.value.code == mt.METHOD_NOT_FOUND
