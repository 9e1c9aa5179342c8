"""Streamable HTTP downstream servers: headers, start-up order, and outages."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import PY, SERVERS, GatewayFiles, free_port, gateway_call, stdio_gateway
from mcp import MCPError

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
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await execute(client, "echo", text="back")
        except MCPError as error:
            assert error.code == -32001, error
            assert time.monotonic() < deadline, "server never became available"
            await asyncio.sleep(0.2)


async def test_all_configured_headers_are_sent(gateway_files: GatewayFiles, echo_http: EchoOverHttp) -> None:
    echo_http.start()
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
    async with stdio_gateway(gateway_files, TEST_TOKEN="s3cret") as client:
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
    async with stdio_gateway(gateway_files) as client:
        down = await gateway_call(client, "list_servers", agent_id="dev", include_metadata=True)
        assert down["servers"][0]["health"] in ("down", "connecting")
        with pytest.raises(MCPError) as unavailable:
            await execute(client, "echo", text="early")
        assert unavailable.value.code == -32001 and unavailable.value.data["server"] == "remote"
        echo_http.start()
        result = await until_available(client)
        assert "back" in result.content[0].text


async def test_server_outage_and_recovery(gateway_files: GatewayFiles, echo_http: EchoOverHttp) -> None:
    echo_http.start()
    gateway_files.write_servers({"remote": {"description": "flaky", "url": echo_http.url}})
    gateway_files.write_rules(RULES)
    async with stdio_gateway(gateway_files) as client:
        assert "hi" in (await execute(client, "echo", text="hi")).content[0].text
        echo_http.stop()
        deadline = time.monotonic() + 15
        while True:  # the next call or the next ping notices the outage
            try:
                await execute(client, "echo", text="during")
            except MCPError as error:
                assert error.code == -32001
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        echo_http.start()
        result = await until_available(client)
        assert "back" in result.content[0].text
