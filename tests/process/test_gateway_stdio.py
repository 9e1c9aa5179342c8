"""The gateway as a stdio process, as a local MCP client launches it: the MCP session over its
pipes, its child processes, and its signals. What the gateway does with each call is tested in
process in test_gateway_mcp.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    STANDARD_RULES,
    WAIT_SECONDS,
    GatewayFiles,
    child_pids,
    fixture_server,
    gateway_call,
    gateway_call_tool,
    process_alive,
    stdio_gateway,
    wait_until,
)


@pytest.fixture
def two_children(gateway_files: GatewayFiles) -> GatewayFiles:
    """A gateway configuration with two stdio downstream servers (two child processes)."""
    gateway_files.write_servers({"slow": fixture_server("slow"), "crashing": fixture_server("crashing")})
    gateway_files.write_rules(STANDARD_RULES)
    return gateway_files


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_stdio_session_end_to_end(gateway_files: GatewayFiles, mode: str) -> None:
    """Discovery, a call whose server got its environment from the config, and progress and log
    notifications relayed over the gateway's stdout."""
    gateway_files.write_servers(
        {
            "echo": fixture_server("echo", env={"ECHO_PREFIX": "${TEST_ECHO_PREFIX:-from-config:}"}),
            "progress": fixture_server("progress"),
        }
    )
    gateway_files.write_rules(STANDARD_RULES)
    progress: list[float] = []
    logs: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_log(message: Any) -> None:
        logs.append(message.data)

    async with stdio_gateway(gateway_files, mode=mode, log_handler=on_log) as client:
        assert {tool.name for tool in await client.list_tools()} == {
            "list_servers",
            "search_tools",
            "get_server_tools",
            "execute_tool",
        }
        researcher = await gateway_call(client, "list_servers", agent_id="researcher")
        assert [s["name"] for s in researcher["servers"]] == ["echo"]
        echoed = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "echo", "args": {"text": "hi"}}
        )
        assert echoed.content[0].text == "from-config:hi"
        counted = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "builder", "server": "progress", "tool": "count", "args": {"n": 3, "delay": 0.02}},
            progress_handler=on_progress,
        )
    assert counted.content[0].text == "counted 3"
    assert progress == [1, 2, 3]
    assert [entry["msg"] for entry in logs] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
    assert [line["tool"] for line in gateway_files.audit_lines()] == [None, "echo", "count"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_search_tools_over_stdio(gateway_files: GatewayFiles, mode: str) -> None:
    """search_tools in a real gateway process over stdio, in both eras: ranked across servers,
    cut to the agent's allowed tools."""
    gateway_files.write_servers({"echo": fixture_server("echo"), "progress": fixture_server("progress")})
    gateway_files.write_rules(STANDARD_RULES)
    async with stdio_gateway(gateway_files, mode=mode) as client:
        # search_tools: the researcher's allowed echo tools only (web_*, get_*_all, echo), across
        # servers, never a denied one even by its exact name.
        found = await gateway_call(
            client, "search_tools", agent_id="researcher", query="fetch a web page by url"
        )
        assert found["tools"][0]["server"] == "echo" and found["tools"][0]["tool"] == "web_fetch"
        for query in ("get_user_one", "count with progress"):
            hits = await gateway_call(client, "search_tools", agent_id="researcher", query=query, limit=50)
            names = {(hit["server"], hit["tool"]) for hit in hits["tools"]}
            assert names <= {("echo", n) for n in ("web_fetch", "web_search", "get_user_all", "echo")}, names
        counting = await gateway_call(client, "search_tools", agent_id="builder", query="count with progress")
        assert counting["tools"][0]["server"] == "progress"


async def test_no_child_process_outlives_the_gateway(two_children: GatewayFiles) -> None:
    async with stdio_gateway(two_children) as client:
        pids = [
            await gateway_call_tool(client, name, "pid", agent_id="builder") for name in ("slow", "crashing")
        ]
        assert all(process_alive(pid) for pid in pids)
    assert await asyncio.to_thread(wait_until, lambda: not any(process_alive(pid) for pid in pids), 15)


async def test_sighup_reloads(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({})
    gateway_files.write_rules(STANDARD_RULES)
    async with stdio_gateway(gateway_files, GATEWAY_DEBUG="1") as client:
        status = await gateway_call(client, "get_gateway_status")
        assert status["pid"] != os.getpid()
        os.kill(status["pid"], signal.SIGHUP)
        deadline = time.monotonic() + WAIT_SECONDS
        sources: list[str] = []
        while time.monotonic() < deadline:
            status = await gateway_call(client, "get_gateway_status")
            sources = [event["source"] for event in status["reloads"]]
            if "SIGHUP" in sources:
                break
            await asyncio.sleep(0.25)  # each poll is charged to the rate limit (600/minute)
        assert sources == ["startup", "SIGHUP"]
        assert all(event["ok"] for event in status["reloads"])


def test_sigterm_over_stdio_closes_servers_and_exits_0(two_children: GatewayFiles) -> None:
    env = {**os.environ, **two_children.env()}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "agent_mcp_gateway"],
        cwd=two_children.directory,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: {"slow.py", "crashing.py"} <= servers_started(gateway.pid), timeout=30)
        children = child_pids(gateway.pid)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(WAIT_SECONDS) == 0
        assert wait_until(lambda: not any(process_alive(pid) for pid in children), timeout=10)
    finally:
        if gateway.poll() is None:
            gateway.kill()


def servers_started(pid: int) -> set[str]:
    """The fixture scripts the process's children run (a child forked but not yet running its
    server still shows the parent's command line, and is left out)."""
    scripts = set()
    for child in child_pids(pid):
        try:
            arguments = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        scripts |= {Path(arg.decode()).name for arg in arguments if arg.endswith(b".py")}
    return scripts
