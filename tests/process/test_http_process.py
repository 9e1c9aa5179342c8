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
from pathlib import Path
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


MODERN = "2026-07-28"


def modern_call(client: httpx.Client, url: str, number: int) -> dict[str, Any]:
    """One stateless 2026-07-28 `execute_tool` call on a new connection: its JSON-RPC answer."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "workers-test", "version": "1"},
    }
    arguments = {"agent_id": "builder", "server": "echo", "tool": "echo", "args": {"text": f"w{number}"}}
    body = {
        "jsonrpc": "2.0",
        "id": number,
        "method": "tools/call",
        "params": {"name": "execute_tool", "arguments": arguments, "_meta": meta},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "execute_tool",
        "Connection": "close",  # a new connection each time, which either worker may accept
    }
    response = client.post(url, json=body, headers=headers)
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return next(m for m in map(json.loads, filter(None, data)) if m.get("id") == number)
    answer: dict[str, Any] = response.json()
    return answer


def audited_calls(path: Path) -> int:
    """`execute_tool` lines in an audit file, up to its last complete line (a worker's writer
    thread may be halfway through one)."""
    if not path.exists():
        return 0
    lines = path.read_text().split("\n")[:-1]
    return sum(json.loads(line)["operation"] == "execute_tool" for line in lines)


def test_two_workers_serve_stateless_calls_each_with_its_own_audit_chain(
    gateway_files: GatewayFiles,
) -> None:
    """GATEWAY_WORKERS=2: 2026-07-28 calls (no session) are served by either worker; each worker
    writes its own hash-chained audit file; start-up warns about session-era clients."""
    gateway_files.write_servers({"echo": fixture_server("echo")})
    gateway_files.write_rules(STANDARD_RULES)
    gateway = start_http_gateway(gateway_files, GATEWAY_WORKERS="2")
    second = gateway_files.audit.with_name(f"{gateway_files.audit.stem}-2{gateway_files.audit.suffix}")
    audits = (gateway_files.audit, second)
    try:
        served = 0
        with httpx.Client(timeout=WAIT_SECONDS) as client:
            # Connections go to whichever worker accepts first: call until both have served some
            # (bounded generously: on a loaded machine one worker may take long runs).
            while served < 400 and not (audited_calls(gateway_files.audit) and audited_calls(second)):
                answer = modern_call(client, gateway.mcp_url, served)
                assert answer["result"]["content"][0]["text"] == f"w{served}", answer
                served += 1
                if served % 20 == 0:
                    wait_until(lambda n=served: sum(map(audited_calls, audits)) >= n)
        assert audited_calls(gateway_files.audit) > 0 and audited_calls(second) > 0, served
        assert "session-era clients" in gateway.log_text()
    finally:
        assert gateway.stop() == 0
    for path in (gateway_files.audit, second):
        done = subprocess.run(
            [PY, "-m", "agent_mcp_gateway", "audit", "verify", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert audited_calls(gateway_files.audit) + audited_calls(second) == served
