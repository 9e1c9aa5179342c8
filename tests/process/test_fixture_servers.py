"""The downstream servers the gateway tests rely on, checked directly with a real MCP client.

If one of these fails, gateway tests that use it fail for reasons that are not the gateway's.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from mcp import MCPError

from conftest import (
    ROOT,
    WAIT_SECONDS,
    fixture_server,
    fork_server,
    forking_from,
    free_port,
    initialize_message,
    process_alive,
    wait_for_port,
    wait_until,
)

SERVERS = ROOT / "tests" / "servers"
NODE_MODULES = ROOT / "tests" / ".servers" / "node_modules" / "@modelcontextprotocol"
EVERYTHING = NODE_MODULES / "server-everything" / "dist" / "index.js"
FILESYSTEM = NODE_MODULES / "server-filesystem" / "dist" / "index.js"
DEMO_CONFIG = ROOT / "app" / "agent_mcp_gateway" / "demo" / "config"
MODES = ["legacy", "auto"]  # 2025-11-25 sessions, and the sessionless 2026-07-28 protocol

needs_node_servers = pytest.mark.skipif(
    not EVERYTHING.is_file(), reason="third-party test servers not installed: run ops/install-test-servers.sh"
)


def fixture(name: str, env: dict[str, str] | None = None) -> StdioTransport:
    return StdioTransport(sys.executable, [str(SERVERS / f"{name}.py")], env=env, keep_alive=False)


@asynccontextmanager
async def connect(target: Any, mode: str = "legacy", **kwargs: Any) -> AsyncIterator[Client]:
    async with Client(target, mode=mode, init_timeout=30, timeout=15, **kwargs) as client:
        yield client


async def tool_names(client: Client) -> set[str]:
    return {tool.name for tool in await client.list_tools()}


@pytest.fixture
def http_server() -> Iterator[Any]:
    """Start a server process on a free loopback port; stopped at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], port_flag: bool = True, env: dict[str, str] | None = None) -> str:
        port = free_port()
        args = [*command, "--http", str(port)] if port_flag else command
        process = subprocess.Popen(
            args,
            env={**os.environ, "PORT": str(port), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        wait_for_port(port, process, what=" ".join(command))
        return f"http://127.0.0.1:{port}/mcp"

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- echo -------------------------------------------------------------------------------------


async def test_echo_server_tools() -> None:
    async with connect(fixture("echo", env={"ECHO_PREFIX": "pre:", "FIXTURE_VALUE": "42"})) as client:
        assert await tool_names(client) == {
            "echo",
            "add",
            "fail",
            "structured",
            "env",
            "request_headers",
            "request_meta",
            "get_user_all",
            "get_user_one",
            "drop_table",
            "delete_row",
            "web_search",
            "web_fetch",
        }
        echoed = await client.call_tool("echo", {"text": "hi"})
        assert echoed.data == "pre:hi" and echoed.content[0].text == "pre:hi"

        added = await client.call_tool_mcp("add", {"a": 2, "b": 3})
        assert not added.is_error and added.structured_content == {"result": 5}

        failed = await client.call_tool_mcp("fail", {"message": "broken on purpose"})
        assert failed.is_error and failed.content[0].text == "broken on purpose"

        structured = await client.call_tool_mcp("structured", {})
        assert structured.structured_content["nested"]["inner"] == {"depth": 2}

        assert (await client.call_tool("env", {"name": "FIXTURE_VALUE"})).data == "42"
        assert (await client.call_tool("env", {"name": "NOT_SET_ANYWHERE"})).data == ""
        assert (await client.call_tool("get_user_one", {"user_id": 7})).data == {"id": 7, "name": "user7"}
        assert "dropped t" in (await client.call_tool("drop_table", {"table": "t"})).data


# --- slow and crashing ----------------------------------------------------------------------------


async def test_slow_server_sleeps_without_blocking() -> None:
    async with connect(fixture("slow")) as client:
        pid = (await client.call_tool("pid", {})).data
        assert isinstance(pid, int) and pid != os.getpid()
        started = time.monotonic()
        # Two sleeps at once finish together when the server sleeps asynchronously: 3 s, not the
        # 6 s of one after the other (2 s of room for a loaded machine).
        results = await asyncio.gather(
            client.call_tool("sleep", {"seconds": 3}), client.call_tool("sleep", {"seconds": 3})
        )
        assert [r.data for r in results] == ["slept 3", "slept 3"]
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(("tool", "args"), [("crash", {}), ("sleep_then_crash", {"seconds": 0.1})])
async def test_crashing_server_dies_mid_call(tool: str, args: dict[str, Any]) -> None:
    async with connect(fixture("crashing")) as client:
        assert (await client.call_tool("echo", {"text": "still here"})).data == "still here"
        pid = (await client.call_tool("pid", {})).data
        with pytest.raises(MCPError) as lost:
            await client.call_tool(tool, args)
        assert (lost.value.code, lost.value.message) == (-32000, "Connection closed")
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Whether the process is still alive after a generous wait for it to end."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            if state == "Z":
                return False
        except (ProcessLookupError, FileNotFoundError):
            return False
        time.sleep(0.05)
    return True


# --- progress and logs ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_progress_and_log_notifications(mode: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(message: mcp_types.LoggingMessageNotificationParams) -> None:
        logs.append(message.data["msg"])

    async with connect(fixture("progress"), mode=mode, log_handler=on_log) as client:
        result = await client.call_tool("count", {"n": 3, "delay": 0.01}, progress_handler=on_progress)
    assert result.data == "counted 3"
    assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert logs == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]


# --- list_changed -----------------------------------------------------------------------------


class ListChanges:
    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self.count += 1
            self.changed.set()

    async def wait(self, timeout: float = 5) -> None:
        await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()


@pytest.mark.parametrize("mode", MODES)
async def test_tool_list_changes_are_announced(mode: str) -> None:
    changes = ListChanges()
    async with connect(fixture("list_changing"), mode=mode, message_handler=changes) as client:
        assert await tool_names(client) == {"v1", "add_tool", "remove_tool", "add_tool_later"}
        assert (await client.call_tool("v1", {})).data == "v1"

        assert (await client.call_tool("add_tool", {"name": "v2"})).data == "added v2"
        await changes.wait()
        assert "v2" in await tool_names(client)
        assert (await client.call_tool("v2", {})).data == "v2"

        assert (await client.call_tool("remove_tool", {"name": "v2"})).data == "removed v2"
        await changes.wait()
        assert "v2" not in await tool_names(client)
        missing = await client.call_tool_mcp("remove_tool", {"name": "v2"})
        assert missing.is_error
        assert changes.count == 2


async def test_tool_list_change_outside_a_request_reaches_session_clients_only() -> None:
    """After the call has returned, only a session-era connection has a channel to notify on."""
    legacy = ListChanges()
    async with connect(fixture("list_changing"), mode="legacy", message_handler=legacy) as client:
        await client.call_tool("add_tool_later", {"name": "v3", "delay": 0.05})
        await legacy.wait()
        assert "v3" in await tool_names(client)

    sessionless = ListChanges()
    async with connect(fixture("list_changing"), mode="auto", message_handler=sessionless) as client:
        await client.call_tool("add_tool_later", {"name": "v3", "delay": 0.05})
        deadline = time.monotonic() + WAIT_SECONDS
        while "v3" not in await tool_names(client):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert sessionless.count == 0  # changed, but nobody could be told


# --- Streamable HTTP --------------------------------------------------------------------------


async def test_fixture_over_streamable_http(http_server: Any) -> None:
    url = http_server([sys.executable, str(SERVERS / "progress.py")])
    for mode in MODES:
        progress: list[float] = []
        async with connect(url, mode=mode) as client:
            result = await client.call_tool(
                "count", {"n": 2, "delay": 0.01}, progress_handler=recorder(progress)
            )
        assert result.data == "counted 2" and progress == [1, 2], mode


def recorder(values: list[float]) -> Any:
    """A progress handler that appends each progress value to `values`."""

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        values.append(value)

    return on_progress


# --- demo -------------------------------------------------------------------------------------


async def test_demo_notes_server() -> None:
    transport = StdioTransport(
        sys.executable, ["-m", "agent_mcp_gateway.demo.notes_server"], cwd=str(ROOT), keep_alive=False
    )
    async with connect(transport) as client:
        tools = {tool.name: tool for tool in await client.list_tools()}
        assert set(tools) == {"add_note", "list_notes", "get_note", "search_notes", "delete_note"}
        read_only = {
            name for name, tool in tools.items() if tool.annotations and tool.annotations.read_only_hint
        }
        assert read_only == {"list_notes", "get_note", "search_notes"}

        first = (
            await client.call_tool(
                "add_note", {"title": "Gateway", "body": "policy per agent", "tags": ["MCP"]}
            )
        ).data
        await client.call_tool("add_note", {"title": "Groceries", "body": "milk, eggs"})
        assert first["id"] == 1 and first["tags"] == ["mcp"]
        assert [n["title"] for n in (await client.call_tool("list_notes", {})).data] == [
            "Gateway",
            "Groceries",
        ]
        assert [n["id"] for n in (await client.call_tool("list_notes", {"tag": "mcp"})).data] == [1]
        hits = (await client.call_tool("search_notes", {"query": "agent policy"})).data
        assert [h["id"] for h in hits] == [1]
        assert (await client.call_tool("get_note", {"note_id": 1})).data["body"] == "policy per agent"
        assert "deleted note 1" in (await client.call_tool("delete_note", {"note_id": 1})).data
        gone = await client.call_tool_mcp("get_note", {"note_id": 1})
        assert gone.is_error and "no note with id 1" in gone.content[0].text


def test_demo_notes_persist(tmp_path: Path) -> None:
    from agent_mcp_gateway.demo.notes_server import NoteStore

    path = tmp_path / "notes.json"
    NoteStore(path).add("kept", "across runs", ["a"])
    again = NoteStore(path)
    assert [n.title for n in again.all()] == ["kept"]
    assert again.add("next", "", []).id == 2


def test_demo_configuration_loads_and_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_mcp_gateway.access.policy import PolicyEngine
    from agent_mcp_gateway.config import load

    monkeypatch.setenv("GATEWAY_PYTHON", sys.executable)
    config = load(DEMO_CONFIG / ".mcp.json", DEMO_CONFIG / ".mcp-gateway-rules.json")
    assert set(config.servers) == {"time", "notes"} and not config.warnings
    assert all(server.description for server in config.servers.values())
    assert config.servers["notes"].command == sys.executable

    policy = PolicyEngine(config.rules)
    assert policy.decide("researcher", "time", "get_current_time").allowed
    assert policy.decide("researcher", "notes", "search_notes").allowed
    assert not policy.decide("researcher", "notes", "add_note").allowed
    assert not policy.decide("researcher", "notes", "delete_note").allowed
    assert policy.decide("admin", "notes", "delete_note").allowed
    default = policy.resolve_agent(None)
    assert default == "default" and not policy.decide(default, "time", "get_current_time").allowed


async def test_demo_time_server_starts_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_mcp_gateway.config import load_mcp_config

    monkeypatch.setenv("GATEWAY_PYTHON", sys.executable)
    server = load_mcp_config(DEMO_CONFIG / ".mcp.json").mcpServers["time"]
    transport = StdioTransport(server.command, list(server.args), keep_alive=False)
    async with connect(transport) as client:
        assert await tool_names(client) == {"get_current_time", "convert_time"}
        now = await client.call_tool_mcp("get_current_time", {"timezone": "UTC"})
        assert not now.is_error and '"timezone": "UTC"' in now.content[0].text


# --- third-party servers (ops/install-test-servers.sh) ---------------------------------------


@needs_node_servers
@pytest.mark.parametrize("mode", MODES)
async def test_server_everything_over_stdio(mode: str) -> None:
    async with connect(
        StdioTransport("node", [str(EVERYTHING), "stdio"], keep_alive=False), mode=mode
    ) as client:
        assert {"echo", "get-sum", "trigger-long-running-operation"} <= await tool_names(client)
        echoed = await client.call_tool_mcp("echo", {"message": "ref"})
        assert not echoed.is_error and echoed.content[0].text == "Echo: ref"


@needs_node_servers
async def test_server_everything_over_streamable_http(http_server: Any) -> None:
    url = http_server(["node", str(EVERYTHING), "streamableHttp"], port_flag=False)
    async with connect(url) as client:
        assert "echo" in await tool_names(client)
        assert (await client.call_tool_mcp("get-sum", {"a": 2, "b": 3})).is_error is False


@needs_node_servers
async def test_server_filesystem_over_stdio(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello from a test")
    transport = StdioTransport("node", [str(FILESYSTEM), str(tmp_path)], keep_alive=False)
    async with connect(transport) as client:
        read = await client.call_tool_mcp("read_text_file", {"path": str(tmp_path / "hello.txt")})
        assert not read.is_error and read.content[0].text == "hello from a test"
        outside = await client.call_tool_mcp("read_text_file", {"path": "/etc/hostname"})
        assert outside.is_error


# --- the in-process tier's fork server ------------------------------------------------------------


CRASH = {"name": "crash", "arguments": {}}


def launch(command: dict[str, Any]) -> subprocess.Popen[bytes]:
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    return subprocess.Popen([command["command"], *command["args"]], **pipes)


def send(process: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(message).encode() + b"\n")
    process.stdin.flush()


def answer(process: subprocess.Popen[bytes], message: dict[str, Any]) -> dict[str, Any]:
    """Send one JSON-RPC request over the process's stdin; its answer from stdout."""
    assert process.stdout is not None
    send(process, message)
    ready, _, _ = select.select([process.stdout], [], [], WAIT_SECONDS)
    assert ready, f"no answer to {message['method']} within {WAIT_SECONDS:.0f} s"
    answered: dict[str, Any] = json.loads(process.stdout.readline())
    return answered


def forked_pid(process: subprocess.Popen[bytes]) -> int:
    """Initialize the crashing fixture behind `process` (a launcher) and ask it for its pid."""
    assert "result" in answer(process, initialize_message())
    send(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "pid", "arguments": {}}}
    pid: int = answer(process, call)["result"]["structuredContent"]["result"]
    return pid


def test_a_forked_fixture_server_lives_and_ends_with_its_launcher(tmp_path: Path) -> None:
    """A fixture server forked for a launcher (what the in-process tier's gateways run) is a
    process of its own that answers over the launcher's stdio, ends when the launcher is killed,
    and ends the launcher with its own exit status when it exits."""
    with fork_server(tmp_path) as socket_path, forking_from(socket_path):
        command = fixture_server("crashing")
        killed = launch(command)
        try:
            server = forked_pid(killed)
            assert server != killed.pid and process_alive(server)
            killed.kill()
            assert wait_until(lambda: not process_alive(server)), "the server outlived its launcher"
        finally:
            killed.kill()
            killed.wait()

        for ending, status in (("crash", 1), ("end of input", 0)):
            launcher = launch(command)
            try:
                server = forked_pid(launcher)
                assert launcher.stdin is not None
                if ending == "crash":  # the crash tool exits with status 1
                    send(launcher, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": CRASH})
                else:  # a stdio server ends cleanly when its input does
                    launcher.stdin.close()
                assert launcher.wait(WAIT_SECONDS) == status, ending
                assert wait_until(lambda pid=server: not process_alive(pid))
            finally:
                launcher.kill()
                launcher.wait()
