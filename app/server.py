"""The MCP server: the gateway tools on a FastMCP instance whose lifespan runs the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastmcp import FastMCP

from . import __version__
from .gateway import Gateway
from .middleware import GatewayMiddleware
from .reload import install_sighup, watch_config
from .tools import register_tools

INSTRUCTIONS = (
    "This gateway fronts several MCP servers. Discover before you call: list_servers, then "
    "get_server_tools(server), then execute_tool(server, tool, args). Pass your agent_id."
)


def build_server(gateway: Gateway) -> FastMCP:
    @asynccontextmanager
    async def lifespan(_: FastMCP) -> AsyncIterator[dict[str, object]]:
        stop = asyncio.Event()
        await gateway.start()
        install_sighup(gateway)
        watcher = asyncio.create_task(watch_config(gateway, stop), name="config-watcher")
        try:
            yield {}
        finally:
            stop.set()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await gateway.close()

    mcp = FastMCP(
        "agent-mcp-gateway",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        mask_error_details=True,
    )
    mcp.add_middleware(GatewayMiddleware(gateway))
    register_tools(mcp, gateway)
    return mcp
