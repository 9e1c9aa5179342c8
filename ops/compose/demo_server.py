"""A small MCP server over Streamable HTTP, the demo downstream of compose.yaml.

Runs with the Python of the gateway image (fastmcp is already installed there):
    python3 demo_server.py            # serves http://0.0.0.0:9000/mcp, health at /health
Environment: DEMO_HOST (default 0.0.0.0), DEMO_PORT (default 9000).
"""

from __future__ import annotations

import asyncio
import os

import mcp_types
from fastmcp import Context, FastMCP
from starlette.requests import Request
from starlette.responses import JSONResponse

mcp = FastMCP("demo", instructions="Demo downstream server for agent-mcp-gateway.")


@mcp.tool
def echo(message: str) -> str:
    """Return the message unchanged."""
    return message


@mcp.tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@mcp.tool
async def sleep(ms: int = 100) -> str:
    """Wait `ms` milliseconds (at most 10 s), then answer: for latency and timeout demos."""
    await asyncio.sleep(min(max(ms, 0), 10_000) / 1000)
    return f"slept {ms} ms"


@mcp.tool
def delete_everything(confirm: bool = False) -> str:
    """A dangerous-looking tool for policy demos: the compose rules deny it. It does nothing."""
    return "nothing was deleted"


@mcp.tool
async def register_tool(name: str, ctx: Context) -> str:
    """Add a tool called `name` (it returns its own name) and announce the new tool list: for
    list-change demos. The announcement goes out with this call (the one way out on a
    2026-07-28 connection), so only the gateway replica that made the call hears it directly."""

    def named() -> str:
        return name

    try:  # registering a name again replaces the tool
        mcp.local_provider.remove_tool(name)
    except KeyError:
        pass
    mcp.tool(named, name=name, description=f"Registered at run time as {name!r}; returns its name.")
    await ctx.send_notification(mcp_types.ToolListChangedNotification())
    return f"registered {name}"


@mcp.tool
async def ask(question: str, ctx: Context) -> str:
    """Ask the caller `question` mid-call (elicitation) and answer with what they said: for
    demos of questions across protocol eras and replicas. fastmcp 4.1.2 asks only on the
    handshake era, so a gateway reaches it for this with `"protocol": "2025-11-25"`."""
    answer = await ctx.elicit(question, response_type=str)
    return f"you said {answer.data}" if answer.action == "accept" else f"no answer ({answer.action})"


@mcp.custom_route("/health", methods=["GET"])
async def health(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "service": "demo-server"})


if __name__ == "__main__":
    mcp.run(
        transport="http",
        host=os.environ.get("DEMO_HOST", "0.0.0.0"),  # noqa: S104 (a container on its compose network)
        port=int(os.environ.get("DEMO_PORT", "9000")),
        path="/mcp",
        show_banner=False,
        # Longer than the gateways' ping interval (10 s), so their idle connections stay open
        # between pings instead of being closed after uvicorn's default 5 s and reopened, with
        # a new name lookup each time.
        uvicorn_config={"timeout_keep_alive": 75},
    )
