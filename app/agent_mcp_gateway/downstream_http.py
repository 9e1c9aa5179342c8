"""The Streamable HTTP connection to a downstream server, with the server's result size limit.

fastmcp's `StreamableHttpTransport` leaves the SDK's limit of 1 MiB per server-sent event in
place, so any result over 1 MiB from an HTTP server failed. This transport sets that limit to
the server's `max_result_bytes` instead; the rest is the SDK's own client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Unpack

import httpx2
from fastmcp.client.transports import ClientTransport
from fastmcp.client.transports.base import SessionKwargs, TransportOptions
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from .config import ServerConfig

# The SDK's defaults: a response stream may stay open for a long-running call.
TIMEOUT = httpx2.Timeout(30.0, read=300.0)


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
            httpx2.AsyncClient(headers=self.headers, timeout=TIMEOUT) as http_client,
            streamable_http_client(self.url, http_client=http_client, max_sse_event_size=self.limit) as (
                read_stream,
                write_stream,
            ),
            options.session_class(read_stream, write_stream, **session_kwargs) as session,
        ):
            yield session


def over_limit(exc: MCPError) -> bool:
    """Whether the SDK gave up on a response for being over the event size limit; it says so
    only in words (the exception it caught is turned into this message)."""
    return exc.message.startswith("SSE stream failed:") and "exceeded" in exc.message
