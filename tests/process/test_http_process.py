"""The HTTP service as an operator runs it: `python -m agent_mcp_gateway` serving under Granian.

Only what needs the real process is here: that Granian serves a whole MCP session, writes its
logs and answers over a socket, drains in-flight calls on SIGTERM, and that a bad configuration
stops start-up. Behaviour is tested in process in test_http_service.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import MCPError

from agent_mcp_gateway.observe.audit import session_ref

from conftest import (
    PY,
    STANDARD_RULES,
    WAIT_SECONDS,
    GatewayFiles,
    HttpGateway,
    fixture_server,
    free_port,
    new_gateway_files,
    process_alive,
    scraped,
    start_http_gateway,
    wait_until,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpGateway]:
    """One Granian process for the module; the SIGTERM test, last, ends it."""
    files = new_gateway_files(tmp_path_factory.mktemp("served"))
    started = files.directory.parent / "slow-started"
    started.mkdir()
    slow = fixture_server("slow", env={"SLOW_STARTED_DIR": str(started)})
    files.write_servers({"echo": fixture_server("echo"), "slow": slow})
    files.write_rules(STANDARD_RULES)
    gateway = start_http_gateway(files)
    yield gateway
    gateway.stop()


async def test_granian_serves_a_full_client_session(served: HttpGateway) -> None:
    async with Client(StreamableHttpTransport(served.mcp_url), mode="legacy", timeout=30) as client:
        session_id = client.transport.get_session_id()
        servers = (await client.call_tool_mcp("list_servers", {"agent_id": "builder"})).structured_content
        assert {s["name"] for s in servers["servers"]} == {"echo", "slow"}
        tools = (
            await client.call_tool_mcp("get_server_tools", {"agent_id": "builder", "server": "echo"})
        ).structured_content
        assert {"echo", "add"} <= {t["name"] for t in tools["tools"]}
        assert "drop_table" not in {t["name"] for t in tools["tools"]}
        added = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "add", "args": {"a": 1, "b": 2}}
        )
        assert added.structured_content == {"result": 3}
        with pytest.raises(MCPError) as denied:
            await client.call_tool_mcp(
                "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "drop_table"}
            )
        assert denied.value.data["rule"] == "agents.builder.deny.tools.echo[0]"
    assert session_id is not None

    with httpx.Client(base_url=served.base_url, timeout=10) as http:
        samples = scraped(http.get("/metrics").text)
        assert samples[("gateway_downstream_up", (("server", "echo"),))] == 1.0
        allowed = (
            ("agent", "builder"),
            ("operation", "execute_tool"),
            ("outcome", "ALLOW"),
            ("server", "echo"),
        )
        assert samples[("gateway_operations_total", allowed)] == 1.0  # this process counted only this call
        # Header size is Granian's to limit (the app never sees the request): a 7 kB header is
        # served, a 1 MB one refused with 431, and the server carries on.
        assert http.get("/health", headers={"X-Padding": "a" * 7000}).status_code == 200
        assert http.get("/health", headers={"X-Padding": "a" * 2**20}).status_code == 431
        assert http.get("/health").status_code == 200

    def session_lines() -> list[dict[str, Any]]:
        return [line for line in served.files.audit_lines() if line["session_id"] == session_ref(session_id)]

    assert wait_until(lambda: len(session_lines()) == 4, 5)
    logged = [json.loads(line) for line in served.log_text().splitlines() if line.startswith("{")]
    logged_ids = {entry.get("request_id") for entry in logged}
    assert all(line["request_id"] in logged_ids for line in session_lines())


def test_sigterm_finishes_in_flight_calls(served: HttpGateway) -> None:
    """Last in the module: it ends the shared process."""

    async def scenario() -> tuple[list[Any], int]:
        async with Client(StreamableHttpTransport(served.mcp_url), mode="legacy", timeout=30) as client:
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
            # Once the three calls have reached the slow server (each leaves a file as it starts).
            started = served.files.directory.parent / "slow-started"
            in_flight = await asyncio.to_thread(wait_until, lambda: len(list(started.iterdir())) >= 3)
            assert in_flight, list(started.iterdir())
            served.process.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
            return results, pid

    results, downstream_pid = asyncio.run(scenario())
    assert all(not isinstance(r, BaseException) and not r.is_error for r in results), results
    assert [r.content[0].text for r in results] == ["slept 1.5"] * 3
    assert served.process.wait(WAIT_SECONDS) == 0
    assert wait_until(lambda: not process_alive(downstream_pid))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{served.base_url}/health", timeout=1)


def test_bad_config_stops_startup_with_a_clear_message(gateway_files: GatewayFiles) -> None:
    gateway_files.mcp.write_text('{"mcpServers": {"x": {"command": "a", "url": "http://b"}}}')
    gateway_files.write_rules(STANDARD_RULES)
    done = subprocess.run(
        [PY, "-m", "agent_mcp_gateway"],
        env={
            **gateway_files.env(GATEWAY_TRANSPORT="http", GATEWAY_HTTP_PORT=str(free_port())),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "mcpServers.x" in done.stderr and "both 'command' and 'url'" in done.stderr
    assert "Traceback" not in done.stderr
