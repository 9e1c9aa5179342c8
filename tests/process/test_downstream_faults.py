"""Downstream servers that misbehave: junk on stdout, huge results, crashes, grandchildren, a
killed gateway, repeated failures, errors full of internals, and log messages of concurrent calls.

Every test runs a real gateway process (stdio or Granian) in front of real server processes,
mostly the raw fixture (tests/servers/raw.py), which speaks JSON-RPC without an SDK so it can
write what SDK servers never would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import pytest
from fastmcp import Client
from mcp import MCPError

from conftest import (
    PY,
    SERVERS,
    WAIT_SECONDS,
    GatewayFiles,
    HttpGateway,
    error_of,
    eventually,
    execute,
    gateway_call,
    gateway_call_tool,
    process_alive,
    served_over_http,
    start_http_gateway,
    stdio_gateway,
    wait_until,
)

RULES = {"agents": {"dev": {"allow": {"servers": ["*"]}}}}


def raw_server(**extra: Any) -> dict[str, Any]:
    return {"description": "raw JSON-RPC fixture", "command": PY, "args": [str(SERVERS / "raw.py")], **extra}


@asynccontextmanager
async def http_gateway(files: GatewayFiles, **env: str) -> AsyncIterator[HttpGateway]:
    gateway = start_http_gateway(files, **env)
    try:
        yield gateway
    finally:
        if gateway.process.poll() is None:
            gateway.stop()


def log_records(gateway: HttpGateway) -> list[dict[str, Any]]:
    records = []
    for line in gateway.log_text().splitlines():
        with suppress(ValueError):
            records.append(json.loads(line))
    return records


def scrape(gateway: HttpGateway, name: str, server: str) -> float:
    text = httpx.get(f"{gateway.base_url}/metrics").text
    found = re.search(rf'^{name}{{server="{server}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# --- junk on stdout -------------------------------------------------------------------------------


async def test_junk_on_stdout_is_logged_rate_limited_and_skipped(gateway_files: GatewayFiles) -> None:
    # One session: the junk count below is one process's (each agent's would add its own banner).
    gateway_files.write_servers({"raw": raw_server(env={"RAW_BANNER": "1"}, isolation="shared")})
    gateway_files.write_rules(RULES)
    async with http_gateway(gateway_files) as gateway, Client(gateway.mcp_url) as client:
        pid = await gateway_call_tool(client, "raw", "pid")
        assert await gateway_call_tool(client, "raw", "junk", lines=200) == "junk written"
        assert await gateway_call_tool(client, "raw", "echo", text="still here") == "still here"
        assert await gateway_call_tool(client, "raw", "pid") == pid  # the same session all along
        raw = httpx.get(f"{gateway.base_url}/ready").json()["servers"]["raw"]
        assert raw["state"] == "up" and raw["last_error"] is None
        # 4 junk lines in the banner, 160 among the 200 (every fifth line is empty, not junk)
        assert scrape(gateway, "gateway_downstream_junk_lines_total", "raw") == 164
    warnings = [r for r in log_records(gateway) if r.get("message", "").startswith("downstream wrote a line")]
    assert 1 <= len(warnings) <= 2, warnings  # at most one per 10 s, however many lines
    assert warnings[0]["server"] == "raw" and warnings[0]["problem"] == "not JSON"
    assert "Server starting up" in warnings[0]["preview"]


# --- result size ----------------------------------------------------------------------------------


@pytest.mark.parametrize("id_last", [False, True], ids=["id-first", "id-last"])
async def test_result_over_max_result_bytes_is_refused_without_dropping_the_connection(
    gateway_files: GatewayFiles, id_last: bool
) -> None:
    gateway_files.write_servers({"raw": raw_server(max_result_bytes=1_000_000)})
    gateway_files.write_rules(RULES)
    async with stdio_gateway(gateway_files) as client:
        pid = await gateway_call_tool(client, "raw", "pid")
        bystander = asyncio.create_task(execute(client, "raw", "sleep", seconds=1.0))
        await asyncio.sleep(0.3)  # two calls pending: the error must find its call by id
        refused = await error_of(execute(client, "raw", "blob", size=2_000_000, id_last=id_last))
        assert refused.code == -32006
        assert refused.data["code"] == "RESULT_TOO_LARGE" and refused.data["limit"] == 1_000_000
        assert refused.data["size"] > 2_000_000 and refused.data["server"] == "raw"
        assert "max_result_bytes" in refused.message
        assert not (await bystander).is_error
        fits = await execute(client, "raw", "blob", size=900_000, id_last=id_last)
        assert fits.content[0].text == "x" * 900_000
        assert await gateway_call_tool(client, "raw", "pid") == pid


# --- process groups -------------------------------------------------------------------------------


async def test_crashed_server_group_is_ended_before_it_is_restarted(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"raw": raw_server()})
    gateway_files.write_rules(RULES)
    async with stdio_gateway(gateway_files) as client:
        first = await gateway_call_tool(client, "raw", "pid")
        sleeper = await gateway_call_tool(client, "raw", "spawn_sleeper")
        assert process_alive(sleeper)
        crashed = await error_of(execute(client, "raw", "crash"))
        assert crashed.code == -32001
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            with suppress(MCPError):
                second = await gateway_call_tool(client, "raw", "pid")
                break
            assert time.monotonic() < deadline, "the server was not restarted"
            await asyncio.sleep(0.1)
        assert second != first
        assert not process_alive(sleeper)


async def test_server_group_is_ended_at_shutdown(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"raw": raw_server()})
    gateway_files.write_rules(RULES)
    async with stdio_gateway(gateway_files) as client:
        server = await gateway_call_tool(client, "raw", "pid")
        sleeper = await gateway_call_tool(client, "raw", "spawn_sleeper")
    assert await asyncio.to_thread(wait_until, lambda: not process_alive(sleeper), 10)
    assert not process_alive(server)


async def test_children_die_with_a_killed_stdio_gateway(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"raw": raw_server()})
    gateway_files.write_rules(RULES)
    async with stdio_gateway(gateway_files, GATEWAY_DEBUG="1") as client:
        gateway_pid = (await gateway_call(client, "get_gateway_status"))["pid"]
        children = [
            await gateway_call_tool(client, "raw", "pid"),
            await gateway_call_tool(client, "raw", "spawn_sleeper"),
        ]
        os.kill(gateway_pid, signal.SIGKILL)
        assert await asyncio.to_thread(wait_until, lambda: not any(map(process_alive, children)), 10)


@pytest.mark.parametrize("victim", ["worker", "main"])
async def test_children_die_with_a_killed_granian_gateway(gateway_files: GatewayFiles, victim: str) -> None:
    """`worker` is the gateway process itself; `main` is Granian's, the process an operator runs."""
    gateway_files.write_servers({"raw": raw_server()})
    gateway_files.write_rules(RULES)
    async with http_gateway(gateway_files, GATEWAY_DEBUG="1") as gateway:
        async with Client(gateway.mcp_url) as client:
            worker = (await gateway_call(client, "get_gateway_status"))["pid"]
            children = [
                worker,
                await gateway_call_tool(client, "raw", "pid"),
                await gateway_call_tool(client, "raw", "spawn_sleeper"),
            ]
        os.kill(worker if victim == "worker" else gateway.process.pid, signal.SIGKILL)
        assert await asyncio.to_thread(wait_until, lambda: not any(map(process_alive, children[1:])), 10)
        if victim == "main":
            assert await asyncio.to_thread(wait_until, lambda: not process_alive(worker), 10)


