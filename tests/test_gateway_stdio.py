"""The gateway over stdio, driven by an MCP client, in front of real downstream servers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    STANDARD_RULES,
    GatewayFiles,
    everything_server,
    fixture_server,
    gateway_call,
    process_alive,
    stdio_gateway,
    time_server,
    wait_until,
)
from mcp import MCPError


@pytest.fixture
def standard(gateway_files: GatewayFiles) -> GatewayFiles:
    gateway_files.write_servers(
        {
            "echo": fixture_server("echo", env={"ECHO_PREFIX": "${TEST_ECHO_PREFIX:-from-config:}"}),
            "slow": fixture_server("slow", timeout_ms=30_000),
            "crashing": fixture_server("crashing"),
            "progress": fixture_server("progress"),
            "time": time_server(),
            "everything": everything_server(),
        }
    )
    gateway_files.write_rules(STANDARD_RULES)
    return gateway_files


async def error_of(client, gateway_tool: str, /, **arguments) -> MCPError:
    with pytest.raises(MCPError) as caught:
        await client.call_tool_mcp(gateway_tool, arguments)
    return caught.value


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_discovery_is_filtered_per_agent(standard: GatewayFiles, mode: str) -> None:
    async with stdio_gateway(standard, mode=mode) as client:
        listed = {tool.name for tool in await client.list_tools()}
        assert listed == {"list_servers", "get_server_tools", "execute_tool"}

        builder = await gateway_call(client, "list_servers", agent_id="builder")
        assert {s["name"] for s in builder["servers"]} == {
            "echo",
            "slow",
            "crashing",
            "progress",
            "time",
            "everything",
        }
        researcher = await gateway_call(client, "list_servers", agent_id="researcher", include_metadata=True)
        assert {s["name"] for s in researcher["servers"]} == {"echo", "time"}
        time_entry = next(s for s in researcher["servers"] if s["name"] == "time")
        assert time_entry["transport"] == "stdio" and time_entry["health"] in ("up", "connecting")

        tools = await gateway_call(client, "get_server_tools", agent_id="researcher", server="echo")
        names = {tool["name"] for tool in tools["tools"]}
        assert names == {"web_search", "web_fetch", "get_user_all", "echo"}
        assert tools["total_available"] == 4 and tools["returned"] == 4
        assert all("inputSchema" in tool for tool in tools["tools"])

        builder_tools = await gateway_call(client, "get_server_tools", agent_id="builder", server="echo")
        builder_names = {tool["name"] for tool in builder_tools["tools"]}
        assert "drop_table" not in builder_names and "delete_row" not in builder_names
        assert {"echo", "add", "get_user_one", "web_search"} <= builder_names


async def test_get_server_tools_filters_and_budget(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard) as client:
        only = await gateway_call(
            client, "get_server_tools", agent_id="builder", server="echo", names="echo, add"
        )
        assert [t["name"] for t in only["tools"]] == ["echo", "add"] or {
            t["name"] for t in only["tools"]
        } == {"echo", "add"}
        pattern = await gateway_call(
            client, "get_server_tools", agent_id="builder", server="echo", pattern="web_*"
        )
        assert {t["name"] for t in pattern["tools"]} == {"web_search", "web_fetch"}
        full = await gateway_call(client, "get_server_tools", agent_id="builder", server="everything")
        assert full["returned"] == full["total_available"] > 5
        budget = full["tokens_used"] // 3
        cut = await gateway_call(
            client, "get_server_tools", agent_id="builder", server="everything", max_schema_tokens=budget
        )
        assert 0 < cut["returned"] < full["returned"]
        assert cut["tokens_used"] <= budget
        assert cut["total_available"] == full["total_available"]


async def test_policy_errors_carry_codes_and_rules(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard) as client:
        denied = await error_of(client, "execute_tool", agent_id="builder", server="echo", tool="drop_table")
        assert denied.code == -32000
        assert denied.data["code"] == "DENIED_BY_POLICY"
        assert denied.data["rule"] == "agents.builder.deny.tools.echo[0]"
        assert denied.data["agent_id"] == "builder" and denied.data["tool"] == "drop_table"

        hidden = await error_of(client, "execute_tool", agent_id="researcher", server="slow", tool="sleep")
        assert hidden.code == -32000 and hidden.data["rule"] == "default-deny"
        not_listed = await error_of(client, "execute_tool", agent_id="researcher", server="echo", tool="add")
        assert not_listed.code == -32000 and not_listed.data["rule"] == "agents.researcher.allow.tools.echo"
        server_denied = await error_of(client, "get_server_tools", agent_id="researcher", server="everything")
        assert server_denied.code == -32000

        unknown = await error_of(client, "list_servers", agent_id="intruder")
        assert unknown.code == -32003 and unknown.data["code"] == "INVALID_AGENT_ID"
        missing = await error_of(client, "list_servers")
        assert missing.code == -32003

        no_tool = await error_of(
            client, "execute_tool", agent_id="builder", server="echo", tool="no_such_tool"
        )
        assert no_tool.code == -32002 and no_tool.data == {
            "code": "TOOL_NOT_FOUND",
            "server": "echo",
            "tool": "no_such_tool",
        }
        bad_args = await error_of(client, "execute_tool", agent_id="builder", tool="echo")
        assert bad_args.code == -32602
        for error in (denied, unknown, no_tool, bad_args):
            assert "Traceback" not in error.message and "/" not in error.message

    decisions = {(line["tool"], line["decision"], line["error_code"]) for line in standard.audit_lines()}
    assert ("drop_table", "DENY", "DENIED_BY_POLICY") in decisions
    assert ("no_such_tool", "ERROR", "TOOL_NOT_FOUND") in decisions
    line = next(line for line in standard.audit_lines() if line["tool"] == "drop_table")
    assert line["rule"] == "agents.builder.deny.tools.echo[0]" and line["agent_id"] == "builder"
    assert set(line) >= {
        "timestamp",
        "agent_id",
        "operation",
        "server",
        "tool",
        "decision",
        "rule",
        "error_code",
        "latency_ms",
        "session_id",
        "request_id",
    }


async def test_results_pass_through_unchanged(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard) as client:
        added = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "add", "args": {"a": 2, "b": 3}}
        )
        assert not added.is_error and added.structured_content == {"result": 5}
        structured = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "structured"}
        )
        assert isinstance(structured.structured_content, dict) and structured.structured_content
        failed = await client.call_tool_mcp(
            "execute_tool",
            {
                "agent_id": "builder",
                "server": "echo",
                "tool": "fail",
                "args": {"message": "broken on purpose"},
            },
        )
        assert failed.is_error is True
        assert "broken on purpose" in failed.content[0].text
        echoed = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "echo", "args": {"text": "hi"}}
        )
        assert "from-config:hi" in echoed.content[0].text  # ${VAR:-default} reached the process
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
        everything = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "builder", "server": "everything", "tool": "echo", "args": {"message": "ref"}},
        )
        assert not everything.is_error and "ref" in everything.content[0].text


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_and_logs_reach_the_client(standard: GatewayFiles, mode: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[object] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(message) -> None:
        logs.append(message.data)

    async with stdio_gateway(standard, mode=mode, log_handler=on_log) as client:
        result = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "builder", "server": "progress", "tool": "count", "args": {"n": 4, "delay": 0.02}},
            progress_handler=on_progress,
        )
    assert not result.is_error and "4" in result.content[0].text
    assert [p[0] for p in progress] == sorted(p[0] for p in progress) and len(progress) == 4
    assert len(logs) == 4


async def test_timeout_gives_timeout_error_and_gateway_stays_healthy(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard) as client:
        started = time.monotonic()
        timed_out = await error_of(
            client,
            "execute_tool",
            agent_id="builder",
            server="slow",
            tool="sleep",
            args={"seconds": 5},
            timeout_ms=300,
        )
        assert time.monotonic() - started < 4
        assert timed_out.code == -32004
        assert timed_out.data == {"code": "TIMEOUT", "operation": "execute_tool", "timeout_ms": 300}
        quick = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "builder", "server": "slow", "tool": "sleep", "args": {"seconds": 0.01}},
        )
        assert not quick.is_error


async def test_killed_stdio_server_is_unavailable_then_restarted(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard) as client:
        first = await gateway_call_tool(client, "crashing", "pid")
        crashed = await error_of(client, "execute_tool", agent_id="builder", server="crashing", tool="crash")
        assert crashed.code == -32001 and crashed.data["server"] == "crashing"
        second = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                second = await gateway_call_tool(client, "crashing", "pid")
                break
            except MCPError as error:
                assert error.code == -32001
                await asyncio.sleep(0.2)
        assert second is not None and second != first
        assert not process_alive(first)


async def gateway_call_tool(client, server: str, tool: str, **args):
    result = await client.call_tool_mcp(
        "execute_tool", {"agent_id": "builder", "server": server, "tool": tool, "args": args}
    )
    assert not result.is_error, result.content
    return result.structured_content["result"]


async def test_rules_reload_within_a_second_and_bad_json_keeps_old_rules(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard) as client:
        before = await gateway_call(client, "list_servers", agent_id="researcher")
        assert {s["name"] for s in before["servers"]} == {"echo", "time"}

        rules = {"agents": {**STANDARD_RULES["agents"], "researcher": {"allow": {"servers": ["time"]}}}}
        standard.write_rules(rules)
        changed_at = time.monotonic()
        while True:
            now = await gateway_call(client, "list_servers", agent_id="researcher")
            if {s["name"] for s in now["servers"]} == {"time"}:
                break
            assert time.monotonic() - changed_at < 1.0, "rules change not applied within one second"
            await asyncio.sleep(0.02)

        standard.rules.write_text("{ this is not json")
        await asyncio.sleep(1.0)
        still = await gateway_call(client, "list_servers", agent_id="researcher")
        assert {s["name"] for s in still["servers"]} == {"time"}
        denied = await error_of(client, "execute_tool", agent_id="researcher", server="echo", tool="echo")
        assert denied.code == -32000


async def test_removed_server_process_ends_and_others_keep_running(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard) as client:
        slow_pid = await gateway_call_tool(client, "slow", "pid")
        crashing_pid = await gateway_call_tool(client, "crashing", "pid")
        servers = {
            "echo": fixture_server("echo", env={"ECHO_PREFIX": "${TEST_ECHO_PREFIX:-from-config:}"}),
            "crashing": fixture_server("crashing"),
            "progress": fixture_server("progress"),
            "time": time_server(),
            "everything": everything_server(),
        }
        standard.write_servers(servers)
        assert await asyncio.to_thread(wait_until, lambda: not process_alive(slow_pid), 10)
        assert process_alive(crashing_pid)
        assert await gateway_call_tool(client, "crashing", "pid") == crashing_pid
        gone = await error_of(client, "execute_tool", agent_id="builder", server="slow", tool="pid")
        assert gone.code == -32001


async def test_tool_list_changes_are_picked_up(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"changing": fixture_server("list_changing")})
    gateway_files.write_rules({"agents": {"dev": {"allow": {"servers": ["*"]}}}})
    async with stdio_gateway(gateway_files) as client:
        before = await gateway_call(client, "get_server_tools", agent_id="dev", server="changing")
        assert "fresh_tool" not in {t["name"] for t in before["tools"]}
        await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "dev", "server": "changing", "tool": "add_tool", "args": {"name": "fresh_tool"}},
        )
        deadline = time.monotonic() + 5
        names: set[str] = set()
        while time.monotonic() < deadline:
            after = await gateway_call(client, "get_server_tools", agent_id="dev", server="changing")
            names = {t["name"] for t in after["tools"]}
            if "fresh_tool" in names:
                break
            await asyncio.sleep(0.05)
        assert "fresh_tool" in names


async def test_no_child_process_outlives_the_gateway(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard) as client:
        pids = [await gateway_call_tool(client, name, "pid") for name in ("slow", "crashing")]
        assert all(process_alive(pid) for pid in pids)
    assert await asyncio.to_thread(wait_until, lambda: not any(process_alive(pid) for pid in pids), 15)


async def test_debug_status_only_with_debug(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard, GATEWAY_DEBUG="1") as client:
        assert "get_gateway_status" in {tool.name for tool in await client.list_tools()}
        status = await gateway_call(client, "get_gateway_status")
        assert set(status["agents"]) == {"builder", "researcher"}
        assert status["reloads"][0]["source"] == "startup"
        assert set(status["servers"]) >= {"echo", "time"}


async def test_sighup_reloads(standard: GatewayFiles) -> None:
    async with stdio_gateway(standard, GATEWAY_DEBUG="1") as client:
        status = await gateway_call(client, "get_gateway_status")
        os.kill(status["pid"], signal.SIGHUP)
        deadline = time.monotonic() + 5
        sources: list[str] = []
        while time.monotonic() < deadline:
            status = await gateway_call(client, "get_gateway_status")
            sources = [event["source"] for event in status["reloads"]]
            if "SIGHUP" in sources:
                break
            await asyncio.sleep(0.05)
        assert "SIGHUP" in sources
        assert all(event["ok"] for event in status["reloads"])


def test_sigterm_over_stdio_closes_servers_and_exits_0(standard: GatewayFiles) -> None:
    env = {**os.environ, **standard.env()}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "agent_mcp_gateway"],
        cwd=standard.directory,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: len(child_pids(gateway.pid)) >= 6, timeout=30)
        children = child_pids(gateway.pid)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
        assert wait_until(lambda: not any(process_alive(pid) for pid in children), timeout=10)
    finally:
        if gateway.poll() is None:
            gateway.kill()


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in path.read_text().split()]
    return found
