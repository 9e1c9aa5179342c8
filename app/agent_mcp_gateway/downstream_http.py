"""The Streamable HTTP connection to a downstream server, with the server's result size limit.

fastmcp's `StreamableHttpTransport` leaves the SDK's limit of 1 MiB per server-sent event in
place, so any result over 1 MiB from an HTTP server failed. This transport sets that limit to
the server's `max_result_bytes` instead, and keeps its connections alive between calls (see
`KeepAlive`, which also passes the call's trace context on in a `traceparent` header); the rest
is the SDK's own client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Unpack

import anyio
import httpx2
from fastmcp.client.transports import ClientTransport
from fastmcp.client.transports.base import SessionKwargs, TransportOptions
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from . import tracing
from .config import ServerConfig

# The SDK's defaults: a response stream may stay open for a long-running call.
TIMEOUT = httpx2.Timeout(30.0, read=300.0)
# How much of an answer's unread tail is read to keep its connection: the end of the stream
# normally follows the JSON-RPC response at once, so these bounds only cap a server that
# keeps streaming; past them the connection is closed as before.
DRAIN_SECONDS = 0.5
DRAIN_BYTES = 64 * 1024


class KeepAlive(httpx2.AsyncBaseTransport):
    """Reuse the downstream connection from call to call.

    Workaround for an SDK cost: its Streamable HTTP client closes an SSE answer as soon as the
    JSON-RPC response is in, before the stream's final chunk is read, so httpcore drops the
    connection and every call opened a new TCP connection (on both sides). Reading that tail
    on close lets the connection go back to the pool.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        # The SDK sends each request in the context of the call it belongs to, so the current
        # span here is that call's (nothing is added when tracing is off).
        tracing.inject(request.headers)
        try:
            response = await self.inner.handle_async_request(request)
        except (httpx2.ReadError, httpx2.WriteError, httpx2.RemoteProtocolError) as exc:
            if not _closed_before_answering(exc):
                raise
            # The server closed a kept-alive connection as this request went out on it (its idle
            # timeout met ours): it read nothing and answered nothing, so the request goes once
            # more, on a new connection. Without this the SDK ends the whole downstream session
            # on one failed POST, failing every call in flight (measured: 1 in 150-250 calls
            # against a server with a 0.2 s keep-alive; tests/test_downstream_keepalive.py).
            response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _DrainOnClose(response.stream)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _DrainOnClose(httpx2.AsyncByteStream):
    """A response body that, closed early, first reads its (bounded) rest."""

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._parts = aiter(inner)
        self._inner = inner
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._parts:
            yield part
        self._done = True

    async def aclose(self) -> None:
        try:
            if not self._done:
                read = 0
                with anyio.move_on_after(DRAIN_SECONDS):
                    async for part in self._parts:
                        read += len(part)
                        if read > DRAIN_BYTES:
                            break
        except Exception:  # noqa: S110 (a tail that fails to read only costs the connection)
            pass
        finally:
            await self._inner.aclose()


class HttpServerTransport(ClientTransport):
    def __init__(self, config: ServerConfig) -> None:
        assert config.url is not None
        self.url, self.headers, self.limit = config.url, dict(config.headers), config.max_result_bytes

    @asynccontextmanager
    async def connect_session(
        self,
        *,
        transport_options: TransportOptions | None = None,
        **session_kwargs: Unpack[SessionKwargs],
    ) -> AsyncIterator[ClientSession]:
        options = transport_options or TransportOptions()
        async with (
            httpx2.AsyncClient(
                headers=self.headers, timeout=TIMEOUT, transport=KeepAlive(httpx2.AsyncHTTPTransport())
            ) as http_client,
            streamable_http_client(self.url, http_client=http_client, max_sse_event_size=self.limit) as (
                read_stream,
                write_stream,
            ),
            options.session_class(read_stream, write_stream, **session_kwargs) as session,
        ):
            yield session


def _closed_before_answering(exc: httpx2.TransportError) -> bool:
    """A connection reset or closed before any of the answer arrived (the error is raised before
    there is a response); a protocol error about a malformed answer is not that."""
    if isinstance(exc, httpx2.RemoteProtocolError):
        return "without sending" in str(exc) or "Server disconnected" in str(exc)
    return True


def over_limit(exc: MCPError) -> bool:
    """Whether the SDK gave up on a response for being over the event size limit; it says so
    only in words (the exception it caught is turned into this message)."""
    return exc.message.startswith("SSE stream failed:") and "exceeded" in exc.message
