"""Shared harness: real gateway processes (stdio and HTTP) in front of real downstream servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "tests" / "servers"
NODE_MODULES = ROOT / "tests" / ".servers" / "node_modules"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
PY = sys.executable


def fixture_server(name: str, **extra: Any) -> dict[str, Any]:
    return {"description": f"{name} fixture", "command": PY, "args": [str(SERVERS / f"{name}.py")], **extra}


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

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "GATEWAY_MCP_CONFIG": str(self.mcp),
            "GATEWAY_RULES": str(self.rules),
            "GATEWAY_AUDIT_LOG": str(self.audit),
            "GATEWAY_PING_INTERVAL": "1",
            "GATEWAY_CONNECT_TIMEOUT": "20",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(extra)
        return env


def _atomic_write(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


@pytest.fixture
def gateway_files(tmp_path: Path) -> GatewayFiles:
    config = tmp_path / "config"
    config.mkdir()
    return GatewayFiles(
        config, config / ".mcp.json", config / ".mcp-gateway-rules.json", tmp_path / "audit.jsonl"
    )


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


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def start_http_gateway(files: GatewayFiles, wait_ready: bool = True, **env: str) -> HttpGateway:
    port = free_port()
    log_path = files.directory.parent / f"gateway-{port}.log"
    full_env = {
        **os.environ,
        **files.env(GATEWAY_TRANSPORT="http", GATEWAY_HTTP_PORT=str(port), **env),
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [PY, "-m", "agent_mcp_gateway"],
            env=full_env,
            cwd=files.directory,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    gateway = HttpGateway(process, f"http://127.0.0.1:{port}", files, log_path)
    deadline = time.monotonic() + 60
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


@pytest.fixture
def http_gateway_factory(gateway_files: GatewayFiles) -> Iterator[Any]:
    started: list[HttpGateway] = []

    def start(**env: str) -> HttpGateway:
        gateway = start_http_gateway(gateway_files, **env)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.process.poll() is None:
            gateway.stop()
