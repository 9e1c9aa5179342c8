"""The gateway's MCP behaviour, in process: its FastMCP server reached by an MCP client in memory
(what a stdio client sees, minus the pipe), in front of real downstream server processes.

Read-only tests share one gateway (`standard`); tests that crash, reconfigure or change a
downstream server start their own with only the servers they need. The gateway as a stdio
process, and its signals, are tested in test_gateway_stdio.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import MCPError

from conftest import (
    AUDIT_SPEC_FIELDS,
    STANDARD_RULES,
    WAIT_SECONDS,
    GatewayFiles,
    MemoryGateway,
    error_of,
    eventually,
    everything_server,
    execute,
    fixture_server,
    gateway_call,
    gateway_call_tool,
    memory_gateway,
    new_gateway_files,
    process_alive,
    served_over_http,
    time_server,
)

ECHO_WITH_PREFIX = fixture_server("echo", env={"ECHO_PREFIX": "${TEST_ECHO_PREFIX:-from-config:}"})
UNREACHABLE = "http://127.0.0.1:9/mcp"  # the discard port: nothing answers MCP there


@pytest.fixture(scope="module")
async def standard(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MemoryGateway]:
    """One gateway in front of seven servers for the module's read-only tests."""
    files = new_gateway_files(tmp_path_factory.mktemp("standard"))
    with served_over_http("progress") as progress_url:
        files.write_servers(
            {
                "echo": ECHO_WITH_PREFIX,
                "slow": fixture_server("slow", timeout_ms=30_000),
                "crashing": fixture_server("crashing"),
                "progress": fixture_server("progress"),
                "progress-http": {"description": "progress over HTTP", "url": progress_url},
                "time": time_server(),
                "everything": everything_server(),
            }
        )
        files.write_rules(STANDARD_RULES)
        async with memory_gateway(files) as running:
            assert await eventually(lambda: running.gateway.ready, 30), "downstream servers did not start"
            yield running


# --- the shared gateway -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_discovery_is_filtered_per_agent(standard: MemoryGateway, mode: str) -> None:
    async with standard.client(mode) as client:
        listed = {tool.name for tool in await client.list_tools()}
        assert listed == {"list_servers", "search_tools", "get_server_tools", "execute_tool"}

        builder = await gateway_call(client, "list_servers", agent_id="builder")
        assert {s["name"] for s in builder["servers"]} == {
            "echo",
            "slow",
            "crashing",
            "progress",
            "progress-http",
            "time",
            "everything",
        }
        researcher = await gateway_call(client, "list_servers", agent_id="researcher", include_metadata=True)
        assert {s["name"] for s in researcher["servers"]} == {"echo", "time"}
        time_entry = next(s for s in researcher["servers"] if s["name"] == "time")
        assert time_entry["transport"] == "stdio" and time_entry["health"] == "up"

        tools = await gateway_call(client, "get_server_tools", agent_id="researcher", server="echo")
        names = {tool["name"] for tool in tools["tools"]}
        assert names == {"web_search", "web_fetch", "get_user_all", "echo"}
        assert tools["total_available"] == 4 and tools["returned"] == 4
        assert all("inputSchema" in tool for tool in tools["tools"])

        builder_tools = await gateway_call(client, "get_server_tools", agent_id="builder", server="echo")
        builder_names = {tool["name"] for tool in builder_tools["tools"]}
        assert "drop_table" not in builder_names and "delete_row" not in builder_names
        assert {"echo", "add", "get_user_one", "web_search"} <= builder_names


async def test_get_server_tools_filters_and_budget(standard: MemoryGateway) -> None:
    async with standard.client() as client:
        only = await gateway_call(
            client, "get_server_tools", agent_id="builder", server="echo", names="echo, add"
        )
        assert {t["name"] for t in only["tools"]} == {"echo", "add"}
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


