"""KeepAlive: an HTTP downstream's answer closed early still gives its connection back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx2
import pytest

from agent_mcp_gateway.downstream import http as downstream_http
from agent_mcp_gateway.downstream.http import KeepAlive


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
    with anyio.fail_after(5):
        await _read_first_part_and_close(body)
    assert body.closed
    assert len(body.read) < 50


async def test_a_large_tail_is_not_read_past_the_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downstream_http, "DRAIN_BYTES", 10)
    body = _Body([b"data: {}\n\n", b"a" * 8, b"b" * 8, b"c" * 8, b"d" * 8])
    await _read_first_part_and_close(body)
    assert body.closed
    assert body.read == body.parts[:3]
