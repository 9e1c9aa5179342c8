"""Per-agent rate limits shared in Redis (GATEWAY_RATE_LIMIT_STORAGE), against a real redis-server.

Each test gets its own redis-server on a free loopback port in a temporary folder, so stopping
and starting it is the real thing: calls keep succeeding on a local fallback, /ready and the
gauge say so, and sharing resumes once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastmcp import Client
from mcp import MCPError

from conftest import (
    AsgiGateway,
    GatewayFiles,
    asgi_gateway,
    free_port,
    metric,
    scraped,
    start_http_gateway,
    wait_until,
)

RULES: dict[str, Any] = {
    "agents": {
        "limited": {"allow": {"servers": ["*"]}, "rate_limit": "3/minute"},
        "steady": {"allow": {"servers": ["*"]}},
    }
}
Agents = dict[str, Client]
FALLBACK = "gateway_rate_limit_storage_fallback"
STORAGE_ERRORS = "gateway_rate_limit_storage_errors_total"


class RedisServer:
    """A redis-server process on a fixed loopback port that a test can stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.directory), "--save", "", "--appendonly", "no", "--daemonize", "no"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def answers() -> bool:
            try:
                return bool(self.client().ping())
            except redis.ConnectionError:
                return False

        assert wait_until(answers, timeout=10), (self.directory / "redis.log").read_text()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (Debian package redis-server; ops/test.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


async def call(clients: Agents, agent_id: str) -> None:
    """One gateway operation as `agent_id` (list_servers: charged like every operation)."""
    result = await clients[agent_id].call_tool_mcp("list_servers", {"agent_id": agent_id})
    assert not result.is_error, result.content


async def refused(clients: Agents, agent_id: str) -> dict[str, Any]:
    with pytest.raises(MCPError) as limited:
        await clients[agent_id].call_tool_mcp("list_servers", {"agent_id": agent_id})
    assert limited.value.code == -32005
    data: dict[str, Any] = limited.value.data
    assert data["code"] == "RATE_LIMITED"
    return data


async def ready(service: AsgiGateway) -> dict[str, Any]:
    """The /ready body once the gateway is ready: 200 whatever the rate-limit storage's state."""
    deadline = time.monotonic() + 30
    async with service.http() as http:
        while (response := await http.get("/ready")).status_code == 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def two_gateways(
    stack: AsyncExitStack, files: GatewayFiles, storage: str
) -> tuple[AsgiGateway, Agents, AsgiGateway, Agents]:
    """Two gateways in this process with the same configuration, each with its MCP clients."""
    files.write_servers({})  # no downstream: the limits are charged before any is reached
    files.write_rules(RULES)
    first = await stack.enter_async_context(asgi_gateway(files, GATEWAY_RATE_LIMIT_STORAGE=storage))
    second = await stack.enter_async_context(asgi_gateway(files, GATEWAY_RATE_LIMIT_STORAGE=storage))
    return first, await agents(stack, first), second, await agents(stack, second)


async def agents(stack: AsyncExitStack, service: AsgiGateway | str) -> Agents:
    """One client (one session: a session acts as one agent) per agent of RULES."""

    def client() -> Client:
        if isinstance(service, AsgiGateway):
            return service.client()
        return Client(service, mode="legacy", timeout=30)

    return {agent: await stack.enter_async_context(client()) for agent in RULES["agents"]}


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def test_limit_holds_across_a_process_and_an_in_process_gateway(
    gateway_files: GatewayFiles, redis_server: RedisServer
) -> None:
    """The fourth call in a minute is refused whichever gateway it lands on."""
    gateway_files.write_servers({})  # no downstream: the limits are charged before any is reached
    gateway_files.write_rules(RULES)
    process = start_http_gateway(gateway_files, GATEWAY_RATE_LIMIT_STORAGE=redis_server.url)
    try:
        status = httpx.get(f"{process.base_url}/ready", timeout=5).json()["rate_limits"]
        assert status["storage"] == "redis" and status["state"] == "shared", status
        async with AsyncExitStack() as stack:
            local = await stack.enter_async_context(
                asgi_gateway(gateway_files, GATEWAY_RATE_LIMIT_STORAGE=redis_server.url)
            )
            near, far = await agents(stack, local), await agents(stack, process.mcp_url)
            await call(near, "limited")
            await call(far, "limited")
            await call(near, "limited")
            data = await refused(far, "limited")
            assert data["limit"] == "3/minute" and 0 < data["retry_after"] <= 60
            await refused(near, "limited")
            for clients in (near, far):  # another agent's limit is its own
                await call(clients, "steady")
        metrics = httpx.get(f"{process.base_url}/metrics", timeout=5).text
        assert scraped(metrics)[("gateway_rate_limited_total", (("agent", "limited"),))] == 1
        assert scraped(metrics)[(FALLBACK, ())] == 0
    finally:
        process.stop()
    keys = sorted(key.decode() for key in redis_server.client().keys("*"))
    assert keys, "nothing was counted in redis"
    assert all(key.startswith("agent-mcp-gateway:") for key in keys), keys
    assert any("/agent/limited/" in key for key in keys) and any("/agent/steady/" in key for key in keys)


async def test_redis_stopped_and_started_again(
    gateway_files: GatewayFiles,
    redis_server: RedisServer,
    stack: AsyncExitStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent_mcp_gateway")
    first, one, second, two = await two_gateways(stack, gateway_files, redis_server.url)
    assert (await ready(first))["rate_limits"]["state"] == "shared"
    errors_before = metric(STORAGE_ERRORS)
    for clients in (one, two):
        await call(clients, "steady")

    redis_server.stop()
    started = time.perf_counter()
    for _ in range(5):  # calls keep succeeding, each gateway counting alone
        for clients in (one, two):
            await call(clients, "steady")
    assert time.perf_counter() - started < 5
    for service in (first, second):
        status = (await ready(service))["rate_limits"]
        assert status["storage"] == "redis" and status["state"] == "fallback", status
        assert "ConnectionError" in status["error"]
    assert metric(FALLBACK) == 1
    assert metric(STORAGE_ERRORS) >= errors_before + 2
    # Counted locally: each gateway now allows the agent its own three calls.
    for clients in (one, two):
        for _ in range(3):
            await call(clients, "limited")
        await refused(clients, "limited")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "redis" in r.getMessage()]
    assert len(warnings) == 2, warnings  # one per gateway, not one per call

    redis_server.start()

    async def shared_again() -> bool:
        states = [(await ready(service))["rate_limits"]["state"] for service in (first, second)]
        return states == ["shared", "shared"]

    deadline = time.monotonic() + 15
    while not await shared_again():
        assert time.monotonic() < deadline, "the gateways did not go back to redis"
        await asyncio.sleep(0.1)
    assert metric(FALLBACK) == 0
    recovered = [r for r in caplog.records if r.levelno == logging.INFO and "again" in r.getMessage()]
    assert len(recovered) == 2, recovered
    # Shared again: the fresh Redis counts the agent's calls across both gateways.
    await call(one, "limited")
    await call(two, "limited")
    await call(one, "limited")
    await refused(two, "limited")
    await refused(one, "limited")


async def test_redis_unreachable_at_start(gateway_files: GatewayFiles, stack: AsyncExitStack) -> None:
    """Nothing listens at the configured address: the gateway starts, serves and limits locally."""
    first, one, _, _ = await two_gateways(stack, gateway_files, f"redis://127.0.0.1:{free_port()}/0")
    body = await ready(first)
    assert body["status"] == "ready"
    assert body["rate_limits"]["state"] == "fallback", body
    assert metric(FALLBACK) == 1
    for _ in range(3):
        await call(one, "limited")
    await refused(one, "limited")


async def test_memory_storage_reports_local(gateway_files: GatewayFiles, stack: AsyncExitStack) -> None:
    first, one, second, two = await two_gateways(stack, gateway_files, "memory")
    for service in (first, second):
        assert (await ready(service))["rate_limits"] == {"storage": "memory", "state": "local"}
    for _ in range(3):  # nothing shared: each gateway counts its own
        await call(one, "limited")
        await call(two, "limited")
    await refused(one, "limited")
    await refused(two, "limited")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("redis//cache:6379", "redis//cache:6379"),
        ("memcached://cache:11211", "memcached://cache:11211"),
        ("redis://cache:port/0", "redis://cache:port/0"),
        ("redis://cache:6379/zero", "redis://cache:6379/zero"),
        ("redis://:s3cret@cache/x", "redis://:***@cache/x"),
    ],
)
def test_bad_storage_is_one_line_and_exit_2(tmp_path: Path, value: str, shown: str) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GATEWAY_RATE_LIMIT_STORAGE": value}
    result = subprocess.run(
        [sys.executable, "-m", "agent_mcp_gateway", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"agent-mcp-gateway: GATEWAY_RATE_LIMIT_STORAGE={shown!r} is not valid: expected 'memory' or a "
        "Redis URL such as redis://redis:6379/0"
    ]
    assert "s3cret" not in result.stderr


def test_validate_shows_the_storage_without_its_password(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({})
    gateway_files.write_rules(RULES)
    env = {
        **gateway_files.env(),
        "PATH": os.environ["PATH"],
        "GATEWAY_RATE_LIMIT_STORAGE": "redis://gateway:s3cret@cache:6379/2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "agent_mcp_gateway", "validate", "--settings"],
        env=env,
        cwd=gateway_files.directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "  GATEWAY_RATE_LIMIT_STORAGE=redis://gateway:***@cache:6379/2" in result.stdout.splitlines()
    assert "s3cret" not in result.stdout + result.stderr
