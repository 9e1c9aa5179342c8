"""Start the gateway on the configured transport: stdio for local clients, HTTP via Granian."""

from __future__ import annotations

import importlib.util
import logging

import anyio
from fastmcp import FastMCP

from agent_mcp_gateway.compat import run_stdio
from agent_mcp_gateway.gateway import Gateway
from agent_mcp_gateway.observe import tracing
from agent_mcp_gateway.observe.logs import setup_logging
from agent_mcp_gateway.run.startup import load_config
from agent_mcp_gateway.run.stdio_drain import StdioDrain
from agent_mcp_gateway.run.stdio_pipes import loop_stdio
from agent_mcp_gateway.server.build import build_server
from agent_mcp_gateway.settings import Settings

log = logging.getLogger("agent_mcp_gateway")


def run(settings: Settings) -> int:
    """Serve until the client goes (stdio) or SIGTERM (HTTP); a bad configuration exits 2."""
    setup_logging(settings.log_level, settings.log_format)
    if settings.transport == "http":
        from agent_mcp_gateway.run.granian import run_http

        return run_http(settings)
    tracing.setup(settings)
    drain = StdioDrain(settings.shutdown_grace)
    server = build_server(Gateway(load_config(settings), settings), on_signal=drain.stop)
    # uvloop, as Granian picks for HTTP, when installed: less CPU per call than asyncio's loop.
    options = {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}
    with drain:
        anyio.run(_serve_stdio, server, backend_options=options)
    return 0


async def _serve_stdio(server: FastMCP) -> None:
    async with loop_stdio() as (stdin, stdout):
        await run_stdio(server, stdin, stdout)
