"""Streamable HTTP downstream servers: headers, start-up order, and outages.

The downstream server is a real process (it is started, stopped and restarted); the gateway runs
in process, reached in memory.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import aiohttp.abc
import httpx
import httpx2
import pytest
from mcp import MCPError

from agent_mcp_gateway.downstream.http import HttpCalls, KeepAlive, LastGoodResolver

from conftest import PY, SERVERS, GatewayFiles, MemoryGateway, free_port, gateway_call, memory_gateway

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


class Proxy:
    """A TCP proxy before the echo server that counts the connections it carries. With
    `one_request_per_connection`, each connection carries one request: the next request on a
    kept-alive connection finds it closed, unanswered, as when the server's idle timeout fires
    just as the gateway reuses the connection."""

    def __init__(self, upstream_port: int, one_request_per_connection: bool = False) -> None:
        self.upstream_port = upstream_port
        self.one_request = one_request_per_connection
        self.cut = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def to_server() -> None:
            requests = 0
            while data := await reader.read(65536):
                if data.startswith((b"POST ", b"GET ", b"DELETE ")):
                    requests += 1
                    if requests > 1 and self.one_request:
                        self.cut += 1
                        writer.transport.abort()  # closed before reading or answering it
                        return
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for closing in (writer, up_writer):
            closing.transport.abort()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@asynccontextmanager
async def through_proxy(
    files: GatewayFiles, echo_http: EchoOverHttp, proxy: Proxy
) -> AsyncIterator[tuple[MemoryGateway, Any]]:
    """A gateway whose `remote` server is the echo server behind `proxy`, up and answering."""
    echo_http.start()
    port = await proxy.start()
    files.write_servers({"remote": {"url": f"http://127.0.0.1:{port}/mcp"}})
    files.write_rules(RULES)
    try:
        async with memory_gateway(files) as gateway, gateway.client() as client:
            await until_available(client)
            yield gateway, client
    finally:
        proxy.close()


async def echo_calls(client: Any, count: int) -> None:
    for number in range(count):
        result = await execute(client, "echo", text=f"call {number}")
        assert not result.is_error and result.content[0].text == f"call {number}"


async def test_a_kept_alive_connection_closed_under_a_request_costs_no_call(
    gateway_files: GatewayFiles, echo_http: EchoOverHttp
) -> None:
    """One failed POST used to end the whole downstream session (and every call in flight)."""
    proxy = Proxy(echo_http.port, one_request_per_connection=True)
    async with through_proxy(gateway_files, echo_http, proxy) as (gateway, client):
        remote = gateway.gateway.pool.get("remote")
        assert remote is not None
        connected_at = remote.connected_at
        await echo_calls(client, 10)
        assert remote.connected_at == connected_at and remote.state == "up"  # no reconnect
        assert proxy.cut >= 10  # the reused connections really were closed under requests


async def test_calls_reuse_their_connection(gateway_files: GatewayFiles, echo_http: EchoOverHttp) -> None:
    """Each call used to open a TCP connection of its own (on both sides)."""
    proxy = Proxy(echo_http.port)
    async with through_proxy(gateway_files, echo_http, proxy) as (_, client):
        before = proxy.connections
        await echo_calls(client, 30)
        assert proxy.connections - before <= 1, (before, proxy.connections)


async def test_a_call_in_flight_when_the_connection_is_replaced_fails_at_once(
    gateway_files: GatewayFiles, echo_http: EchoOverHttp
) -> None:
    """A server that stops answering is reconnected once its ping times out; a call still waiting
    on the old connection used to wait out its whole timeout for an answer that could not come."""
    await asyncio.to_thread(echo_http.start)
    assert echo_http.process is not None
    stalls = {"description": "stalls", "url": echo_http.url, "timeout_ms": 30000}
    gateway_files.write_servers({"remote": stalls})
    gateway_files.write_rules(RULES)
    async with memory_gateway(gateway_files, GATEWAY_PING_TIMEOUT="1") as gateway, gateway.client() as client:
        remote = gateway.gateway.pool.get("remote")
        assert remote is not None and (await execute(client, "echo", text="hi")).content[0].text == "hi"
        connected_at = remote.connected_at
        echo_http.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(MCPError) as lost:
                await execute(client, "echo", text="stalled")
            waited = time.monotonic() - started
        finally:
            echo_http.process.send_signal(signal.SIGCONT)
        assert lost.value.code == -32001 and lost.value.data["server"] == "remote", lost.value
        assert waited < 15, waited  # ping interval 1 s + ping timeout 1 s + closing the session
        result = await until_available(client)
        assert result.content[0].text == "back" and remote.connected_at != connected_at


class Outage(aiohttp.abc.AbstractResolver):
    """A name server that has stopped answering: lookups fail, or hang."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        if self.hang:
            await asyncio.sleep(3600)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("hang", [False, True], ids=["failing", "hanging"])
async def test_a_name_server_outage_falls_back_to_the_last_answer(hang: bool) -> None:
    system = aiohttp.ThreadedResolver()
    resolver = LastGoodResolver(system)
    answer = await resolver.resolve("localhost", 8000)
    assert answer and all(entry["hostname"] == "localhost" for entry in answer)
    resolver._system = Outage(hang)
    started = time.monotonic()
    assert await resolver.resolve("localhost", 8000) == answer
    assert time.monotonic() - started < 5  # a hanging lookup is given up after RESOLVE_SECONDS
    # A name with no answer yet has nothing to fall back on: the lookup's own outcome stands.
    with pytest.raises(TimeoutError if hang else socket.gaierror):
        async with asyncio.timeout(0.5):
            await resolver.resolve("never-looked-up.invalid", 8000)


class NoMessages:
    """A call that expects nothing from the server while it runs."""

    wants_progress = False

    async def progress(self, params: dict[str, Any]) -> None:
        raise AssertionError(params)

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        raise AssertionError(method)

    async def answer(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        raise AssertionError(method)


async def test_a_call_still_looking_up_its_host_when_the_connection_closes_fails_cleanly() -> None:
    """aiohttp cancels such a request when its session closes; let through, that cancellation
    ended the calling client's whole MCP session (its next request got 404), not just the call."""
    resolver = LastGoodResolver(Outage(hang=True))
    keep_alive = KeepAlive(httpx2.AsyncHTTPTransport())
    calls = HttpCalls("http://downstream.invalid:9000/mcp", {}, keep_alive, 1 << 20, resolver)
    call = asyncio.create_task(calls.request("tools/call", {"name": "echo"}, NoMessages()))
    await asyncio.sleep(0.2)
    await calls.aclose()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(call, 5)
    assert not call.cancelled()