# --- circuit breaker ------------------------------------------------------------------------------


async def test_circuit_opens_after_repeated_timeouts_and_a_probe_closes_it(
    gateway_files: GatewayFiles,
) -> None:
    # The shared session, whose circuit /ready and the gauge report (an agent's session has its own).
    gateway_files.write_servers({"raw": raw_server(isolation="shared")})
    gateway_files.write_rules(RULES)
    async with http_gateway(gateway_files) as gateway, Client(gateway.mcp_url) as client:
        for _ in range(5):
            timed_out = await error_of(execute(client, "raw", "sleep", timeout_ms=100, seconds=5))
            assert timed_out.code == -32004
        started = time.monotonic()
        refused = await error_of(execute(client, "raw", "echo", text="fails fast"))
        assert time.monotonic() - started < 10  # refused at once, not after a call's timeout
        assert refused.code == -32001 and refused.data["server"] == "raw"
        assert "circuit open" in refused.data["reason"] and "call timed out" in refused.data["reason"]
        circuit = httpx.get(f"{gateway.base_url}/ready").json()["servers"]["raw"]["circuit"]
        assert circuit["state"] == "open" and circuit["consecutive_failures"] == 5
        assert scrape(gateway, "gateway_downstream_circuit_open", "raw") == 1
        await asyncio.sleep(circuit["retry_in_seconds"] + 0.1)
        assert await gateway_call_tool(client, "raw", "echo", text="probe") == "probe"
        circuit = httpx.get(f"{gateway.base_url}/ready").json()["servers"]["raw"]["circuit"]
        assert circuit == {"state": "closed", "consecutive_failures": 0}
        assert scrape(gateway, "gateway_downstream_circuit_open", "raw") == 0


