"""Per-agent rate limits shared in Redis (GATEWAY_RATE_LIMIT_STORAGE), against a real redis-server,
counted by gateways in this process. A Granian gateway sharing the count, and the settings'
start-up errors, are in tests/process/test_rate_limit_storage.py.

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
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from fastmcp import Client
from mcp import MCPError

from conftest import (
    STARTUP_SECONDS,
    AsgiGateway,
    GatewayFiles,
    asgi_gateway,
    free_port,
    metric,
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

        def answers_or_exited() -> bool:
            return answers() or (self.process is not None and self.process.poll() is not None)

        assert wait_until(answers_or_exited, timeout=STARTUP_SECONDS) and answers(), (
            self.directory / "redis.log"
        ).read_text()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from running_redis(tmp_path)


def running_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, stopped at the end (the `redis_server` fixture)."""
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
    deadline = time.monotonic() + STARTUP_SECONDS
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

    deadline = time.monotonic() + STARTUP_SECONDS  # a probe every 2 s finds it answering
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
