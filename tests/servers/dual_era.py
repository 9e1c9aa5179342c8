"""Dual-era fixture: serves the handshake era and 2026-07-28, with one tool (`modern_only`)
offered only to 2026-07-28 clients, and a count of the requests it received by method
(`received`), so a test can tell how many messages each call of the gateway's costs.

Neither fastmcp 4.1.2 nor the SDK registers a tool per era, so a server middleware of the
SDK's own server (`MCPServer`) hides it from handshake-era listings and refuses its calls
there: the closest real thing, and what a server with an era-specific feature would do.
`era` tells which era a call came in.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import mcp_types
from mcp import MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from _common import run

MODERN_ONLY = "modern_only"
RECEIVED: Counter[str] = Counter()


async def per_era_tools(ctx: Any, call_next: Any) -> Any:
    """`modern_only` exists for 2026-07-28 connections only; every request is counted."""
    RECEIVED[ctx.method] += 1
    handshake = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
    if handshake and ctx.method == "tools/call" and (ctx.params or {}).get("name") == MODERN_ONLY:
        raise MCPError(code=mcp_types.INVALID_PARAMS, message=f"Unknown tool: {MODERN_ONLY}")
    result = await call_next(ctx)
    if handshake and ctx.method == "tools/list" and isinstance(result, dict):
        result = {**result, "tools": [t for t in result.get("tools", []) if t.get("name") != MODERN_ONLY]}
    return result


mcp: MCPServer[Any] = MCPServer("dual_era", middleware=[per_era_tools])


@mcp.tool(structured_output=False)
def era(ctx: Context) -> str:
    """The protocol version the call came in."""
    return ctx.request_context.protocol_version


@mcp.tool(name=MODERN_ONLY, structured_output=False)
def modern_only() -> str:
    """Offered on 2026-07-28 only."""
    return "only on 2026-07-28"


@mcp.tool(structured_output=False)
def received() -> str:
    """The requests this server received so far, by method (JSON), this one included."""
    return json.dumps(RECEIVED)


if __name__ == "__main__":
    run(mcp)
