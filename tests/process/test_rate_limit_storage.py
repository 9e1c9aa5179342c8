"""Per-agent rate limits shared in Redis across a Granian gateway process and one in this process,
and GATEWAY_RATE_LIMIT_STORAGE's start-up errors as the command line reports them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from conftest import STARTUP_SECONDS, GatewayFiles, asgi_gateway, scraped, start_http_gateway
from inprocess.test_rate_limit_storage import (
    FALLBACK,
    RULES,
    RedisServer,
    agents,
    call,
    refused,
    running_redis,
)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from running_redis(tmp_path)


async def test_limit_holds_across_a_process_and_an_in_process_gateway(
    gateway_files: GatewayFiles, redis_server: RedisServer
) -> None:
    """The fourth call in a minute is refused whichever gateway it lands on."""
    gateway_files.write_servers({})  # no downstream: the limits are charged before any is reached
    gateway_files.write_rules(RULES)
    process = start_http_gateway(gateway_files, GATEWAY_RATE_LIMIT_STORAGE=redis_server.url)
    try:
        status = httpx.get(f"{process.base_url}/ready", timeout=30).json()["rate_limits"]
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
        metrics = httpx.get(f"{process.base_url}/metrics", timeout=30).text
        assert scraped(metrics)[("gateway_rate_limited_total", (("agent", "limited"),))] == 1
        assert scraped(metrics)[(FALLBACK, ())] == 0
    finally:
        process.stop()
    keys = sorted(key.decode() for key in redis_server.client().keys("*"))
    assert keys, "nothing was counted in redis"
    assert all(key.startswith("agent-mcp-gateway:") for key in keys), keys
    assert any("/agent/limited/" in key for key in keys) and any("/agent/steady/" in key for key in keys)


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
        timeout=STARTUP_SECONDS,
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
        timeout=STARTUP_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "  GATEWAY_RATE_LIMIT_STORAGE=redis://gateway:***@cache:6379/2" in result.stdout.splitlines()
    assert "s3cret" not in result.stdout + result.stderr
