"""The MCP server: the gateway tools on a FastMCP instance whose lifespan runs the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
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


def build_server(gateway: Gateway, exit_on_signal: bool = False) -> FastMCP:
    """The gateway's MCP server. `exit_on_signal` is for stdio, where nothing else handles
    SIGTERM/SIGINT (under Granian, Granian does)."""

    @asynccontextmanager
    async def lifespan(_: FastMCP) -> AsyncIterator[dict[str, object]]:
        stop = asyncio.Event()
        await gateway.start()
        install_sighup(gateway)
        if exit_on_signal:
            install_exit_signals(gateway)
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


def install_exit_signals(gateway: Gateway) -> None:
    """On SIGTERM or SIGINT: close every downstream server, flush the audit log, exit 0.

    The process exits directly rather than unwinding, because the SDK's stdio server reads stdin
    in a worker thread that cannot be cancelled: an orderly unwind would wait for EOF forever.
    """
    loop = asyncio.get_running_loop()

    async def shut_down() -> None:
        try:
            await asyncio.wait_for(gateway.close(), timeout=10)
        finally:
            os._exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: loop.create_task(shut_down()))