async def test_policy_errors_carry_codes_and_rules(standard: MemoryGateway) -> None:
    async with standard.client() as client:
        denied = await error_of(execute(client, "echo", "drop_table", agent_id="builder"))
        assert denied.code == -32000
        assert denied.data["code"] == "DENIED_BY_POLICY"
        assert denied.data["rule"] == "agents.builder.deny.tools.echo[0]"
        assert denied.data["agent_id"] == "builder" and denied.data["tool"] == "drop_table"

        hidden = await error_of(execute(client, "slow", "sleep", agent_id="researcher"))
        assert hidden.code == -32000 and hidden.data["rule"] == "default-deny"
        not_listed = await error_of(execute(client, "echo", "add", agent_id="researcher"))
        assert not_listed.code == -32000 and not_listed.data["rule"] == "agents.researcher.allow.tools.echo"
        server_denied = await error_of(
            client.call_tool_mcp("get_server_tools", {"agent_id": "researcher", "server": "everything"})
        )
        assert server_denied.code == -32000 and server_denied.data["rule"] == "default-deny"

        unknown = await error_of(client.call_tool_mcp("list_servers", {"agent_id": "intruder"}))
        assert unknown.code == -32003 and unknown.data["code"] == "INVALID_AGENT_ID"
        missing = await error_of(client.call_tool_mcp("list_servers", {}))
        assert missing.code == -32003 and missing.data["code"] == "INVALID_AGENT_ID"

        no_tool = await error_of(execute(client, "echo", "no_such_tool", agent_id="builder"))
        assert no_tool.code == -32002 and no_tool.data == {
            "code": "TOOL_NOT_FOUND",
            "server": "echo",
            "tool": "no_such_tool",
        }
        bad_args = await error_of(
            client.call_tool_mcp("execute_tool", {"agent_id": "builder", "tool": "echo"})
        )
        assert bad_args.code == -32602
        for error in (denied, unknown, no_tool, bad_args):
            assert "Traceback" not in error.message and "/" not in error.message

    def lines() -> list[dict[str, Any]]:
        own = {"drop_table", "no_such_tool"}  # tools no other test in this module names
        return [line for line in standard.files.audit_lines() if line["tool"] in own]

    assert await eventually(lambda: len(lines()) == 2)
    decisions = {(line["tool"], line["decision"], line["error_code"]) for line in lines()}
    assert decisions == {
        ("drop_table", "DENY", "DENIED_BY_POLICY"),
        ("no_such_tool", "ERROR", "TOOL_NOT_FOUND"),
    }
    line = next(line for line in lines() if line["tool"] == "drop_table")
    assert line["rule"] == "agents.builder.deny.tools.echo[0]" and line["agent_id"] == "builder"
    assert set(line) >= AUDIT_SPEC_FIELDS


async def test_results_pass_through_unchanged(standard: MemoryGateway) -> None:
    async with standard.client() as client:
        added = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "add", "args": {"a": 2, "b": 3}}
        )
        assert not added.is_error and added.structured_content == {"result": 5}
        structured = await client.call_tool_mcp(
            "execute_tool", {"agent_id": "builder", "server": "echo", "tool": "structured"}
        )
        assert structured.structured_content == {
            "name": "fixture",
            "nested": {"numbers": [1, 2, 3], "flag": True, "inner": {"depth": 2}},
        }
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
        assert echoed.content[0].text == "from-config:hi"  # ${VAR:-default} reached the process
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
        assert not everything.is_error and everything.content[0].text == "Echo: ref"


@pytest.mark.parametrize("server", ["progress", "progress-http"])
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_and_logs_reach_the_client(standard: MemoryGateway, mode: str, server: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(message: Any) -> None:
        logs.append(message.data)

    async with standard.client(mode, log_handler=on_log) as client:
        result = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "builder", "server": server, "tool": "count", "args": {"n": 4, "delay": 0.02}},
            progress_handler=on_progress,
        )
    assert not result.is_error and result.content[0].text == "counted 4"
    assert progress == [(step, 4, f"step {step}") for step in (1, 2, 3, 4)]
    assert [entry["msg"] for entry in logs] == [f"step {step} of 4" for step in (1, 2, 3, 4)]


async def test_timeout_gives_timeout_error_and_gateway_stays_healthy(standard: MemoryGateway) -> None:
    async with standard.client() as client:
        started = time.monotonic()
        timed_out = await error_of(
            execute(client, "slow", "sleep", agent_id="builder", timeout_ms=300, seconds=60)
        )
        # Before the 60 s sleep could have ended: the timeout, not the sleep, ended the call.
        waited = time.monotonic() - started
        assert waited < 55, f"the 300 ms timeout took {waited:.0f} s"
        assert timed_out.code == -32004
        assert timed_out.data == {"code": "TIMEOUT", "operation": "execute_tool", "timeout_ms": 300}
        quick = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "builder", "server": "slow", "tool": "sleep", "args": {"seconds": 0.01}},
        )
        assert not quick.is_error and quick.content[0].text == "slept 0.01"


# --- a gateway of their own ---------------------------------------------------------------------


async def test_debug_status_only_with_debug(standard: MemoryGateway, gateway_files: GatewayFiles) -> None:
    async with standard.client() as client:
        assert "get_gateway_status" not in {tool.name for tool in await client.list_tools()}
    gateway_files.write_servers({"echo": fixture_server("echo")})
    gateway_files.write_rules(STANDARD_RULES)
    async with memory_gateway(gateway_files, GATEWAY_DEBUG="1") as debug, debug.client() as client:
        assert "get_gateway_status" in {tool.name for tool in await client.list_tools()}
        assert await eventually(lambda: debug.gateway.ready, 30)
        status = await gateway_call(client, "get_gateway_status")
    assert set(status["agents"]) == {"builder", "researcher"}
    assert [event["source"] for event in status["reloads"]] == ["startup"]
    assert status["servers"]["echo"]["state"] == "up"
    assert status["config_paths"]["rules"] == str(gateway_files.rules)


