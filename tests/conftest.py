"""Shared harness of the gateway tests; each folder below is a tier, marked by its name.

- `unit/` (marker `unit`): one module at a time, folders mirroring the package's; no gateway, no
  process of the test's own (the ops checks run `promtool`).
- `inprocess/` (`inprocess`): the gateway's ASGI app driven by httpx and by fastmcp's client over
  in-process transports (`asgi_gateway`), or its MCP server reached in memory (`memory_gateway`),
  in front of real downstream server processes. Nothing listens on a port of the gateway's and no
  gateway process starts, so a test costs what its downstream servers cost.
- `process/` (`process`): real gateway processes started as a client or an operator starts them
  (`stdio_gateway`, `start_http_gateway`), Granian, signals, the CLI, start-up failures.
- `container/` (`container`): images and compose stacks under podman.

`pytest -m "not process and not container"` is the fast run. A top-level tests/test_*.py file
gets no tier marker until it is moved into a folder.

Waiting: helpers wait on what they wait for (a port answering, a process exiting, an event)
with bounds generous enough for a loaded shared machine (`STARTUP_SECONDS`), and say what they
waited for when the bound is reached.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from fastmcp import Client, FastMCP
from fastmcp.client.messages import MessageHandler
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from fastmcp.utilities.asgi_transport import StreamingASGITransport
from mcp import MCPError
from mcp_types import CallToolResult, ServerNotification
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe.metrics import REGISTRY
from agent_mcp_gateway.run.http_app import create_app
from agent_mcp_gateway.run.startup import load_config
from agent_mcp_gateway.server.build import build_server
from agent_mcp_gateway.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "tests" / "servers"
NODE_MODULES = ROOT / "tests" / ".servers" / "node_modules"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
PY = sys.executable
LAUNCH = SERVERS / "_launch.py"
TIERS = ("unit", "inprocess", "process", "container")
# How long a process may take to start answering (an interpreter importing fastmcp, Node.js):
# about 1 s on an idle machine; CLI runs and server start-ups took 5-30 s on this 2-core machine
# with a load average of 4-8 (other test runs beside this one).
STARTUP_SECONDS = 90.0
# The least time a wait for something that must happen gets (`wait_until`, `eventually`): the
# bound only decides how soon a failing test says so, and the figures tests name are what an
# idle machine needs.
WAIT_SECONDS = 60.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier, the first folder under tests/ it lives in."""
    tests = Path(__file__).resolve().parent
    for item in items:
        try:
            tier = item.path.resolve().relative_to(tests).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


ACCEPT_BOTH = {"Accept": "application/json, text/event-stream"}
# The audit line's fields that the specification names (the gateway adds more).
AUDIT_SPEC_FIELDS = frozenset(
    {
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
)


def initialize_message(client: str = "test", request_id: int = 1) -> dict[str, Any]:
    """A session-era `initialize` request, as raw-protocol tests send it."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": client, "version": "1"},
        },
    }


# The fork server's socket while the in-process tier runs (tests/inprocess/conftest.py): the
# stdio fixture servers a gateway starts then fork from it instead of importing fastmcp each.
_fork_server: list[Path] = []


def fixture_command(script: Path) -> dict[str, Any]:
    """How a gateway starts a stdio fixture server: its interpreter on `script`, or, while the
    fork server runs, a launcher that has the fork server fork it (a real process of its own,
    ended with the launcher; see tests/servers/_forkserver.py)."""
    if _fork_server:
        return {"command": PY, "args": ["-I", "-S", str(LAUNCH), str(_fork_server[-1]), str(script)]}
    return {"command": PY, "args": [str(script)]}


def fixture_server(name: str, **extra: Any) -> dict[str, Any]:
    return {"description": f"{name} fixture", **fixture_command(SERVERS / f"{name}.py"), **extra}


def shifting_server(files: GatewayFiles, name: str, tools: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The shifting fixture server, listing `tools` (name: description) from a file the test
    may rewrite (its `reload` tool reads it again and announces the change)."""
    tools_file = files.directory.parent / f"{name}-tools.json"
    tools_file.write_text(json.dumps(tools))
    return {**fixture_command(SERVERS / "shifting.py"), "env": {"SHIFTING_TOOLS": str(tools_file)}, **extra}


def everything_server() -> dict[str, Any]:
    if not EVERYTHING.is_file():
        pytest.fail("third-party test servers are missing: run ops/install-test-servers.sh")
    return {"description": "MCP reference server", "command": "node", "args": [str(EVERYTHING), "stdio"]}


def time_server() -> dict[str, Any]:
    return {"description": "Current time and time zones", "command": PY, "args": ["-m", "mcp_server_time"]}


STANDARD_RULES: dict[str, Any] = {
    "agents": {
        "builder": {
            "allow": {"servers": ["*"]},
            "deny": {"tools": {"echo": ["drop_*", "delete_*"]}},
        },
        "researcher": {
            "allow": {"servers": ["echo", "time"], "tools": {"echo": ["web_*", "get_*_all", "echo"]}},
        },
    },
}


@dataclass
class GatewayFiles:
    directory: Path
    mcp: Path
    rules: Path
    audit: Path

    def write_servers(self, servers: dict[str, Any]) -> None:
        _atomic_write(self.mcp, {"mcpServers": servers})

    def write_rules(self, rules: dict[str, Any]) -> None:
        _atomic_write(self.rules, rules)

    def audit_lines(self, path: Path | None = None) -> list[dict[str, Any]]:
        """The complete lines written so far: a running gateway's writer thread may be halfway
        through the last one (read then, it failed to parse once in a clean-root rehearsal)."""
        path = path or self.audit
        if not path.exists():
            return []
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def refusal_lines(self) -> list[dict[str, Any]]:
        """The unauthenticated refusals, kept apart from the decision log."""
        return self.audit_lines(self.audit.with_name(self.audit.name + ".refusals"))

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "GATEWAY_MCP_CONFIG": str(self.mcp),
            "GATEWAY_RULES": str(self.rules),
            "GATEWAY_AUDIT_LOG": str(self.audit),
            "GATEWAY_PING_INTERVAL": "1",
            # One attempt to connect a downstream server; under load one has taken over 20 s.
            "GATEWAY_CONNECT_TIMEOUT": "60",
            "PYTHONUNBUFFERED": "1",
        }
        # A stdio client passes the server only a few variables (HOME, PATH, ...): without this a
        # gateway process started from a worktree would import another checkout's package.
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        env.update(extra)
        return env