# --- downstream errors ----------------------------------------------------------------------------


async def test_downstream_errors_reach_the_caller_without_their_details(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"raw": raw_server()})
    gateway_files.write_rules(RULES)
    async with http_gateway(gateway_files) as gateway:
        async with Client(gateway.mcp_url) as client:
            custom = await error_of(execute(client, "raw", "fail_rpc", code=-32099))
            standard = await error_of(execute(client, "raw", "fail_rpc", code=-32602))
        assert custom.code == -32007 and standard.code == -32602
        for error in (custom, standard):
            assert error.data["code"] == "DOWNSTREAM_ERROR" and error.data["server"] == "raw"
            assert "Traceback" not in error.message and "/" not in error.message
            assert "secret" not in json.dumps(error.data) and "\n" not in error.message
            assert error.data["request_id"] in error.message
        logged = [r for r in log_records(gateway) if r.get("request_id") == custom.data["request_id"]]
        assert any("Traceback" in r.get("error", "") and r.get("code") == -32099 for r in logged), logged
    assert {"DOWNSTREAM_ERROR"} == {line["error_code"] for line in gateway_files.audit_lines()}


# --- log notifications ----------------------------------------------------------------------------


@pytest.fixture
def chatter_over_http() -> Iterator[str]:
    with served_over_http("chatter") as url:
        yield url


@pytest.mark.parametrize("downstream", ["stdio", "http"])
async def test_log_messages_reach_only_the_call_they_belong_to(
    gateway_files: GatewayFiles, downstream: str, request: pytest.FixtureRequest
) -> None:
    """Two agents call the same server at overlapping times; each call logs its own tag.

    Over HTTP the downstream's response stream names the call, so every message reaches its
    caller. Over stdio nothing does: a message reaches a caller only while that call is the
    server's only one, so each agent hears its own call alone, and neither ever hears the other.
    """
    url = request.getfixturevalue("chatter_over_http") if downstream == "http" else None
    gateway_files.write_servers({"chatter": {"description": "chatter", "url": url} if url else raw_server()})
    gateway_files.write_rules(
        {"agents": {"alice": {"allow": {"servers": ["*"]}}, "bob": {"allow": {"servers": ["*"]}}}}
    )
    heard: dict[str, list[str]] = {"alice": [], "bob": []}

    def listener(agent: str) -> Any:
        async def on_log(message: Any) -> None:
            heard[agent].append(str(message.data))

        return on_log

    async def chatter(client: Client, agent: str) -> None:
        arguments = {"tag": agent, "n": 20, "delay": 0.05}
        result = await client.call_tool_mcp(
            "execute_tool", {"agent_id": agent, "server": "chatter", "tool": "chatter", "args": arguments}
        )
        assert not result.is_error, result.content

    async with (
        http_gateway(gateway_files) as gateway,
        Client(gateway.mcp_url, log_handler=listener("alice")) as alice,
        Client(gateway.mcp_url, log_handler=listener("bob")) as bob,
    ):
        first = asyncio.create_task(chatter(alice, "alice"))
        await asyncio.sleep(0.4)
        await asyncio.gather(first, chatter(bob, "bob"))
        # Notifications may still be on their way (all 20 each over HTTP, some over stdio).
        want = 20 if downstream == "http" else 1
        await eventually(lambda: min(len(heard["alice"]), len(heard["bob"])) >= want)
    assert all("alice" in message for message in heard["alice"]), heard
    assert all("bob" in message for message in heard["bob"]), heard
    if downstream == "http":
        assert len(heard["alice"]) == 20 and len(heard["bob"]) == 20
    else:
        assert heard["alice"] and heard["bob"]