async def test_killed_stdio_server_is_unavailable_then_restarted(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"crashing": fixture_server("crashing")})
    gateway_files.write_rules(STANDARD_RULES)
    async with memory_gateway(gateway_files) as running, running.client() as client:
        first = await gateway_call_tool(client, "crashing", "pid", agent_id="builder")
        crashed = await error_of(execute(client, "crashing", "crash", agent_id="builder"))
        assert crashed.code == -32001 and crashed.data["server"] == "crashing"
        refusals: list[int] = []  # codes of the calls made while it restarts

        async def current_pid() -> Any:
            try:
                return await gateway_call_tool(client, "crashing", "pid", agent_id="builder")
            except MCPError as error:
                refusals.append(error.code)
                return None

        second = await current_pid()
        deadline = time.monotonic() + WAIT_SECONDS
        while second is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            second = await current_pid()
        assert set(refusals) <= {-32001}, refusals
        assert second is not None and second != first
        assert not process_alive(first)


async def test_rules_reload_promptly_and_bad_json_keeps_old_rules(gateway_files: GatewayFiles) -> None:
    """Policy is about configured servers, up or not: these two are never reached."""
    gateway_files.write_servers({"echo": {"url": UNREACHABLE}, "time": {"url": UNREACHABLE}})
    gateway_files.write_rules(STANDARD_RULES)
    async with memory_gateway(gateway_files) as running, running.client() as client:
        before = await gateway_call(client, "list_servers", agent_id="researcher")
        assert {s["name"] for s in before["servers"]} == {"echo", "time"}

        rules = {"agents": {**STANDARD_RULES["agents"], "researcher": {"allow": {"servers": ["time"]}}}}
        gateway_files.write_rules(rules)
        changed_at = time.monotonic()
        while True:
            now = await gateway_call(client, "list_servers", agent_id="researcher")
            if {s["name"] for s in now["servers"]} == {"time"}:
                break
            # Well under a second on an idle machine (a 100 ms debounce); the bound is for load.
            waited = time.monotonic() - changed_at
            assert waited < WAIT_SECONDS, f"rules change not applied within {waited:.0f} s"
            # Each poll is an operation the agent's rate limit (600/minute) counts: at most 120
            # polls in the bound (every 20 ms, a loaded machine's slow reload ran it out).
            await asyncio.sleep(0.5)

        gateway_files.rules.write_text("{ this is not json")
        rejected = await eventually(lambda: [event for event in running.gateway.reloads if not event.ok])
        assert rejected and rejected[0].source == "file-change"
        still = await gateway_call(client, "list_servers", agent_id="researcher")
        assert {s["name"] for s in still["servers"]} == {"time"}
        denied = await error_of(execute(client, "echo", "echo", agent_id="researcher"))
        assert denied.code == -32000


async def test_removed_server_process_ends_and_others_keep_running(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"slow": fixture_server("slow"), "crashing": fixture_server("crashing")})
    gateway_files.write_rules(STANDARD_RULES)
    async with memory_gateway(gateway_files) as running, running.client() as client:
        slow_pid = await gateway_call_tool(client, "slow", "pid", agent_id="builder")
        crashing_pid = await gateway_call_tool(client, "crashing", "pid", agent_id="builder")
        gateway_files.write_servers({"crashing": fixture_server("crashing")})
        assert await eventually(lambda: not process_alive(slow_pid), 10)
        assert process_alive(crashing_pid)
        assert await gateway_call_tool(client, "crashing", "pid", agent_id="builder") == crashing_pid
        gone = await error_of(execute(client, "slow", "pid", agent_id="builder"))
        assert gone.code == -32001


async def test_tool_list_changes_are_picked_up(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"changing": fixture_server("list_changing")})
    gateway_files.write_rules({"agents": {"dev": {"allow": {"servers": ["*"]}}}})
    async with memory_gateway(gateway_files) as running, running.client() as client:
        before = await gateway_call(client, "get_server_tools", agent_id="dev", server="changing")
        assert "fresh_tool" not in {t["name"] for t in before["tools"]}
        added = await client.call_tool_mcp(
            "execute_tool",
            {"agent_id": "dev", "server": "changing", "tool": "add_tool", "args": {"name": "fresh_tool"}},
        )
        assert added.content[0].text == "added fresh_tool"
        deadline = time.monotonic() + WAIT_SECONDS
        names: set[str] = set()
        while time.monotonic() < deadline:
            after = await gateway_call(client, "get_server_tools", agent_id="dev", server="changing")
            names = {t["name"] for t in after["tools"]}
            if "fresh_tool" in names:
                break
            await asyncio.sleep(0.25)  # each poll is charged to the rate limit (600/minute)
        assert "fresh_tool" in names