def _atomic_write(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


def new_gateway_files(root: Path) -> GatewayFiles:
    """The two configuration files in `root/config`, the audit log beside that folder."""
    config = root / "config"
    config.mkdir(parents=True)
    return GatewayFiles(
        config, config / ".mcp.json", config / ".mcp-gateway-rules.json", root / "audit.jsonl"
    )


@pytest.fixture
def gateway_files(tmp_path: Path) -> GatewayFiles:
    return new_gateway_files(tmp_path)


@asynccontextmanager
async def stdio_gateway(
    files: GatewayFiles, mode: str = "legacy", log_handler: Any = None, **env: str
) -> AsyncIterator[Client]:
    """A gateway subprocess over stdio, as a local MCP client launches it."""
    transport = StdioTransport(
        PY, ["-m", "agent_mcp_gateway"], env=files.env(**env), cwd=str(files.directory), keep_alive=False
    )
    async with Client(transport, mode=mode, init_timeout=60, timeout=60, log_handler=log_handler) as client:
        yield client


async def gateway_call(client: Client, tool: str, **arguments: Any) -> Any:
    """Call a gateway tool; its structured result, or the MCP error it raised."""
    result = await client.call_tool_mcp(tool, arguments)
    assert not result.is_error, result.content
    return result.structured_content


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


def wait_until(predicate: Any, timeout: float = WAIT_SECONDS, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds, for at least `WAIT_SECONDS` whatever `timeout` says."""
    deadline = time.monotonic() + max(timeout, WAIT_SECONDS)
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = STARTUP_SECONDS,
    what: str = "",
) -> None:
    """Until something accepts connections on 127.0.0.1:`port`. Fails at once when `process` (the
    one meant to listen) exits, and after `timeout` saying what did not start and how loaded the
    machine was: waiting for the process itself, not for a deadline it may miss under load."""
    what = what or f"a server on port {port}"
    started = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what} exited with status {process.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pass
        waited = time.monotonic() - started
        if waited > timeout:
            load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
            raise AssertionError(f"{what} did not listen within {waited:.0f} s (load average {load})")
        time.sleep(0.05)


@contextmanager
def fork_server(directory: Path) -> Iterator[Path]:
    """A fork server (tests/servers/_forkserver.py) listening on a socket in `directory`: its
    path. Within `forking_from(path)` the stdio fixture servers fork from it."""
    socket_path = directory / "fork.sock"
    process = subprocess.Popen([PY, str(SERVERS / "_forkserver.py"), str(socket_path)])
    try:
        started = time.monotonic()
        while not _accepts(socket_path):
            if process.poll() is not None:
                raise AssertionError(f"the fork server exited with status {process.returncode}")
            if time.monotonic() - started > STARTUP_SECONDS:
                raise AssertionError(f"the fork server did not listen within {STARTUP_SECONDS:.0f} s")
            time.sleep(0.05)
        yield socket_path
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def forking_from(socket_path: Path) -> Iterator[None]:
    """The stdio fixture servers configured meanwhile (`fixture_server`) fork from the fork
    server on `socket_path`: about 0.2 s of CPU a start instead of 2 (importing fastmcp)."""
    _fork_server.append(socket_path)
    try:
        yield
    finally:
        _fork_server.remove(socket_path)


def _accepts(socket_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.connect(str(socket_path))
            return True
        except OSError:
            return False


def listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
        return True
    except httpx.HTTPError:
        return False


class HttpFixtureServer:
    """A fixture server (tests/servers/NAME.py) as its own process speaking Streamable HTTP on a
    loopback port (a free one unless given). `start` waits until it listens; `stop` and `start`
    again restart it on the same port."""

    def __init__(self, name: str = "echo", port: int | None = None) -> None:
        self.name = name
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [PY, str(SERVERS / f"{self.name}.py"), "--http", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port, self.process, what=f"the {self.name} fixture server over HTTP")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def served_over_http(name: str) -> Iterator[str]:
    """A fixture server (tests/servers/NAME.py) over Streamable HTTP on a free port: its URL."""
    server = HttpFixtureServer(name)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def child_pids(pid: int) -> list[int]:
    """The process's children (of all its threads), from /proc."""
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in path.read_text().split()]
        except OSError:  # the thread (or the process) ended meanwhile
            continue
    return found


# --- calling the gateway's discovery tools -------------------------------------------------------


async def execute(
    client: Client,
    server: str,
    tool: str,
    /,
    *,
    agent_id: str = "dev",
    timeout_ms: int | None = None,
    **args: Any,
) -> CallToolResult:
    """`execute_tool(server, tool, args)` as `agent_id`: its result as it came (an error result
    included); a refusal, an MCP error, raises."""
    arguments: dict[str, Any] = {"agent_id": agent_id, "server": server, "tool": tool, "args": args}
    if timeout_ms is not None:
        arguments["timeout_ms"] = timeout_ms
    return await client.call_tool_mcp("execute_tool", arguments)


async def gateway_call_tool(
    client: Client, server: str, tool: str, /, *, agent_id: str = "dev", **args: Any
) -> Any:
    """The downstream tool's structured result through `execute_tool`, which must succeed."""
    result = await execute(client, server, tool, agent_id=agent_id, **args)
    assert not result.is_error, result.content
    return result.structured_content["result"]


async def error_of(call: Awaitable[Any]) -> MCPError:
    """The MCP error a call raises, e.g. `await error_of(execute(client, "echo", "drop_table"))`."""
    with pytest.raises(MCPError) as caught:
        await call
    return caught.value


@dataclass
class HttpGateway:
    process: subprocess.Popen[bytes]
    base_url: str
    files: GatewayFiles
    log_path: Path

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_http_gateway(
    files: GatewayFiles, wait_ready: bool = True, launcher: Sequence[str] = (), **env: str
) -> HttpGateway:
    """`launcher` goes before the gateway's command line (e.g. to run it in a namespace)."""
    port = free_port()
    log_path = files.directory.parent / f"gateway-{port}.log"
    full_env = {
        **os.environ,
        **files.env(GATEWAY_TRANSPORT="http", GATEWAY_HTTP_PORT=str(port), **env),
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*launcher, PY, "-m", "agent_mcp_gateway"],
            env=full_env,
            cwd=files.directory,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    gateway = HttpGateway(process, f"http://127.0.0.1:{port}", files, log_path)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited early:\n{gateway.log_text()}")
        try:
            response = httpx.get(f"{gateway.base_url}/{'ready' if wait_ready else 'health'}", timeout=1)
            if response.status_code == 200:
                return gateway
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    gateway.stop()
    raise AssertionError(f"gateway did not become ready:\n{gateway.log_text()}")


# --- in process ---------------------------------------------------------------------------------

BASE_URL = "http://127.0.0.1:8000"  # the address in-process requests name; nothing listens there
T = TypeVar("T")


@asynccontextmanager
async def held_open(context: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter and leave `context` in a task of its own.

    anyio's cancel scopes (a lifespan's, a client's) must be left by the task that entered them,
    and pytest-asyncio sets a fixture up and tears it down in different tasks; holding the
    context in its own task lets a module-scoped fixture keep it open across tests.
    """
    entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def hold() -> None:
        try:
            async with context as value:
                entered.set_result(value)
                await release.wait()
        except BaseException as exc:
            if entered.done():
                raise
            entered.set_exception(exc)

    task = asyncio.create_task(hold())
    try:
        yield await entered
    finally:
        release.set()
        await task


def gateway_settings(files: GatewayFiles, **env: str) -> Settings:
    """The settings a gateway process would read from `files.env(**env)`."""
    return load_settings(files.env(**env))


@dataclass
class AsgiGateway:
    """The HTTP service in this process with its lifespan running (downstreams connected)."""

    app: Starlette
    gateway: Gateway
    files: GatewayFiles
    base_url: str = BASE_URL

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def http(self, **options: Any) -> httpx.AsyncClient:
        """Raw HTTP to the app. httpx's ASGI transport buffers each response, which suits
        JSON answers and POSTs whose SSE stream ends with the answer; use `client` for MCP."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=self.base_url, **options
        )

    def client(self, mode: str = "legacy", headers: dict[str, str] | None = None, **options: Any) -> Client:
        """An MCP client over Streamable HTTP, streamed in process by fastmcp's ASGI bridge
        (its long-lived GET stream and SSE answers arrive as they are sent)."""

        def streaming(**client_options: Any) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(transport=StreamingASGITransport(self.app), **client_options)

        transport = StreamableHttpTransport(self.mcp_url, headers=headers, httpx_client_factory=streaming)
        options.setdefault("timeout", 30)
        return Client(transport, mode=mode, **options)


@asynccontextmanager
async def asgi_gateway(files: GatewayFiles, **env: str) -> AsyncIterator[AsgiGateway]:
    """`create_app(Gateway(...))` configured as `GATEWAY_*` variables would configure it, with the
    app's lifespan held open (httpx's ASGI transport does not run it)."""
    settings = gateway_settings(files, GATEWAY_TRANSPORT="http", **env)
    gateway = Gateway(load_config(settings), settings)
    app = create_app(gateway)
    async with held_open(app.router.lifespan_context(app)):
        yield AsgiGateway(app, gateway, files)


@dataclass
class MemoryGateway:
    """The gateway's MCP server in this process, reached in memory as stdio clients reach it."""

    server: FastMCP
    gateway: Gateway
    files: GatewayFiles

    def client(self, mode: str = "legacy", **options: Any) -> Client:
        options.setdefault("timeout", 30)
        return Client(self.server, mode=mode, **options)


@asynccontextmanager
async def memory_gateway(files: GatewayFiles, **env: str) -> AsyncIterator[MemoryGateway]:
    """The MCP layer without a transport process. One client is held connected for the whole
    context: fastmcp counts lifespan users, so clients that come and go meanwhile share one
    gateway (and its downstream processes) instead of starting and closing it each time."""
    settings = gateway_settings(files, **env)
    gateway = Gateway(load_config(settings), settings)
    server = build_server(gateway)
    async with held_open(Client(server)):
        yield MemoryGateway(server, gateway, files)


def answering(colour: str, calls: list[str], sampled: str) -> dict[str, Any]:
    """fastmcp client handlers that answer elicitation (`colour`), sampling (`sampled`) and roots
    (`file:///colour`), recording in `calls` which ran."""

    async def elicit(message: str, response_type: Any, params: Any, context: Any) -> dict[str, str]:
        calls.append("elicitation")
        return {"colour": colour}

    async def sample(messages: Any, params: Any, context: Any) -> str:
        calls.append("sampling")
        return sampled

    def roots(context: Any) -> list[str]:
        calls.append("roots")
        return [f"file:///{colour}"]

    return {"elicitation_handler": elicit, "sampling_handler": sample, "roots": roots}


class Heard(MessageHandler):
    """What a client heard, in arrival order: the methods of its notifications (given as a fastmcp
    client's `message_handler`) and the events of the listen streams it `follow`s."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._following: list[asyncio.Task[None]] = []

    async def on_notification(self, message: ServerNotification) -> None:
        self.events.append(message.method)

    def follow(self, stream: AsyncIterable[Any]) -> Heard:
        async def collect() -> None:
            async for event in stream:
                self.events.append(event)

        self._following.append(asyncio.create_task(collect()))
        return self

    def close(self) -> None:
        for task in self._following:
            task.cancel()


async def eventually(predicate: Callable[[], T], timeout: float = WAIT_SECONDS, interval: float = 0.05) -> T:
    """`wait_until` for async tests: polls without blocking the loop an in-process gateway runs
    on, and returns the predicate's last result (audit lines reach the file from a thread). Like
    `wait_until`, it waits at least `WAIT_SECONDS` before giving up."""
    deadline = time.monotonic() + max(timeout, WAIT_SECONDS)
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(interval)


def metric(name: str, **labels: str) -> float:
    """A sample's value in the process-wide Prometheus registry (0 when absent).

    Every in-process gateway of the test session counts into this one registry: compare a value
    before and after what a test does, never the value itself."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics body as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
