"""The HTTP downstream's pieces without a server: KeepAlive gives a connection back when an
answer is closed early, the resolver falls back to the last answer during a name server outage,
a call still looking up its host fails cleanly when the connection closes, and a redirect is
never followed (two aiohttp servers on loopback stand for the downstream and another origin)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.abc
import aiohttp.web
import anyio
import httpx2
import pytest
import yarl
from mcp import MCPError

from agent_mcp_gateway.downstream import http as downstream_http
from agent_mcp_gateway.downstream.http import HttpCalls, KeepAlive, LastGoodResolver, session_transport

from conftest import free_port


class _Body(httpx2.AsyncByteStream):
    """A response body that records how much of it was read and whether it was closed."""

    def __init__(self, parts: list[bytes], endless: bool = False) -> None:
        self.parts, self.endless = parts, endless
        self.read: list[bytes] = []
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.read.append(part)
            yield part
        while self.endless:
            await anyio.sleep(0.01)
            self.read.append(b"x")
            yield b"x"

    async def aclose(self) -> None:
        self.closed = True


class _Server(httpx2.AsyncBaseTransport):
    def __init__(self, body: _Body) -> None:
        self.body = body

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=self.body)


async def _read_first_part_and_close(body: _Body) -> None:
    async with (
        httpx2.AsyncClient(transport=KeepAlive(_Server(body))) as client,
        client.stream("POST", "http://downstream/mcp") as response,
    ):
        async for _ in response.aiter_raw():
            break  # the SDK stops at the JSON-RPC response, before the stream's end


async def test_the_rest_of_an_answer_is_read_before_it_is_closed() -> None:
    body = _Body([b"event: message\ndata: {}\n\n", b"", b"tail"])
    await _read_first_part_and_close(body)
    assert body.read == body.parts
    assert body.closed


async def test_a_stream_that_does_not_end_is_closed_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downstream_http, "DRAIN_SECONDS", 0.1)
    body = _Body([b"data: {}\n\n"], endless=True)
    with anyio.fail_after(60):  # 0.1 s when idle; the bound only decides when a failure shows
        await _read_first_part_and_close(body)
    assert body.closed
    assert len(body.read) < 50


async def test_a_large_tail_is_not_read_past_the_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downstream_http, "DRAIN_BYTES", 10)
    body = _Body([b"data: {}\n\n", b"a" * 8, b"b" * 8, b"c" * 8, b"d" * 8])
    await _read_first_part_and_close(body)
    assert body.closed
    assert body.read == body.parts[:3]


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
    waited = time.monotonic() - started
    # A hanging lookup is given up after RESOLVE_SECONDS (2 s), not after its own 3600 s; the
    # bound leaves room for a loaded machine.
    assert waited < 30, waited
    # A name with no answer yet has nothing to fall back on: the lookup's own outcome stands.
    with pytest.raises(TimeoutError if hang else socket.gaierror):
        async with asyncio.timeout(0.5):
            await resolver.resolve("never-looked-up.invalid", 8000)


class Named(aiohttp.abc.AbstractResolver):
    """A name server that knows one name, which the system's does not: 127.0.0.1."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        assert host == "downstream.test", host
        entry: aiohttp.abc.ResolveResult = {
            "hostname": host,
            "host": "127.0.0.1",
            "port": port,
            "family": socket.AF_INET,
            "proto": 0,
            "flags": 0,
        }
        return [entry]

    async def close(self) -> None:
        pass


async def test_a_session_started_during_an_outage_connects_with_the_last_answer() -> None:
    """The SDK session's own connections look names up through the pool's resolver: a session
    opened while the name server is silent reaches a server another session looked up."""

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"host": request.headers["Host"]})

    runner, port = await _serve_post(answer)
    try:
        resolver = LastGoodResolver(Named())
        await resolver.remember(yarl.URL(f"http://downstream.test:{port}/mcp"))
        resolver._system = Outage(hang=True)
        async with httpx2.AsyncClient(transport=session_transport(resolver), timeout=60) as client:
            response = await client.post(f"http://downstream.test:{port}/mcp", json={})
        assert response.json() == {"host": f"downstream.test:{port}"}
    finally:
        await runner.cleanup()


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
        await asyncio.wait_for(call, 30)
    assert not call.cancelled()


async def _serve_post(handler: Any) -> tuple[aiohttp.web.AppRunner, int]:
    """An aiohttp server on a loopback port answering POST /mcp with `handler`."""
    app = aiohttp.web.Application()
    app.router.add_post("/mcp", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_a_redirect_is_not_followed_and_no_header_reaches_another_origin() -> None:
    """A downstream answering 307 to another origin: the call fails with the downstream's error
    and the other origin never hears from the gateway, so the server's configured headers
    (an API key) stay with the server they were configured for."""
    heard: list[dict[str, str]] = []

    async def elsewhere(request: aiohttp.web.Request) -> aiohttp.web.Response:
        heard.append(dict(request.headers))
        return aiohttp.web.json_response({"jsonrpc": "2.0", "id": "x", "result": {}})

    other_runner, other_port = await _serve_post(elsewhere)

    async def redirect(request: aiohttp.web.Request) -> aiohttp.web.Response:
        raise aiohttp.web.HTTPTemporaryRedirect(f"http://127.0.0.1:{other_port}/mcp")

    runner, port = await _serve_post(redirect)

    calls = HttpCalls(
        f"http://localhost:{port}/mcp",
        {"X-Api-Key": "downstream-only-key"},
        KeepAlive(httpx2.AsyncHTTPTransport()),
        1 << 20,
        LastGoodResolver(),
    )
    try:
        with pytest.raises(MCPError, match=r"307 .*does not follow"):
            await calls.request("tools/call", {"name": "echo"}, NoMessages())
        assert heard == []
    finally:
        await calls.aclose()
        await runner.cleanup()
        await other_runner.cleanup()
