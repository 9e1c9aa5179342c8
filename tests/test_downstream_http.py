"""Streamable HTTP downstream servers: headers, start-up order, and outages.

The downstream server is a real process (it is started, stopped and restarted); the gateway runs
in process, reached in memory.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import MCPError

from conftest import PY, SERVERS, GatewayFiles, free_port, gateway_call, memory_gateway

RULES = {"agents": {"dev": {"allow": {"servers": ["*"]}}}}


class EchoOverHttp:
    """The echo fixture server as a separate process speaking Streamable HTTP."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [PY, str(SERVERS / "echo.py"), "--http", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("echo server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def echo_http() -> Iterator[EchoOverHttp]:
    server = EchoOverHttp(free_port())
    yield server
    server.stop()


async def execute(client: Any, tool: str, **args: Any) -> Any:
    return await client.call_tool_mcp(
        "execute_tool", {"agent_id": "dev", "server": "remote", "tool": tool, "args": args}
    )


async def until_available(client: Any, timeout: float = 30) -> Any:
    """The first successful echo call; every refusal before it must say the server is unavailable."""
    deadline = time.monotonic() + timeout
    refusals: list[int] = []
    while time.monotonic() < deadline:
        try:
            result = await execute(client, "echo", text="back")
        except MCPError as error:
            refusals.append(error.code)
            await asyncio.sleep(0.2)
            continue
        assert set(refusals) <= {-32001}, refusals
        return result
    raise AssertionError(f"server never became available; refusals: {refusals}")


async def test_all_configured_headers_are_sent(
    gateway_files: GatewayFiles, echo_http: EchoOverHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TOKEN", "s3cret")
    monkeypatch.delenv("TEST_TENANT", raising=False)
    await asyncio.to_thread(echo_http.start)
    gateway_files.write_servers(
        {
            "remote": {
                "description": "echo over HTTP",
                "url": echo_http.url,
                "headers": {"Authorization": "Bearer ${TEST_TOKEN}", "X-Tenant": "${TEST_TENANT:-blue}"},
            }
        }
    )
    gateway_files.write_rules(RULES)
    async with memory_gateway(gateway_files) as gateway, gateway.client() as client:
        result = await execute(client, "request_headers")
        headers = result.structured_content
        assert headers["authorization"] == "Bearer s3cret"
        assert headers["x-tenant"] == "blue"
        listed = await gateway_call(client, "list_servers", agent_id="dev", include_metadata=True)
        assert listed["servers"][0]["url"] == echo_http.url
        assert "s3cret" not in str(listed)


async def test_server_that_starts_late_is_connected_with_backoff(
    gateway_files: GatewayFiles, echo_http: EchoOverHttp
) -> None:
    gateway_files.write_servers({"remote": {"description": "late", "url": echo_http.url}})
    gateway_files.write_rules(RULES)
    async with memory_gateway(gateway_files) as gateway, gateway.client() as client:
        down = await gateway_call(client, "list_servers", agent_id="dev", include_metadata=True)
        assert down["servers"][0]["health"] in ("down", "connecting")
        with pytest.raises(MCPError) as unavailable:
            await execute(client, "echo", text="early")
        assert unavailable.value.code == -32001 and unavailable.value.data["server"] == "remote"
        await asyncio.to_thread(echo_http.start)
        result = await until_available(client)
        assert result.content[0].text == "back"


async def test_server_outage_and_recovery(gateway_files: GatewayFiles, echo_http: EchoOverHttp) -> None:
    await asyncio.to_thread(echo_http.start)
    gateway_files.write_servers({"remote": {"description": "flaky", "url": echo_http.url}})
    gateway_files.write_rules(RULES)
    async with memory_gateway(gateway_files) as gateway, gateway.client() as client:
        assert (await execute(client, "echo", text="hi")).content[0].text == "hi"
        await asyncio.to_thread(echo_http.stop)
        deadline = time.monotonic() + 15
        outage: MCPError | None = None
        while outage is None and time.monotonic() < deadline:  # the next call or ping notices
            try:
                await execute(client, "echo", text="during")
            except MCPError as error:
                outage = error
            await asyncio.sleep(0.2)
        assert outage is not None and outage.code == -32001
        assert outage.data["server"] == "remote"
        await asyncio.to_thread(echo_http.start)
        result = await until_available(client)
        assert result.content[0].text == "back"
